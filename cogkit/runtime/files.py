"""File inputs (http(s) URLs and data URIs, fetched to local paths) and file
outputs (inlined as data URIs, or uploaded to an upload URL)."""
from __future__ import annotations

import base64
import mimetypes
import os
import tempfile
import urllib.parse
from typing import Any

import httpx

from cogkit.runtime.messages import PATH_KEY


class FileInputError(Exception):
    """A file input could not be fetched; the message names the field."""


def _name_from_url(url: str, content_type: str | None) -> str:
    name = os.path.basename(urllib.parse.urlparse(url).path) or "input"
    if "." not in name and content_type:
        name += mimetypes.guess_extension(content_type.split(";")[0].strip()) or ""
    return name


def decode_data_uri(uri: str) -> tuple[bytes, str]:
    """(bytes, media type) of a data: URI."""
    header, sep, payload = uri.partition(",")
    if not sep or not header.startswith("data:"):
        raise ValueError("malformed data URI: expected data:[<type>][;base64],<data>")
    media = header[5:]
    is_b64 = media.endswith(";base64")
    media_type = (media[: -len(";base64")] if is_b64 else media).split(";")[0] or "text/plain"
    data = base64.b64decode(payload) if is_b64 else urllib.parse.unquote_to_bytes(payload)
    return data, media_type


async def fetch_input(client: httpx.AsyncClient, field: str, value: str, directory: str) -> str:
    try:
        if value.startswith("data:"):
            data, media_type = decode_data_uri(value)
            name = "input" + (mimetypes.guess_extension(media_type) or "")
        else:
            response = await client.get(value, follow_redirects=True)
            response.raise_for_status()
            data, name = response.content, _name_from_url(value, response.headers.get("content-type"))
    except (ValueError, httpx.HTTPError) as e:
        raise FileInputError(f"input {field}: could not fetch {value[:80]!r}: {e}") from e
    path = os.path.join(tempfile.mkdtemp(dir=directory), name)
    with open(path, "wb") as f:
        f.write(data)
    return path


async def fetch_inputs(client: httpx.AsyncClient, inputs: dict[str, Any], fields: dict[str, str],
                       directory: str) -> dict[str, Any]:
    """Replace each file field's URL(s) with a path marker for the worker."""
    out = dict(inputs)
    for field, kind in fields.items():
        value = out.get(field)
        if value is None:
            continue
        if kind == "uri-list":
            out[field] = [{PATH_KEY: await fetch_input(client, field, v, directory)} for v in value]
        else:
            out[field] = {PATH_KEY: await fetch_input(client, field, value, directory)}
    return out


def to_data_uri(path: str) -> str:
    media_type = mimetypes.guess_type(path)[0] or "application/octet-stream"
    with open(path, "rb") as f:
        return f"data:{media_type};base64,{base64.b64encode(f.read()).decode()}"


async def upload(client: httpx.AsyncClient, path: str, upload_url: str) -> str:
    """PUT the file under upload_url; the URL it can be read from comes back."""
    url = upload_url.rstrip("/") + "/" + urllib.parse.quote(os.path.basename(path))
    media_type = mimetypes.guess_type(path)[0] or "application/octet-stream"
    with open(path, "rb") as f:
        response = await client.put(url, content=f.read(), headers={"Content-Type": media_type})
    response.raise_for_status()
    # An upload server may say where the file ended up; otherwise it is where we put it.
    return response.headers.get("location") or url


async def encode_files(client: httpx.AsyncClient, value: Any, upload_url: str | None) -> Any:
    """Replace path markers in a worker output by data URIs or uploaded URLs."""
    if isinstance(value, dict) and PATH_KEY in value and len(value) == 1:
        path = value[PATH_KEY]
        return await upload(client, path, upload_url) if upload_url else to_data_uri(path)
    if isinstance(value, list):
        return [await encode_files(client, v, upload_url) for v in value]
    if isinstance(value, dict):
        return {k: await encode_files(client, v, upload_url) for k, v in value.items()}
    return value
