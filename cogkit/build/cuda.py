"""Which CUDA base image a GPU model gets (build.gpu: true).

PyTorch publishes each release for a few CUDA versions only, and NVIDIA
publishes cuDNN runtime images for a few CUDA versions only; a model that asks
for a pair outside both lists would build an image whose torch cannot use the
GPU, so that is refused here with the choices that do exist.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

# torch major.minor -> the CUDA versions it has wheels for (download.pytorch.org/whl/cuXYZ), newest first.
TORCH_CUDA: dict[str, list[str]] = {
    "2.7": ["12.8", "12.6", "11.8"],
    "2.6": ["12.6", "12.4", "11.8"],
    "2.5": ["12.4", "12.1", "11.8"],
    "2.4": ["12.4", "12.1", "11.8"],
    "2.3": ["12.1", "11.8"],
    "2.2": ["12.1", "11.8"],
    "2.1": ["12.1", "11.8"],
    "2.0": ["11.8", "11.7"],
    "1.13": ["11.7"],
}

# CUDA major.minor -> the cuDNN runtime image (Ubuntu 22.04 has images from CUDA 11.7 on).
CUDA_IMAGES: dict[str, str] = {
    "12.8": "nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04",
    "12.6": "nvidia/cuda:12.6.3-cudnn-runtime-ubuntu22.04",
    "12.4": "nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04",
    "12.2": "nvidia/cuda:12.2.2-cudnn8-runtime-ubuntu22.04",
    "12.1": "nvidia/cuda:12.1.1-cudnn8-runtime-ubuntu22.04",
    "11.8": "nvidia/cuda:11.8.0-cudnn8-runtime-ubuntu22.04",
    "11.7": "nvidia/cuda:11.7.1-cudnn8-runtime-ubuntu22.04",
}

# Without torch and without build.cuda: a current CUDA that most libraries support.
DEFAULT_CUDA = "12.4"

_TORCH_PIN = re.compile(r"^torch\s*==\s*(\d+)\.(\d+)(?:\.[0-9a-z.]+)?(?:\+\w+)?\s*(?:;.*)?$", re.I)
_TORCH_ANY = re.compile(r"^torch(\s*[<>=!~\[;@]|\s*$)", re.I)


class CudaError(Exception):
    """No CUDA base image fits the requested torch / CUDA combination; says which ones would."""


@dataclass
class CudaChoice:
    cuda: str                  # major.minor, e.g. "12.1"
    image: str                 # the base image, before any mirror prefix
    torch: str | None          # torch major.minor when pinned
    torch_index: str | None    # pip index holding torch built for this CUDA


def torch_version(requirements: list[str]) -> str | None:
    """torch's major.minor when requirements pin it with ==, else None."""
    for line in requirements:
        m = _TORCH_PIN.match(line.strip())
        if m:
            return f"{m.group(1)}.{m.group(2)}"
    return None


def wants_torch(requirements: list[str]) -> bool:
    return any(_TORCH_ANY.match(line.strip()) for line in requirements)


def _short(cuda: str) -> str:
    parts = cuda.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else f"{parts[0]}.0"


def choose(requirements: list[str], cuda: str | None) -> CudaChoice:
    """The base image for a GPU build; `cuda` is build.cuda from cog.yaml (or None)."""
    torch = torch_version(requirements)
    wanted = _short(cuda) if cuda else None
    if wanted and wanted not in CUDA_IMAGES:
        raise CudaError(f"build.cuda is {cuda}, but there is no CUDA {wanted} base image; "
                        f"choose one of {', '.join(CUDA_IMAGES)}")
    if torch and torch not in TORCH_CUDA:
        if not wanted:
            raise CudaError(f"torch {torch} is not in cogkit's torch/CUDA table (it knows {', '.join(TORCH_CUDA)}); "
                            f"set build.cuda in cog.yaml to the CUDA version that torch {torch} was built for")
        return CudaChoice(wanted, CUDA_IMAGES[wanted], torch, None)
    if torch:
        supported = [c for c in TORCH_CUDA[torch] if c in CUDA_IMAGES]
        if wanted and wanted not in TORCH_CUDA[torch]:
            raise CudaError(f"torch {torch} has no build for CUDA {wanted} (build.cuda is {cuda}); "
                            f"torch {torch} supports CUDA {', '.join(TORCH_CUDA[torch])}: set build.cuda to one "
                            f"of those, or pin a torch version that supports CUDA {wanted}")
        chosen = wanted or supported[0]
        return CudaChoice(chosen, CUDA_IMAGES[chosen], torch, torch_index(chosen))
    chosen = wanted or DEFAULT_CUDA
    # torch without a pin: let pip pick the newest torch, from the index for this CUDA.
    index = None
    if wants_torch(requirements):
        known = sorted({c for versions in TORCH_CUDA.values() for c in versions}, reverse=True)
        if chosen not in known:
            raise CudaError(f"there is no torch build for CUDA {chosen} (build.cuda is {cuda}); "
                            f"torch is built for CUDA {', '.join(known)}")
        index = torch_index(chosen)
    return CudaChoice(chosen, CUDA_IMAGES[chosen], None, index)


def torch_index(cuda: str) -> str:
    return "https://download.pytorch.org/whl/cu" + cuda.replace(".", "")
