"""build.run steps that mount secrets (cog.yaml's `mounts: [{type: secret, id, target}]`),
without BuildKit: the classic builder has no RUN --mount, so the builder stops the
Dockerfile before such a step, runs the step itself in a container of the image built
so far, commits that container, and goes on building FROM the result.

The secret never reaches a layer or the history: it is copied into the stopped
container's /tmp (read-only for root), moved to its target by the step's wrapper
just before the command runs, and deleted again (with any directories made for it)
before the container exits; `docker commit` records the file system as it is then.
A file that was at the target before is put back. The history's line for the step is
the wrapper and the command, never the secret's value. Such a step is not cached.
"""
from __future__ import annotations

import io
import tarfile
from collections.abc import Callable

import docker
import docker.errors

from cogkit.build import dockerfile as df

STAGE = "/tmp/cogkit-secrets"
# Arguments: pairs of (staged file, target), then "--", then the step's argv. The targets
# are checked for whitespace before they get here (the lists below are split on it).
WRAPPER = " ".join("""
files=""; made=""; kept="";
while [ "$1" != "--" ]; do
  staged=$1; target=$2; shift 2;
  dir=$(dirname "$target"); new="";
  while [ ! -d "$dir" ]; do new="$new $dir"; dir=$(dirname "$dir"); done;
  made="$new $made";
  if [ -e "$target" ]; then mv "$target" "$target.cogkit-kept" && kept="$kept $target"; fi;
  mkdir -p "$(dirname "$target")" && mv "$staged" "$target" || exit 97;
  files="$files $target";
done;
shift; rmdir STAGE;
"$@"; status=$?;
for f in $files; do rm -f "$f"; done;
for f in $kept; do mv "$f.cogkit-kept" "$f"; done;
for d in $made; do rmdir "$d" 2>/dev/null; done;
exit $status
""".replace("STAGE", STAGE).split())  # one line, so that `docker history` shows it as one


class SecretStepFailed(Exception):
    def __init__(self, message: str, tail: list[str]):
        super().__init__(message)
        self.tail = tail


def _secret_tar(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        folder = tarfile.TarInfo(STAGE.lstrip("/").split("/", 1)[1])
        folder.type, folder.mode = tarfile.DIRTYPE, 0o700
        tar.addfile(folder)
        for name, data in files.items():
            info = tarfile.TarInfo(f"{folder.name}/{name}")
            info.size, info.mode = len(data), 0o400
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def run(client: docker.APIClient, image: str, command: str, mounts: list[dict], secrets: dict[str, bytes],
        progress: Callable[[str], None], step: str) -> str:
    """Run one build.run step with its secrets on `image`; returns the committed image's id."""
    staged: dict[str, bytes] = {}
    pairs: list[str] = []
    for n, mount in enumerate(mounts):
        target = str(mount["target"])
        if not target.startswith("/") or any(c.isspace() for c in target):
            raise SecretStepFailed(f"{step}: the secret {mount['id']!r} has target {target!r}; expected an "
                                   "absolute path without spaces", [])
        if mount["id"] not in secrets:
            raise SecretStepFailed(f"{step} mounts the secret {mount['id']!r}: give it with "
                                   f"--secret id={mount['id']},src=FILE (or env=VAR)", [])
        staged[str(n)] = secrets[mount["id"]]
        pairs += [f"{STAGE}/{n}", target]
    argv = df.shell_argv(command)
    wrapper = ["/bin/sh", "-c", WRAPPER, "cogkit-secret-step", *pairs, "--", *argv]
    container = client.create_container(image, command=wrapper, entrypoint=[], user="0",
                                        host_config=client.create_host_config(network_mode="host"),
                                        labels={"run.cogkit.build-step": "1"})["Id"]
    try:
        client.put_archive(container, "/tmp", _secret_tar(staged))
        client.start(container)
        tail: list[str] = []
        for chunk in client.logs(container, stream=True, follow=True):
            for line in chunk.decode(errors="replace").splitlines():
                tail = [*tail[-29:], line]
                progress(line)
        code = client.wait(container).get("StatusCode", 1)
        if code != 0:
            raise SecretStepFailed(f"the build failed at {step}\n" + "".join(f"  | {t}\n" for t in tail)
                                   + f"(the command exited with code {code})", tail)
        # The image's own settings, not the wrapper's (user 0, no entrypoint); the history still shows the step.
        config = client.inspect_image(image).get("Config") or {}
        keep = {k: config.get(k) for k in ("Cmd", "Entrypoint", "User", "Env", "WorkingDir", "Labels")}
        return client.commit(container, conf=keep)["Id"]
    finally:
        try:
            client.remove_container(container, force=True)
        except docker.errors.NotFound:
            pass
