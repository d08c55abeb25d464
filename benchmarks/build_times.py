"""Build times and image size for a Cog project.

    eval "$(bash .ci/docker-services.sh --env)"
    python benchmarks/build_times.py examples/models/hello-world [examples/models/image-filter ...] [--separate-weights]

Prints, for each project: the cold build (no layer cache; the base image is already in the
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


def measure(client, project: Path, tag: str, separate_weights: bool, keep: bool) -> list[tuple[str, str]]:
    config = load_config(project)
    predict_file = project / split_ref(config.predict)[0]
    original = predict_file.read_bytes()
    options = {"separate_weights": separate_weights, "client": client}
    rows: list[tuple[str, str]] = []
    try:
        seconds, result = timed_build(project, tag, no_cache=True, **options)
        rows.append(("cold build (no layer cache)", f"{seconds:.1f} s"))

        os.utime(predict_file)
        seconds, _ = timed_build(project, tag, **options)
        rows.append(("rebuild after touch predict.py", f"{seconds:.1f} s"))

        predict_file.write_bytes(original + b"\n# edited by benchmarks/build_times.py\n")
        seconds, result = timed_build(project, tag, **options)
        rows.append(("rebuild after editing predict.py", f"{seconds:.1f} s"))

        info = client.inspect_image(result.id)
        rows.append(("image size", f"{info['Size'] / 1e6:.1f} MB"))
        rows.append(("layers", str(len(info["RootFS"]["Layers"]))))
        rows.append(("base image", result.base_image))
    finally:
        predict_file.write_bytes(original)
        if not keep:
            try:
                client.remove_image(tag)
            except Exception:  # noqa: BLE001 - best effort; the numbers are already measured
                pass
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("projects", type=Path, nargs="+", metavar="project")
    parser.add_argument("--tag-prefix", default="cogkit-bench/", help="images are tagged PREFIX<directory>:latest")
    parser.add_argument("--separate-weights", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the images afterwards")
    args = parser.parse_args()

    client = builder.connect()
    print(f"Docker engine {client.version()['Version']}, {os.cpu_count()} CPUs")
    for project in args.projects:
        tag = f"{args.tag_prefix}{project.resolve().name.lower()}:latest"
        rows = measure(client, project, tag, args.separate_weights, args.keep)
        width = max(len(name) for name, _ in rows)
        print(f"Build times for {project}:")
        for name, value in rows:
            print(f"  {name:<{width}}  {value}")
        sys.stdout.flush()


if __name__ == "__main__":
    try:
        main()
    except builder.BuildError as e:
        sys.exit(f"error: {e}")
