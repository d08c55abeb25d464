"""The commands a suite script can use: testscript's built-ins (exec, stdout,
exists, cp, env, ...) and the harness's (cog, curl, wait-for, webhook and
upload receivers, registry and docker helpers), each as harness.go defines it."""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.cog_suite.receivers import UploadReceiver, WebhookReceiver
from tests.cog_suite.script import (
    REGISTRY,
    REGISTRY_HOST,
    Result,
    Script,
    ScriptSkipped,
    ScriptStopped,
)
from tests.cog_suite.txtar import Line, go_regexp

Handler = Callable[[Script, Line, list[str]], None]
COGKIT = [sys.executable, "-m", "cogkit.cli"]
RUNS_A_PROJECT = ("predict", "run", "train")


# --- cog --------------------------------------------------------------------------------

def _positional_image(args: list[str], image: str) -> bool:
    return len(args) > 1 and not args[1].startswith("-") and (args[1] == image or "/" in args[1] or ":" in args[1])


def _project_fingerprint(script: Script) -> str:
    """What a build of $TEST_IMAGE depends on here: every file of the work tree (outside .tmp),
    the directory it runs from and the environment."""
    digest = hashlib.sha256(f"{script.here}\0{sorted(script.env.items())}".encode())
    for path in sorted(script.work.rglob("*")):
        rel = path.relative_to(script.work)
        if rel.parts[0] == ".tmp" or not path.is_file():
            continue
        digest.update(f"\0{rel}\0{path.stat().st_mode}\0".encode() + path.read_bytes())
    return digest.hexdigest()


