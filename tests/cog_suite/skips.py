"""Why a suite test cannot run here, by name or by what it needs. Kept short:
each reason names what this machine (2 CPU cores, no GPU, no internet beyond
package registries) lacks."""
from __future__ import annotations

import re

# Tests that need what this machine lacks, whatever the mode.
_CUDA_WHEELS = "installs CUDA builds of torch/tensorflow (GBs of CUDA wheels) and checks them on a GPU; no GPU here"
_COG_BASE = ("builds on Cog's own cog-base images (--use-cog-base-image, pulled from r8.im/ghcr.io): "
             "no internet registry here")
_COG_WHEELS = ("selects Cog's own SDK and coglet wheels (COG_SDK_WHEEL/COGLET_WHEEL from Cog's repo dist/); "
               "cogkit installs its own SDK")
NEEDS: dict[str, str] = {
    "ffmpeg_package": _CUDA_WHEELS,
    "tensorflow": _CUDA_WHEELS,
    "torch_270_cuda_126": _CUDA_WHEELS,
    "torch_271_cuda_128": _CUDA_WHEELS,
    "torch_baseimage_fallback": _CUDA_WHEELS,
    "torch_baseimage_no_cog_base": _CUDA_WHEELS,
    "torch_baseimage_precompile": _CUDA_WHEELS,
    "torch_cuda_baseimage": _CUDA_WHEELS,
    "build_base_image_sha": _COG_BASE,
    "build_python313_base_image": _COG_BASE,
    "build_cog_version_match": _COG_BASE,
    "wheel_coglet_missing": _COG_WHEELS,
    "wheel_resolution": _COG_WHEELS,
    "ca_cert": "builds a helper server from Cog's own repository (test-helpers/https-server, with Go); neither is here",
    "build_pip_freeze": ("expects Cog's own runtime package (coglet) in the image's pip freeze; cogkit's runtime "
                         "lives in its own environment"),
    "setup_worker_tracing_logs": ("checks the internal Rust tracing lines of Cog's coglet runtime in the setup "
                                  "log (its implementation, not an interface)"),
}
_GPU = re.compile(r"^\s*gpu:\s*true", re.MULTILINE)

# Tests that are about the built image itself (its labels, layers, a registry
# push): in local mode there is no image to look at.
_IMAGE_ONLY = re.compile(r"^\s*(!\s+)?(exec docker |exec python3 \S*check|docker-run|docker-push|registry-inspect)",
                         re.MULTILINE)


# Tests that run here and fail, for a reason cogkit has not met yet: expected to fail (strict, so a fix
# shows), and listed with their reasons in docs/cog-compatibility.md.
KNOWN_FAILURES: dict[tuple[str, str], str] = {}


def skip_reason(name: str, text: str, mode: str) -> str | None:
    if name in NEEDS:
        return NEEDS[name]
    script = text.split("\n-- ", 1)[0]
    if mode == "local" and _IMAGE_ONLY.search(script):
        return "inspects the built image (docker inspect/run/push): runs in image mode only"
    if mode == "local" and "weights:" in text and re.search(r"^\s*cog (predict|run|serve)", script, re.MULTILINE):
        return "mounts managed weights at their absolute targets in the container (/src/...): image mode only"
    if mode == "local" and name == "zsh_package":
        return "checks that system_packages (apt) are installed in the image: image mode only"
    if mode == "local" and "Image built as" in script:
        return "checks what `cog build` says about the image it built: runs in image mode only"
    builds = re.findall(r"^\s*(!\s+)?cog build", script, re.MULTILINE)
    only_failing_builds = bool(builds) and all(builds)  # the build is refused before any base image
    if mode == "image" and _GPU.search(text) and not only_failing_builds:
        return "gpu: true builds on a CUDA base image (nvidia/cuda), which this offline engine does not have"
    return None
