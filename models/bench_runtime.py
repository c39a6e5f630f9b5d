"""`onnx-l2c bench runtime` on the zoo's EfficientNet-Lite0 and all-MiniLM-L6-v2.

    python -P -m onnx_l2c.models.bench_runtime [--runs N] [--presets lossless,int8,bits=6,bits=4,target=8]
        [--out bench-results] [--cpp-timer DIR/time_load]
"""

from __future__ import annotations

import argparse
import sys

from onnx_l2c.cli import main as cli_main

from .zoo import zoo_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -P -m onnx_l2c.models.bench_runtime", description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="efficientnet_lite0,minilm")
    parser.add_argument("--presets", default="lossless,int8,bits=6,bits=4,target=8")
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--out", default="bench-results")
    parser.add_argument("--cpp-timer", default=None, help="time_load binary (bash scripts/build_examples.sh DIR)")
    args = parser.parse_args(argv)
    paths = [str(zoo_path(name)) for name in args.models.split(",") if name]
    cpp = ["--cpp-timer", args.cpp_timer] if args.cpp_timer else []
    return cli_main(["bench", "runtime", *paths, "--presets", args.presets, "--runs", str(args.runs),
                     "--out", args.out, "--zstd", *cpp])


if __name__ == "__main__":
    sys.exit(main())
