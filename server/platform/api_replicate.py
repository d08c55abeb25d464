"""Replicate's HTTP API for platform models (filled in below)."""
from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
