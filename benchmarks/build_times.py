"""Build times and image size for a Cog project.

    eval "$(bash .ci/docker-services.sh --env)"
    python benchmarks/build_times.py examples/models/hello-world [--separate-weights]

Prints: the cold build (no layer cache; the base image is already in the
engine), a rebuild after `touch predict.py` (mtime only), a rebuild after an
edit to predict.py (one comment line, removed again afterwards), and the
image's size. The predictor file is restored byte for byte at the end.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cogkit.build import builder  # noqa: E402
from cogkit.config import load_config, split_ref  # noqa: E402


def timed_build(project: Path, tag: str, **kwargs) -> tuple[float, builder.BuildResult]:
    started = time.perf_counter()
    result = builder.build(project, tag, progress=lambda _line: None, **kwargs)
    return time.perf_counter() - started, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("project", type=Path)
    parser.add_argument("--tag", default="cogkit-bench/build-times:latest")
    parser.add_argument("--separate-weights", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the image afterwards")
    args = parser.parse_args()

    client = builder.connect()
    config = load_config(args.project)
    predict_file = args.project / split_ref(config.predict)[0]
    original = predict_file.read_bytes()
    options = {"separate_weights": args.separate_weights, "client": client}
    rows: list[tuple[str, str]] = []
    try:
        seconds, result = timed_build(args.project, args.tag, no_cache=True, **options)
        rows.append(("cold build (no layer cache)", f"{seconds:.1f} s"))

        os.utime(predict_file)
        seconds, _ = timed_build(args.project, args.tag, **options)
        rows.append(("rebuild after touch predict.py", f"{seconds:.1f} s"))

        predict_file.write_bytes(original + b"\n# edited by benchmarks/build_times.py\n")
        seconds, result = timed_build(args.project, args.tag, **options)
        rows.append(("rebuild after editing predict.py", f"{seconds:.1f} s"))

        info = client.inspect_image(result.id)
        rows.append(("image size", f"{info['Size'] / 1e6:.1f} MB"))
        rows.append(("layers", str(len(info["RootFS"]["Layers"]))))
        rows.append(("base image", result.base_image))
    finally:
        predict_file.write_bytes(original)
        if not args.keep:
            try:
                client.remove_image(args.tag)
            except Exception:  # noqa: BLE001 - best effort; the numbers are already printed
                pass
    width = max(len(name) for name, _ in rows)
    print(f"Build times for {args.project} (engine {client.version()['Version']}):")
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")


if __name__ == "__main__":
    try:
        main()
    except builder.BuildError as e:
        sys.exit(f"error: {e}")
