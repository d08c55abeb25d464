"""Why a suite test cannot run here, by name or by what it needs. Kept short:
each reason names what this machine (2 CPU cores, no GPU, no internet beyond
package registries) lacks."""
from __future__ import annotations

import re

# Tests that need what this machine lacks, whatever the mode.
NEEDS: dict[str, str] = {}

# Tests that are about the built image itself (its labels, layers, a registry
# push): in local mode there is no image to look at.
_IMAGE_ONLY = re.compile(r"^\s*(!\s+)?(exec docker |exec python3 \S*check|docker-run|docker-push|registry-inspect)",
                         re.MULTILINE)


def skip_reason(name: str, text: str, mode: str) -> str | None:
    if name in NEEDS:
        return NEEDS[name]
    script = text.split("\n-- ", 1)[0]
    if mode == "local" and _IMAGE_ONLY.search(script):
        return "inspects the built image (docker inspect/run/push): runs in image mode only"
    return None
