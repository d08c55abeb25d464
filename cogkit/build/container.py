"""Run a model image on this machine and talk to it over Cog's HTTP API.

The container shares the host's network (the local engine has no bridge), so
its server is told to listen on 127.0.0.1 and on a port of our choosing:
the image's own command with --host/--port replaced (cogkit images), or
cogkit's runtime command when the image has none we understand.

    model = start("cog-hello-world")          # waits for /health-check READY
    model.predict({"name": "x"})["output"]    # -> "hello x"
    model.stop()
"""
from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable
from typing import Any, Self

import docker
import docker.errors
import httpx

from cogkit.build import dockerfile as df
from cogkit.build.builder import BuildError, _short_reason, connect

Listener = Callable[[str, Any], None]
READY_STATES = ("READY", "BUSY")
LOG_TAIL = 40
LABEL = "run.cogkit.container"  # marks containers started here


class ContainerError(BuildError):
    """The image could not be run, never became ready, or a prediction request failed."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_is_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def command_for(image_cmd: list[str] | None, port: int) -> list[str]:
    """The image's command with --host 127.0.0.1 --port PORT, or cogkit's runtime command."""
    cmd = list(image_cmd or [])
    if not ("--host" in cmd and "--port" in cmd and cmd.index("--host") + 1 < len(cmd)
            and cmd.index("--port") + 1 < len(cmd)):
        cmd = df.run_command(port)
    cmd[cmd.index("--host") + 1] = "127.0.0.1"
    cmd[cmd.index("--port") + 1] = str(port)
    return cmd


class RunningModel:
    """A started model container, reachable at `url` (127.0.0.1 only)."""

    def __init__(self, client: docker.APIClient, container: str, image: str, port: int):
        self.client = client
        self.container = container
        self.image = image
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.health: dict[str, Any] = {}

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"RunningModel({self.image!r}, url={self.url!r}, container={self.container[:12]!r})"

    # --- state ------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return self.client.inspect_container(self.container)["State"]

    def logs(self, tail: int = LOG_TAIL) -> str:
        try:
            return self.client.logs(self.container, tail=tail).decode(errors="replace")
        except docker.errors.APIError:
            return ""

    def _failure(self, what: str, setup_logs: str = "") -> ContainerError:
        """The error, with the tail of the setup log (from /health-check) and of the container's output."""
        parts = []
        for name, text in (("setup log", setup_logs), ("container log", self.logs())):
            lines = text.rstrip().splitlines()[-LOG_TAIL:]
            if lines:
                parts.append(f"the last lines of its {name}:\n" + "\n".join(f"  | {line}" for line in lines))
        return ContainerError(f"{what}; " + ("\n".join(parts) if parts else "it printed nothing"))

    def wait_ready(self, timeout: float = 300) -> dict[str, Any]:
        """Poll /health-check until READY; raise with the log tail on SETUP_FAILED or exit."""
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=5) as http:
            while True:
                state = self.state()
                if state["Status"] in ("exited", "dead"):
                    raise self._failure(f"the container of {self.image} exited (code {state.get('ExitCode')}) "
                                        "before it was ready")
                try:
                    self.health = http.get(self.url + "/health-check").json()
                except (httpx.TransportError, ValueError):
                    self.health = {}
                status = self.health.get("status")
                if status in READY_STATES:
                    return self.health
                if status in ("SETUP_FAILED", "DEFUNCT"):
                    error = self.health.get("error") or "no error message"
                    raise self._failure(f"{self.image}: setup failed ({error})",
                                        (self.health.get("setup") or {}).get("logs") or "")
                if time.monotonic() > deadline:
                    raise self._failure(f"{self.image} was not ready after {timeout:.0f} s "
                                        f"(last health-check status: {status or 'no answer'})")
                time.sleep(0.2)

    # --- predictions ---------------------------------------------------------------

    def predict(self, inputs: dict[str, Any], mode: str = "predict", *, timeout: float | None = 600,
                on_event: Listener | None = None) -> dict[str, Any]:
        """POST /predictions (or /trainings for mode="train"); returns the finished prediction.

        With on_event, the request asks for server-sent events and on_event gets
        each ("output", item) and ("logs", text) as the model produces them."""
        path = "/trainings" if mode == "train" else "/predictions"
        body = {"input": inputs}
        try:
            if on_event is None:
                response = httpx.post(self.url + path, json=body, timeout=timeout)
                return self._result(response, mode)
            with httpx.stream("POST", self.url + path, json=body, timeout=timeout,
                              headers={"Accept": "text/event-stream"}) as response:
                if response.status_code != 200:
                    response.read()
                    return self._result(response, mode)
                return self._follow(response, on_event, mode)
        except httpx.TimeoutException as e:
            raise ContainerError(f"the {mode} request to {self.image} timed out ({e})") from e
        except httpx.TransportError as e:
            if self.state()["Status"] in ("exited", "dead"):
                raise self._failure(f"the container of {self.image} stopped during the {mode} request") from e
            raise ContainerError(f"cannot reach {self.image} at {self.url}: {_short_reason(e)}") from e

    def _result(self, response: httpx.Response, mode: str) -> dict[str, Any]:
        try:
            payload = response.json()
        except ValueError:
            payload = {"detail": response.text[:500]}
        if response.status_code == 422:
            detail = payload.get("detail")
            if isinstance(detail, list):
                detail = "; ".join(f"{e.get('loc', ['?'])[-1]}: {e.get('msg')}" for e in detail if isinstance(e, dict))
            raise ContainerError(f"invalid input: {detail}")
        if response.status_code >= 400:
            detail = payload.get("detail", payload)
            raise ContainerError(f"the {mode} request failed ({response.status_code}: {detail})")
        return payload

    @staticmethod
    def _follow(response: httpx.Response, on_event: Listener, mode: str) -> dict[str, Any]:
        event, data_lines = "message", []
        for line in response.iter_lines():
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data_lines.append(line[5:].lstrip())
            elif not line and data_lines:
                data = json.loads("\n".join(data_lines))
                if event == "completed":
                    return data
                # Cog's payloads, handed on as ("output", item) and ("logs", text)
                if event == "output" and isinstance(data, dict):
                    on_event("output", data.get("chunk"))
                elif event == "log" and isinstance(data, dict):
                    on_event("logs", data.get("data", ""))
                elif event != "start":
                    on_event(event, data)
                event, data_lines = "message", []
        raise ContainerError(f"the {mode} event stream ended before the prediction completed")

    # --- the end ---------------------------------------------------------------------

    def stop(self, timeout: int = 10) -> None:
        """Stop (SIGTERM, then SIGKILL after `timeout` s) and remove the container."""
        try:
            self.client.stop(self.container, timeout=timeout)
        except docker.errors.NotFound:
            return
        except docker.errors.APIError:
            pass
        try:
            self.client.remove_container(self.container, force=True)
        except docker.errors.NotFound:
            pass


