"""`cogkit up` and `cogkit call` as a user runs them: one process with the whole platform on
the embedded default, an example built, pushed, deployed and called; Ctrl-C leaves no
container; a second `up` reuses what the first made. On the real engine and registry."""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path

from conftest import EXAMPLES, ROOT, free_port

from tests.net import until

PLATFORM_CLI = [sys.executable, "-m", "server.platform_cli"]


class Up:
    """`cogkit up` in its own process, its output collected line by line."""

    def __init__(self, home: Path, examples: Path, namespace: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "COGKIT_HOME": str(home), "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
        self.proc = subprocess.Popen(
            [*PLATFORM_CLI, "up", "--port", str(self.port), "--examples-dir", str(examples), "--namespace", namespace],
            cwd=ROOT, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def text(self) -> str:
        return "".join(self.lines)

    def admin_key(self) -> str:
        text = until(lambda: "The platform is up" in self.text() and self.text(), 600, "`cogkit up` to finish")
        return re.search(r"Admin key: (ck-\S+)", text).group(1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)        # what Ctrl-C sends
            self.proc.wait(60)


def test_up_call_ctrl_c_and_up_again(tmp_path, engine) -> None:
    examples = tmp_path / "examples"
    shutil.copytree(EXAMPLES / "hello-world", examples / "hello-world")
    namespace = f"h5up-{uuid.uuid4().hex[:8]}"
    home = tmp_path / "home"
    instance = hashlib.sha256(f"sqlite:///{home / 'gateway.db'}".encode()).hexdigest()[:12]
    replicas = {"label": f"run.cogkit.platform={instance}"}
    up = Up(home, examples, namespace)
    try:
        key = up.admin_key()
        assert "cold start" in up.text() and f"@{namespace}/hello-world" in up.text()
        assert f"cogkit call @{namespace}/hello-world" in up.text()
        assert len(engine.containers(filters=replicas)) == 1                # the first call started one
        env = {**up.env, "COGKIT_API_KEY": key, "COGKIT_GATEWAY_URL": up.url}
        called = subprocess.run([*PLATFORM_CLI, "call", f"@{namespace}/hello-world", "-i", "name=terminal"],
                                cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False)
        assert called.returncode == 0 and called.stdout.strip() == "hello terminal", called.stderr
        bad = subprocess.run([*PLATFORM_CLI, "call", f"@{namespace}/hello-world", "-i", "nme=x"],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False)
        assert bad.returncode == 1 and "nme" in bad.stderr and "Traceback" not in bad.stderr
        listed = subprocess.run([*PLATFORM_CLI, "deployments", "list"], env=env, capture_output=True, text=True,
                                timeout=60, check=False)
        assert f"{namespace}/hello-world" in listed.stdout and "1/1 ready" in listed.stdout
    finally:
        up.stop()
    assert up.proc.returncode == 0, up.text()[-3000:]
    assert engine.containers(all=True, filters=replicas) == []             # Ctrl-C left nothing behind

    again = Up(home, examples, namespace)
    try:
        assert again.admin_key() == key                                     # the same platform, found again
        assert "ready" in again.text()
        assert len(engine.containers(filters=replicas)) == 1
    finally:
        again.stop()
    assert engine.containers(all=True, filters=replicas) == []
    engine.remove_image(f"127.0.0.1:5050/{namespace}/hello-world:latest", force=True)
