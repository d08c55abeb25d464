"""A vLLM logits processor (vLLM's own plugin point, `--logits-processors cogkit_pace:PaceSteps`) that
makes a decode step take at least `pace_ms` while a request that asked for it (`vllm_xargs:
{"pace_ms": 20}`) is in the batch, and leaves the logits untouched (greedy answers are unchanged).

Why: the tests' tiny model on CPU writes a whole answer in well under a second, and on a loaded
machine vLLM's server sends it in bursts, so a test could not otherwise land a kill or a stop in the
middle of an answer for sure. Paced like a real model (tens of ms per token), an answer of a few
hundred tokens lasts seconds: the kill lands mid-answer every time. Requests without the argument
(the continuation the gateway asks of another replica, every other test) are not paced.

Loaded by vLLM's python (its virtualenv), not the project's: it imports only vLLM and torch.
"""
from __future__ import annotations

import time

import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor
from vllm.v1.sample.logits_processor.builtin import process_dict_updates


class PaceSteps(LogitsProcessor):
    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool) -> None:
        self.paced: dict[int, float] = {}        # batch index -> seconds per step it asked for

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        pace = (sampling_params.extra_args or {}).get("pace_ms")
        if pace is not None and not (isinstance(pace, (int, float)) and 0 <= pace <= 1000):
            raise ValueError(f"vllm_xargs.pace_ms: expected a number of milliseconds 0..1000, got {pace!r}")

    def is_argmax_invariant(self) -> bool:
        return False          # applied to greedy requests too (an argmax-invariant one is skipped for them)

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        def pace(params: SamplingParams, _prompt: list[int] | None, _output: list[int]) -> float | None:
            ms = (params.extra_args or {}).get("pace_ms")
            return float(ms) / 1000 if ms else None
        process_dict_updates(self.paced, batch_update, pace)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if self.paced:
            time.sleep(max(self.paced.values()))
        return logits
