"""`python -m cogkit.runtime --project DIR --python PY`: the server a model
container runs (and `cogkit serve` runs locally)."""
from __future__ import annotations

import argparse
import sys

from cogkit.runtime.serve import serve


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m cogkit.runtime")
    parser.add_argument("--project", default=".")
    parser.add_argument("--python", default=sys.executable, help="Python of the model's environment")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--upload-url", default=None)
    args = parser.parse_args()
    serve(args.project, args.python, args.host, args.port, args.upload_url)


if __name__ == "__main__":
    main()