def _build_quietly(script: Script, line: Line) -> None:
    """Image mode: `cog predict` without an image builds one first, as Cog's does. When nothing
    the build reads has changed since this script's last such build, that build would be a full
    layer-cache hit giving the same image, so it is not repeated (it costs seconds per line)."""
    image = script.env["TEST_IMAGE"]
    fingerprint = _project_fingerprint(script)
    if script.built == fingerprint:
        return
    proc = subprocess.run(check=False, args=[*COGKIT, "build", "-t", image], cwd=script.here, env=script.env, capture_output=True,
                          timeout=900)
    if proc.returncode != 0:
        script.last = Result(proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace"))
        if not line.negate:
            script.fail(line, f"building {image} failed:\n{script.last.stderr[-3000:]}")
        raise _BuildFailedAsExpected(script.last)
    script.built = fingerprint


class _BuildFailedAsExpected(Exception):
    """The build before a `! cog ...` line failed; what it said is in args[0] (a Result)."""


def cog_argv(script: Script, line: Line, args: list[str]) -> list[str]:
    """The cogkit command for a `cog ...` line in this mode (image mode builds first where Cog would).
    Raises _BuildFailedAsExpected when that build fails under `!`."""
    image = script.env["TEST_IMAGE"]
    sub = args[0] if args else ""
    if script.mode == "local":
        if sub == "build":
            args = ["build", "--check", *args[1:]]
        elif sub in RUNS_A_PROJECT and len(args) > 1 and args[1] == image:
            args = [sub, *args[2:]]
    elif sub in RUNS_A_PROJECT and not _positional_image(args, image):
        # As Cog's, from source: build, then run the image with the project mounted at /src.
        _build_quietly(script, line)
        args = [sub, image, "--mount-src", *args[1:]]
    elif sub == "exec":  # Cog's exec builds the project's environment image first
        args = ["exec", "--build", "-t", image, *args[1:]]
    return [*COGKIT, *args]


def cog(script: Script, line: Line, args: list[str]) -> None:
    args = script.expand_again(args)
    try:
        if args and args[0] == "serve":
            port = script.ports.take()
            extra = []
            if script.mode == "image":
                _build_quietly(script, line)
                extra = ["--image", script.env["TEST_IMAGE"]]
            script.start_server(line, [*COGKIT, "serve", "-p", str(port), *args[1:], *extra], port)
            return
        argv = cog_argv(script, line, args)
    except _BuildFailedAsExpected as failed:
        # As Cog's command would: what it says first (a deprecation), then the build's failure.
        build = failed.args[0]
        sub = args[0] if args else ""
        script.exec(line, [*COGKIT, sub, script.env["TEST_IMAGE"], *args[1:]], expect_failure=True,
                    what="cog command")
        script.last = Result(build.stdout + script.last.stdout, script.last.stderr + build.stderr)
        return
    if args and args[0] in ("build", "push"):
        script.built = None  # $TEST_IMAGE may now be another image than the one fingerprinted
    script.exec(line, argv, expect_failure=line.negate, what="cog command")


# --- HTTP -------------------------------------------------------------------------------

def curl(script: Script, line: Line, args: list[str]) -> None:
    """curl [-H key:value]... METHOD PATH [BODY|@file]: 10 attempts 500 ms apart until the
    status is 2xx (or, with `!`, not 2xx); the body goes to stdout (stderr with `!`)."""
    headers: dict[str, str] = {}
    while len(args) >= 2 and args[0] == "-H":
        key, sep, value = args[1].partition(":")
        if not sep:
            script.fail(line, f"curl: invalid header {args[1]!r} (expected key:value)")
        headers[key.strip()] = value.strip()
        args = args[2:]
    if len(args) < 2:
        script.fail(line, "curl: usage: curl [-H key:value]... [method] [path] [body | @file]")
    server = script.getenv("SERVER_URL")
    if not server:
        script.fail(line, "curl: SERVER_URL not set (did you call 'cog serve' first?)")
    method, path = args[0], args[1]
    body = script.expand_again(args[2:3])[0] if len(args) > 2 else ""
    if body.startswith("@"):
        body = (script.here / body[1:]).read_text()
    if body:
        headers.setdefault("Content-Type", "application/json")
    last = "no response"
    with httpx.Client(timeout=10) as client:
        for attempt in range(10):
            try:
                response = client.request(method, server + path, content=body.encode() if body else None,
                                          headers=headers)
            except httpx.HTTPError as e:
                last = f"error: {e!r}"
            else:
                ok = 200 <= response.status_code < 300
                last = f"status {response.status_code}: {response.text[:500]}"
                if ok != line.negate:
                    script.last = Result("", response.text) if line.negate else Result(response.text, "")
                    script.transcript.append(f"  [{response.status_code}] {response.text[:2000]}\n")
                    return
            if attempt < 9:
                time.sleep(0.5)
    script.fail(line, f"curl: {'expected failure but got' if line.negate else 'all 10 attempts failed with'} {last}")


def _duration(text: str) -> float | None:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    m = re.fullmatch(r"([0-9.]+)(ms|s|m|h)", text)
    return float(m.group(1)) * units[m.group(2)] if m else None


def wait_for(script: Script, line: Line, args: list[str]) -> None:
    if len(args) < 2:
        script.fail(line, "wait-for: usage: wait-for [file|http|not-empty] <arg> [timeout]")
    condition, target = args[0], args[1]
    timeout = (_duration(args[-1]) if len(args) > 2 else None) or 30.0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition == "file":
            met = (script.work / target).exists()
        elif condition == "not-empty":
            path = script.work / target
            met = path.is_file() and path.stat().st_size > 0
        elif condition == "http":
            expected = int(args[2]) if len(args) > 2 and args[2].isdigit() else 200
            try:
                met = httpx.get(target, timeout=2).status_code == expected
            except httpx.HTTPError:
                met = False
        else:
            script.fail(line, f"wait-for: unknown condition: {condition}")
        if met != line.negate:
            return
        time.sleep(0.2)
    script.fail(line, "wait-for: condition became true (expected to remain false)" if line.negate
                else f"wait-for: timeout waiting for condition: {condition} {target}")


def server_stop(script: Script, line: Line, args: list[str]) -> None:
    script.stop_server()


def webhook_server_start(script: Script, line: Line, args: list[str]) -> None:
    script.webhooks = WebhookReceiver(script.host_seen_by_model)
    script.env["WEBHOOK_URL"] = script.webhooks.url


def webhook_server_wait(script: Script, line: Line, args: list[str]) -> None:
    if script.webhooks is None:
        script.fail(line, "webhook-server-wait: no webhook server running (call webhook-server-start first)")
        return
    timeout = (_duration(args[0]) if args else None) or 120.0
    if not script.webhooks.done.wait(timeout):
        script.fail(line, f"webhook-server-wait: timed out after {timeout}s waiting for terminal webhook")
    script.last = Result(script.webhooks.summary() + "\n", "")
    script.transcript.append(f"  [webhook] {script.last.stdout}")


def upload_server_start(script: Script, line: Line, args: list[str]) -> None:
    script.uploads = UploadReceiver(script.host_seen_by_model)
    script.env["UPLOAD_SERVER_URL"] = script.uploads.url


def upload_server_count(script: Script, line: Line, args: list[str]) -> None:
    if script.uploads is None:
        script.fail(line, "upload-server-count: no upload server running (call upload-server-start first)")
        return
    got = len(script.uploads.uploads)
    if (got == int(args[0])) == line.negate:
        script.fail(line, f"upload-server-count: expected {'NOT ' if line.negate else ''}{args[0]} uploads "
                          f"but got {got}")


def registry_start(script: Script, line: Line, args: list[str]) -> None:
    try:
        httpx.get(f"http://{REGISTRY}/v2/", timeout=5)
    except httpx.HTTPError as e:
        script.fail(line, f"registry-start: the project's registry at {REGISTRY} is not reachable: {e}")
    script.env["TEST_REGISTRY"] = REGISTRY_HOST


_INDEX_TYPES = ("application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json")
_IMAGE_TYPES = ("application/vnd.oci.image.manifest.v1+json", "application/vnd.docker.distribution.manifest.v2+json")


def _go_json(value: object) -> str:
    """json.MarshalIndent's text: Go escapes <, > and & in strings."""
    text = json.dumps(value, indent=2, ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def registry_inspect(script: Script, line: Line, args: list[str]) -> None:
    """registry-inspect REF: the manifest (or index) at REF as the harness's registry client reports it
    (schema version, media type, digest, each index entry with its platform and annotations, layers,
    config digest and the image's labels), as JSON on stdout; `!` expects that to fail."""
    if not args:
        script.fail(line, "registry-inspect: usage: registry-inspect <image-ref>")
    ref = script.expand_again(args)[0]
    host, _, rest = ref.partition("/")
    repo, reference = (rest.split("@", 1) if "@" in rest else
                       (rest.rsplit(":", 1) if ":" in rest.rsplit("/", 1)[-1] else (rest, "latest")))
    base = f"http://{host}/v2/{repo}"

    def get(path: str, accept: tuple[str, ...] = ()) -> httpx.Response:
        response = httpx.get(f"{base}/{path}", headers={"Accept": ", ".join(accept)} if accept else {}, timeout=30)
        response.raise_for_status()
        return response

    def labels(manifest: dict) -> dict | None:
        config = get(f"blobs/{manifest['config']['digest']}").json()
        return (config.get("config") or {}).get("Labels")

    try:
        response = get(f"manifests/{reference}", _INDEX_TYPES + _IMAGE_TYPES)
        media_type = response.headers.get("content-type", "").split(";")[0]
        manifest = response.json()
        result = {"SchemaVersion": manifest.get("schemaVersion"), "MediaType": media_type,
                  "Digest": "sha256:" + hashlib.sha256(response.content).hexdigest(),
                  "Manifests": None, "Layers": None, "Config": "", "Labels": None}
        if media_type in _INDEX_TYPES:
            entries = manifest.get("manifests") or []
            result["Manifests"] = [{"Digest": m["digest"], "MediaType": m.get("mediaType", ""), "Size": m.get("size", 0),
                                    "OS": (m.get("platform") or {}).get("os", ""),
                                    "Architecture": (m.get("platform") or {}).get("architecture", ""),
                                    "Variant": (m.get("platform") or {}).get("variant", ""),
                                    "Annotations": m.get("annotations")} for m in entries]
            # Labels come from the linux/amd64 image (else the first entry), as the harness picks it.
            chosen = next((m for m in entries if m.get("platform") == {"os": "linux", "architecture": "amd64"}),
                          entries[0] if entries else None)
            if chosen is None:
                raise ValueError("the index lists no manifests")
            result["Labels"] = labels(get(f"manifests/{chosen['digest']}", _IMAGE_TYPES).json())
        elif media_type in _IMAGE_TYPES:
            result["Config"] = manifest["config"]["digest"]
            result["Layers"] = [layer["digest"] for layer in manifest.get("layers") or []]
            result["Labels"] = labels(manifest)
        else:
            raise ValueError(f"unsupported media type: {media_type}")
    except (httpx.HTTPError, ValueError, KeyError) as e:
        if not line.negate:
            script.fail(line, f"registry-inspect: failed to inspect {ref}: {e}")
        return
    if line.negate:
        script.fail(line, "registry-inspect: expected failure but succeeded")
    script.last = Result(_go_json(result) + "\n", "")
    script.transcript.append(f"  [registry-inspect]\n{script.last.stdout}")


def docker_run(script: Script, line: Line, args: list[str]) -> None:
    script.built = None
    args = script.expand_again(args)
    script.exec(line, ["docker", "run", "--rm", "--network", "host", *args], expect_failure=line.negate,
                what="docker-run")


def docker_push(script: Script, line: Line, args: list[str]) -> None:
    args = script.expand_again(args)
    remote = f"{script.getenv('TEST_REGISTRY')}/{args[1]}"
    script.exec(line, ["docker", "tag", args[0], remote], expect_failure=False, what="docker tag")
    script.exec(line, ["docker", "push", remote], expect_failure=line.negate, what="docker push")


def pty_run(script: Script, line: Line, args: list[str]) -> None:
    """pty-run INPUT CMD ARGS...: the command on a pseudo-terminal, INPUT typed into it."""
    import pty

    args = script.expand_again(args)
    text = b"" if args[0] == "/dev/null" else (script.here / args[0]).read_bytes()
    argv = cog_argv(script, line, args[2:]) if args[1] == "cog" else args[1:]
    pid, fd = pty.fork()
    if pid == 0:  # the child: exec at once, nothing else
        os.chdir(script.here)
        os.execvpe(argv[0], argv, script.env)
    output = bytearray()
    os.write(fd, text)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        output.extend(chunk)
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    script.last = Result(output.decode(errors="replace"), "")
    code = os.waitstatus_to_exitcode(status)
    if (code != 0) != line.negate:
        script.fail(line, f"pty-run: exit {code}; output:\n{script.last.stdout[-2000:]}")


# --- testscript built-ins --------------------------------------------------------------------

def exec_(script: Script, line: Line, args: list[str]) -> None:
    if args and args[0] == "docker":
        script.built = None  # it may remove or retag $TEST_IMAGE
    script.exec(line, args, expect_failure=line.negate, what="exec")


def _count_flag(args: list[str]) -> tuple[int | None, list[str]]:
    if args and args[0].startswith("-count="):
        return int(args[0].split("=", 1)[1]), args[1:]
    return None, args


def _match(script: Script, line: Line, text: str, args: list[str], label: str) -> None:
    count, args = _count_flag(args)
    if args and args[0] == "-q":
        args = args[1:]
    # A model run locally reaches this host as 127.0.0.1, not as the container's host.docker.internal.
    pattern = go_regexp(args[0] if script.mode == "image" else args[0].replace("host.docker.internal", "127.0.0.1"))
    found = pattern.findall(text)
    if count is not None:
        if len(found) != count:
            script.fail(line, f"{label}: found {len(found)} matches of {args[0]!r}, want {count}")
    elif bool(found) == line.negate:
        shown = text if len(text) < 3000 else text[:1500] + "\n...\n" + text[-1500:]
        script.fail(line, f"{label}: {'unexpected match' if line.negate else 'no match'} for {args[0]!r} in:\n"
                          f"{shown}")


def stdout(script: Script, line: Line, args: list[str]) -> None:
    _match(script, line, script.last.stdout, args, "stdout")


def stderr(script: Script, line: Line, args: list[str]) -> None:
    _match(script, line, script.last.stderr, args, "stderr")


def grep(script: Script, line: Line, args: list[str]) -> None:
    count, rest = _count_flag(args)
    text = (script.here / rest[-1]).read_text(errors="replace")
    _match(script, line, text, ([f"-count={count}"] if count is not None else []) + rest[:-1], "grep")


def exists(script: Script, line: Line, args: list[str]) -> None:
    flags = {a for a in args if a.startswith("-")}
    for name in (a for a in args if not a.startswith("-")):
        path = script.here / name
        ok = path.exists() and ("-exec" not in flags or os.access(path, os.X_OK))
        if ok == line.negate:
            script.fail(line, f"{name} {'exists' if line.negate else 'does not exist'}")


def cp(script: Script, line: Line, args: list[str]) -> None:
    *sources, dest = args
    for src in sources:
        data = {"stdout": script.last.stdout, "stderr": script.last.stderr}.get(src)
        target = script.here / dest
        if target.is_dir():
            target = target / Path(src).name
        if data is not None:
            target.write_text(data)
        else:
            shutil.copy(script.here / src, target)


def rm(script: Script, line: Line, args: list[str]) -> None:
    for name in args:
        path = script.here / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def mkdir(script: Script, line: Line, args: list[str]) -> None:
    for name in args:
        (script.here / name).mkdir(parents=True, exist_ok=True)


def cd(script: Script, line: Line, args: list[str]) -> None:
    target = (script.here / args[0]).resolve()
    if not target.is_dir():
        script.fail(line, f"cd: {args[0]} is not a directory")
    script.cwd = target


def env(script: Script, line: Line, args: list[str]) -> None:
    for arg in args:
        key, sep, value = arg.partition("=")
        if sep:
            script.env[key] = value
        else:
            script.last = Result(f"{key}={script.getenv(key)}\n", "")


def stdin(script: Script, line: Line, args: list[str]) -> None:
    script.stdin_file = args[0]


def skip(script: Script, line: Line, args: list[str]) -> None:
    raise ScriptSkipped(" ".join(args) or "skipped by the script")


def stop(script: Script, line: Line, args: list[str]) -> None:
    raise ScriptStopped(" ".join(args))


def cmp(script: Script, line: Line, args: list[str]) -> None:
    def read(name: str) -> str:
        return {"stdout": script.last.stdout, "stderr": script.last.stderr}.get(name) or (
            script.here / name).read_text()
    if (read(args[0]) == read(args[1])) == line.negate:
        script.fail(line, f"{args[0]} and {args[1]} {'are equal' if line.negate else 'differ'}")


BUILTINS: dict[str, Handler] = {
    "cog": cog, "curl": curl, "wait-for": wait_for, "server-stop": server_stop,
    "webhook-server-start": webhook_server_start, "webhook-server-wait": webhook_server_wait,
    "upload-server-start": upload_server_start, "upload-server-count": upload_server_count,
    "registry-start": registry_start, "registry-inspect": registry_inspect, "docker-run": docker_run, "docker-push": docker_push, "pty-run": pty_run,
    "exec": exec_, "stdout": stdout, "stderr": stderr, "grep": grep, "exists": exists, "cp": cp, "rm": rm,
    "mkdir": mkdir, "cd": cd, "env": env, "stdin": stdin, "skip": skip, "stop": stop, "cmp": cmp,
}