def start(image: str, port: int | None = None, env: dict[str, str] | None = None,
          client: docker.APIClient | None = None, *, volumes: dict[str, str] | None = None,
          wait: bool = True, timeout: float = 300, upload_url: str | None = None,
          name: str | None = None, source: str | None = None) -> RunningModel:
    """Run `image` with the host network, its server on 127.0.0.1:port (a free one by default);
    returns once /health-check says READY. volumes maps host paths to read-only container paths.
    A `name` chosen beforehand lets the caller remove the container even if it was
    interrupted before this returned (see remove()). `source`, a project directory, is
    mounted read-write at /src over the image's copy, and the model then runs as this
    process's user, so that what it writes there is the caller's (as `cog predict` from source)."""
    client = client or connect()
    try:
        info = client.inspect_image(image)
    except docker.errors.ImageNotFound:
        raise ContainerError(f"there is no image {image} in the Docker engine; build it (`cogkit build -t {image}`) "
                             f"or pull it (`docker pull {image}`)") from None
    except docker.errors.APIError as e:
        raise ContainerError(f"cannot inspect {image}: {_short_reason(e)}") from e
    if port is None:
        port = free_port()
    elif not _port_is_free(port):
        raise ContainerError(f"port {port} on 127.0.0.1 is already in use; choose another one (--port)")
    binds = {host: {"bind": inner, "mode": "ro"} for host, inner in (volumes or {}).items()}
    if source is not None:
        binds[source] = {"bind": df.SRC_DIR, "mode": "rw"}
    # host.docker.internal names this host inside the container, as `cog serve` arranges it
    # (with the host network, that is 127.0.0.1).
    host_config = client.create_host_config(network_mode="host", binds=binds or None,
                                            extra_hosts={"host.docker.internal": "127.0.0.1"})
    try:
        container = client.create_container(
            image, command=command_for((info.get("Config") or {}).get("Cmd"), port) + (
                ["--upload-url", upload_url] if upload_url else []),
            environment={k: str(v) for k, v in (env or {}).items()}, host_config=host_config,
            labels={LABEL: "1"}, volumes=[b["bind"] for b in binds.values()] or None, name=name,
            user=f"{os.getuid()}:{os.getgid()}" if source is not None else None,
        )["Id"]
        model = RunningModel(client, container, image, port)
        client.start(container)
    except docker.errors.APIError as e:
        raise ContainerError(f"cannot start a container of {image}: "
                             f"{_short_reason(Exception(getattr(e, 'explanation', None) or str(e)))}") from e
    if wait:
        try:
            model.wait_ready(timeout)
        except BaseException:
            model.stop(timeout=2)
            raise
    return model


def remove(client: docker.APIClient, container: str, timeout: int = 5) -> None:
    """Stop (SIGTERM, then SIGKILL after `timeout` s) and remove a container by id or name; gone already is fine."""
    RunningModel(client, container, "", 0).stop(timeout=timeout)


def pull(ref: str, progress: Callable[[str], None] = lambda _line: None,
         client: docker.APIClient | None = None) -> str:
    """Pull an image (by tag or by digest, with stored credentials); returns its image id."""
    from cogkit.build import registry

    client = client or connect()
    host = registry.registry_of(ref)
    auth = registry.credentials(host)
    if "@" in ref:
        repository, tag = ref.split("@", 1)
    else:
        repository, tag = registry.split_ref(ref)
    progress(f"Pulling {ref}")
    seen: dict[str, str] = {}
    try:
        for chunk in client.pull(repository, tag=tag, stream=True, decode=True, auth_config=auth):
            if "error" in chunk:
                raise docker.errors.APIError(chunk.get("errorDetail", {}).get("message") or chunk["error"])
            status, layer = chunk.get("status", ""), chunk.get("id")
            if layer and seen.get(layer) != status and status not in ("Downloading", "Extracting"):
                seen[layer] = status
                progress(f"  {layer}: {status}")
            elif not layer and status:
                progress(status)
    except docker.errors.APIError as e:
        message = getattr(e, "explanation", None) or str(e)
        if any(w in message.lower() for w in ("unauthorized", "denied", "authentication required")):
            raise registry.AuthError(f"{host} refused the pull of {ref}: {message} "
                                     f"(log in first: `cogkit login {host}`)") from e
        raise ContainerError(f"pulling {ref} failed: {_short_reason(Exception(message))}") from e
    try:
        return client.inspect_image(ref)["Id"]
    except docker.errors.ImageNotFound:
        raise ContainerError(f"the pull of {ref} finished but the engine has no such image") from None
