"""Command line: compress, inspect, decompress, bench.

The compress flags are generated from `onnx_l2c.config.all_options()` (the
core options and each method's own), the same table that validates the
Python API's keyword arguments.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from onnx_l2c.config import Choice, all_options
from onnx_l2c.errors import L2CError


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.1f} GB"


def _add_option_flags(parser: argparse.ArgumentParser) -> None:
    for spec in all_options():
        if not spec.cli:
            continue
        flag = spec.flag or "--" + spec.name.replace("_", "-")
        if isinstance(spec.type, type) and issubclass(spec.type, Choice):
            parser.add_argument(flag, dest=spec.name, choices=[p.value for p in spec.type], default=None,
                                help=spec.help + (f" (default: {spec.default.value})" if spec.default is not None else ""))
        elif spec.type in (tuple, Path, object):
            default = ",".join(spec.default) if spec.type is tuple else "none"
            text = spec.help
            if spec.type is tuple:
                from onnx_l2c.passes import registry

                text = text.format(methods=", ".join(registry()))
            parser.add_argument(flag, dest=spec.name, type=str, default=None,
                                metavar="LIST" if spec.type is tuple else "PATH",
                                help=f"{text} (default: {default})")
        else:
            default = "none" if spec.default is None else spec.default
            parser.add_argument(flag, dest=spec.name, type=spec.type, default=None,
                                metavar=spec.type.__name__.upper(),
                                help=f"{spec.help} (default: {default})")


def _option_values(args: argparse.Namespace) -> dict[str, Any]:
    return {spec.name: getattr(args, spec.name) for spec in all_options()
            if spec.cli and getattr(args, spec.name) is not None}


class _Bar:
    """tqdm progress bars on stderr, one per phase (see `onnx_l2c.progress`),
    with counts, elapsed time and the time left; created on the first update."""

    UNITS = {"statistics": "sample", "l2c": "step"}  # the rest count tensors

    def __init__(self, enabled: bool) -> None:
        self.enabled, self.bar = enabled, None

    def __call__(self, done: int, total: int, label: str) -> None:
        if not self.enabled:
            return
        # "phase: numbers" (the joint optimizer's steps) shows the numbers beside the bar
        phase, _, numbers = label.partition(": ")
        if self.bar is None or self.bar.desc != phase or self.bar.total != total:
            from tqdm import tqdm

            if self.bar is not None:
                self.bar.close()
            self.bar = tqdm(total=total, desc=phase, unit=self.UNITS.get(phase, "tensor"), file=sys.stderr,
                            leave=False)
        if numbers:
            self.bar.set_postfix_str(numbers, refresh=False)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _cmd_compress(args: argparse.Namespace) -> int:
    from onnx_l2c.write.compress import compress

    bar = _Bar(not args.quiet and sys.stderr.isatty())
    try:
        result = compress(args.model, args.output, progress=bar, **_option_values(args))
    finally:
        bar.close()
    if not args.quiet:
        methods: dict[str, int] = {}
        for t in result.tensors:
            methods[t.method] = methods.get(t.method, 0) + 1
        summary = ", ".join(f"{n} {m}" for m, n in sorted(methods.items())) or "none"
        print(f"original:   {_human(result.source_bytes)}  ({args.model})")
        print(f"compressed: {_human(result.output_bytes)}  ({result.output.name} {_human(result.graph_bytes)}"
              f" + {result.sidecar.name} {_human(result.sidecar_bytes)})")
        print(f"ratio:      {result.ratio:.2f}x")
        print(f"time:       {result.seconds:.1f} s")
        print(f"tensors:    {len(result.tensors)} compressed ({summary}); {result.skipped_small} small kept as is")
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from onnx_l2c.load.compressed import inspect

    res = inspect(args.model)
    if args.json:
        print(json.dumps({"graph_bytes": res.graph_bytes, "sidecar_bytes": res.sidecar_bytes,
                          "tensors": [asdict(r) | {"bits_per_weight": r.bits_per_weight} for r in res.rows]},
                         indent=2))
        return 0
    width = max([len(r.name) for r in res.rows] + [6])
    print(f"{'tensor':<{width}}  {'dtype':<8} {'shape':<20} {'stages':<26} {'original':>10} {'coded':>10} {'bits/w':>7}")
    for r in res.rows:
        shape = "x".join(map(str, r.shape)) or "scalar"
        print(f"{r.name:<{width}}  {r.dtype:<8} {shape:<20} {'+'.join(r.stages):<26} "
              f"{_human(r.original_bytes):>10} {_human(r.payload_bytes):>10} {r.bits_per_weight:7.2f}")
    total = res.graph_bytes + res.sidecar_bytes
    print(f"\n{len(res.rows)} compressed tensors: {_human(res.original_bytes)} → {_human(res.payload_bytes)}"
          f" ({res.original_bytes / max(res.payload_bytes, 1):.2f}x)")
    print(f"files: graph {_human(res.graph_bytes)} + sidecar {_human(res.sidecar_bytes)} = {_human(total)}")
    return 0


def _cmd_decompress(args: argparse.Namespace) -> int:
    from onnx_l2c.load.compressed import decompress

    external = {"auto": None, "always": True, "never": False}[args.external_data]
    out = decompress(args.model, args.output, external_data=external, max_decoded_bytes=args.max_decoded_bytes)
    if not args.quiet:
        print(f"wrote {out}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from onnx_l2c.bench import run_runtime_bench

    return run_runtime_bench(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="onnx-l2c", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("compress", help="compress an ONNX model's weights")
    p.add_argument("model", help="input .onnx (external data allowed)")
    p.add_argument("output", help="output .onnx; the sidecar OUTPUT.l2c is written beside it")
    _add_option_flags(p)
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing")
    p.set_defaults(func=_cmd_compress)

    p = sub.add_parser("inspect", help="per-tensor table of a compressed model")
    p.add_argument("model")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_inspect)

    p = sub.add_parser("decompress", help="write a plain ONNX model (no custom op needed)")
    p.add_argument("model")
    p.add_argument("output")
    p.add_argument("--external-data", choices=["auto", "always", "never"], default="auto",
                   help="store weights in OUTPUT.data (auto: only past protobuf's 2 GB limit)")
    p.add_argument("--max-decoded-bytes", type=int, default=None, metavar="BYTES",
                   help="refuse a model whose weights decode to more bytes (0: no limit; default: "
                        "max(256 MiB, 1024 x the sidecar's payload bytes))")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=_cmd_decompress)

    p = sub.add_parser("bench", help="benchmarks (see `onnx-l2c bench runtime -h`)")
    bsub = p.add_subparsers(dest="bench", required=True)
    b = bsub.add_parser("runtime", help="entropy coder, decode throughput, session creation, latency")
    b.add_argument("models", nargs="*", help="original .onnx models (or zoo names with --zoo)")
    b.add_argument("--presets", default="lossless,int8,bits=4", help="comma-separated: lossless, int8, bits=N")
    b.add_argument("--runs", type=int, default=30, help="latency runs per model and path")
    b.add_argument("--out", default="bench-results", help="folder for the JSON and markdown results")
    b.add_argument("--zstd", action="store_true", help="also measure zstd -19 of each file (lossless baseline)")
    b.add_argument("--scale", type=float, default=None, metavar="GB",
                   help="also generate a model of GB gigabytes of external-data weights and measure each step's "
                        "time per GB and peak memory on it (OUT/scale.md)")
    b.add_argument("--scale-target-ratio", type=float, default=None, metavar="R",
                   help="with --scale: also run the calibrated planner to ratio R")
    b.add_argument("--scale-samples", type=int, default=128, help="with --scale-target-ratio: calibration samples")
    b.add_argument("--scale-workdir", default=None, metavar="DIR",
                   help="with --scale: where the generated model goes (default: the system's temp folder)")
    b.set_defaults(func=_cmd_bench)
    bsub.add_parser("compare", help="our presets beside the peers on the real-model zoo (see `bench compare -h`)")
    sub.add_parser("demo", help="compress EfficientNet-Lite0 (or --model NAME), load it both ways, compare (see `demo -h`)")
    sub.add_parser("eval", help="fidelity of a candidate against the original on a zoo task (see `eval -h`)")
    z = sub.add_parser("zoo", help="the real-model zoo")
    zsub = z.add_subparsers(dest="zoo", required=True)
    zsub.add_parser("build", help="build zoo models into the cache")
    zsub.add_parser("calibration", help="write a zoo task's calibration feeds as .npz files (see `zoo calibration -h`)")
    return parser


# Commands that other installed packages provide (the zoo, models/, installed
# as onnx_l2c.models, owns `eval`, `bench compare` and `zoo ...` and their
# arguments): entry points of this group, named by their command words. The
# library never imports them by name.
COMMAND_GROUP = "onnx_l2c.commands"


def _plugin_command(argv: list[str]) -> int | None:
    from importlib.metadata import entry_points

    commands = {tuple(ep.name.split()): ep for ep in entry_points(group=COMMAND_GROUP)}
    for words in sorted(commands, key=len, reverse=True):
        if tuple(argv[: len(words)]) == words:
            run = commands[words].load()
            logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
            return int(run(argv[len(words):]) or 0)
    return None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        code = _plugin_command(argv)
    except L2CError as exc:
        print(f"onnx-l2c: error: {exc}", file=sys.stderr)
        return 1
    if code is not None:
        return code
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return args.func(args)
    except L2CError as exc:
        print(f"onnx-l2c: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
