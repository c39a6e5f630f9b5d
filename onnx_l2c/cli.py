"""Command line: compress, inspect, decompress, bench, and the commands that
other installed packages provide (demo, eval, zoo: see COMMAND_GROUP).

The compress flags are generated from `onnx_l2c.config.all_options()` (the
core options and each method's own), the same table that validates the
Python API's keyword arguments. Errors are one line on stderr: an option
error exits 2 like argparse's own ("argument --FLAG: ..."), any other
onnx_l2c error exits 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from onnx_l2c.config import Choice, OptionSpec, all_options
from onnx_l2c.errors import L2CError, NamesOptions, OptionError
from onnx_l2c.progress import STATISTICS

PROG = "onnx-l2c"
VERBOSE_FLAGS = ("-v", "--verbose")


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.1f} GB"


def _spec_help(spec: OptionSpec) -> str:
    text = spec.help
    if spec.type is tuple:
        from onnx_l2c.passes import registry

        text = text.format(methods=", ".join(registry()))
    if spec.default_text is not None:
        default = spec.default_text
    elif spec.type is bool:
        return text
    elif spec.default is None:
        default = "none"
    elif isinstance(spec.default, Choice):
        default = spec.default.value
    elif spec.type is tuple:
        default = ",".join(spec.default)
    else:
        default = str(spec.default)
    return f"{text} (default: {default})"


def _add_option_flags(parser: argparse.ArgumentParser) -> None:
    for spec in all_options():
        if not spec.cli:
            continue
        flag, help_text = spec.cli_flag, _spec_help(spec)
        if isinstance(spec.type, type) and issubclass(spec.type, Choice):
            parser.add_argument(flag, dest=spec.name, choices=[p.value for p in spec.type], default=None,
                                help=help_text)
        elif spec.type is bool:
            parser.add_argument(flag, dest=spec.name, action="store_true", default=None, help=help_text)
        elif spec.type in (tuple, Path, object):
            parser.add_argument(flag, dest=spec.name, type=str, default=None, metavar=spec.value_name,
                                help=help_text)
        else:
            parser.add_argument(flag, dest=spec.name, type=spec.type, default=None, metavar=spec.value_name,
                                help=help_text)


def _option_values(args: argparse.Namespace) -> dict[str, Any]:
    return {spec.name: getattr(args, spec.name) for spec in all_options()
            if spec.cli and getattr(args, spec.name) is not None}


def flag_name(name: str, value: str | None) -> str:
    """An option as the command line spells it: `--flag` or `--flag VALUE`
    (a switch never takes a value)."""
    spec = next((s for s in all_options() if s.name == name), None)
    flag = spec.cli_flag if spec is not None else "--" + name.replace("_", "-")
    if value is None or (spec is not None and spec.type is bool):
        return flag
    return f"{flag} {value}"


class _Bar:
    """tqdm progress bars on stderr, one per phase (see `onnx_l2c.progress`),
    with counts, elapsed time and the time left; created on the first update."""

    UNITS = {STATISTICS: "sample"}  # a phase with numbers counts steps, the rest count tensors

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
            unit = "step" if numbers else self.UNITS.get(phase, "tensor")
            self.bar = tqdm(total=total, desc=phase, unit=unit, file=sys.stderr,
                            leave=False)
        if numbers:
            self.bar.set_postfix_str(numbers, refresh=False)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _cmd_compress(args: argparse.Namespace) -> int:
    from onnx_l2c.write.compress import compress

    package_log = logging.getLogger("onnx_l2c")
    level = package_log.level
    if args.quiet:  # -q: no summary, no warnings (errors still go to stderr)
        package_log.setLevel(logging.ERROR)
    bar = _Bar(not args.quiet and sys.stderr.isatty())
    try:
        result = compress(args.model, args.output, progress=bar, **_option_values(args))
    finally:
        bar.close()
        package_log.setLevel(level)  # for callers of main() in the same process
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
        if result.plan is not None and result.plan.get("max_distortion") is not None:  # the safe preset's plan
            print("preset:     safe: each weight's precision planned without data, within the fidelity estimate; "
                  "a size target with --calibration compresses further")
        elif result.plan is not None and result.plan.get("data_free"):
            print("data-free:  no --calibration; distortion is each weight's relative error")
        if result.plan is not None and result.plan.get("target_missed"):
            print(f"target:     missed: {_human(result.plan['target_bytes'])} asked, the smallest file the "
                  "methods reach written (--allow-target-miss)")
    return 0


def _inspect_json(res: Any) -> str:
    return json.dumps({"graph_bytes": res.graph_bytes, "sidecar_bytes": res.sidecar_bytes,
                       "original_bytes": res.original_bytes, "payload_bytes": res.payload_bytes,
                       "totals": res.totals, "index": res.index,
                       "tensors": [asdict(r) | {"bits_per_weight": r.bits_per_weight} for r in res.rows]},
                      indent=2)


def _cmd_inspect(args: argparse.Namespace) -> int:
    from onnx_l2c.load.compressed import inspect

    res = inspect(args.model, max_decoded_bytes=args.max_decoded_bytes)
    if args.json:
        print(_inspect_json(res))
        return 0
    width = max([len(r.name) for r in res.rows] + [6])
    dw = max([len(r.dtype) for r in res.rows] + [8])
    print(f"{'tensor':<{width}}  {'dtype':<{dw}} {'shape':<20} {'stages':<26} {'original':>10} {'coded':>10} "
          f"{'bits/w':>7}  details")
    for r in res.rows:
        shape = "x".join(map(str, r.shape)) or "scalar"
        details = "; ".join(f"{stage}: {text}" for stage, text in r.notes.items())
        print(f"{r.name:<{width}}  {r.dtype:<{dw}} {shape:<20} {'+'.join(r.stages):<26} "
              f"{_human(r.original_bytes):>10} {_human(r.payload_bytes):>10} {r.bits_per_weight:7.2f}  {details}")
    total = res.graph_bytes + res.sidecar_bytes
    print(f"\n{len(res.rows)} compressed tensors: {_human(res.original_bytes)} → {_human(res.payload_bytes)}"
          f" ({res.original_bytes / max(res.payload_bytes, 1):.2f}x)")
    for stage, text in res.total_notes.items():
        print(f"{stage} (whole model): {text}")
    print(f"files: graph {_human(res.graph_bytes)} + sidecar {_human(res.sidecar_bytes)} = {_human(total)}")
    index = res.index
    if index is None:
        print("sidecar index: none (written before onnx_l2c 0.2, or a weight no node reads or a subgraph outputs): "
              "the C API cannot open it; the custom op and the Python loaders can")
    elif not index["readable"]:
        print("sidecar index: unreadable (damaged): the C API refuses it; the custom op and the Python loaders "
              "read the payloads")
    elif not index["current"]:
        print(f"sidecar index: {_human(index['bytes'])}, made for another version of this .onnx (edited since "
              "compression): the C API refuses it; the Python loader rewrites the graph instead")
    else:
        print(f"sidecar index: {_human(index['bytes'])} for {index['tensors']} tensors, plain graph "
              f"{_human(index['plain_graph_bytes'])}: loads at the original's speed from the C API "
              "(runtime/include/onnx_l2c.h)")
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


def _usage_error(parser: argparse.ArgumentParser, message: str) -> int:
    """An error as argparse reports its own: usage, `PROG: error: MESSAGE`, exit status 2."""
    parser.print_usage(sys.stderr)
    print(f"{parser.prog}: error: {message}", file=sys.stderr)
    return 2


def _add_group(parser: argparse.ArgumentParser, dest: str,
               commands: dict[str, str]) -> dict[str, argparse.ArgumentParser]:
    """Subcommands of a command group (name → help). The group given alone
    is an error that lists them."""
    sub = parser.add_subparsers(dest=dest, metavar="COMMAND")
    def choose(args: argparse.Namespace) -> int:
        return _usage_error(parser, f"choose a command: {', '.join(commands)} (see `{parser.prog} -h`)")

    parser.set_defaults(func=choose, parser=parser)  # a subcommand's own defaults replace these
    return {name: sub.add_parser(name, help=text) for name, text in commands.items()}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG)
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details (anywhere on the line)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("compress", help="compress an ONNX model's weights")
    p.add_argument("model", help="input .onnx (external data allowed)")
    p.add_argument("output", help="output .onnx; the sidecar OUTPUT.l2c is written beside it")
    _add_option_flags(p)
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing (errors only)")
    p.set_defaults(func=_cmd_compress, parser=p)

    p = sub.add_parser("inspect", help="per-tensor table of a compressed model: stages, sizes, what each method did")
    p.add_argument("model", help="an onnx_l2c-compressed .onnx (its sidecar beside it)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--max-decoded-bytes", type=int, default=None, metavar="BYTES",
                   help="refuse a model whose weights decode to more bytes (0: no limit; default: "
                        "max(256 MiB, 1024 x the sidecar's payload bytes))")
    p.set_defaults(func=_cmd_inspect, parser=p)

    p = sub.add_parser("decompress", help="write a plain ONNX model (no custom op needed)")
    p.add_argument("model", help="an onnx_l2c-compressed .onnx (its sidecar beside it)")
    p.add_argument("output", help="the plain .onnx to write")
    p.add_argument("--external-data", choices=["auto", "always", "never"], default="auto",
                   help="store weights in OUTPUT.data (auto: only past protobuf's 2 GB limit)")
    p.add_argument("--max-decoded-bytes", type=int, default=None, metavar="BYTES",
                   help="refuse a model whose weights decode to more bytes (0: no limit; default: "
                        "max(256 MiB, 1024 x the sidecar's payload bytes))")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing (errors only)")
    p.set_defaults(func=_cmd_decompress, parser=p)

    p = sub.add_parser("bench", help="benchmarks: runtime, compare (see `onnx-l2c bench COMMAND -h`)")
    b = _add_group(p, "bench", {
        "runtime": "entropy coder, decode throughput, session creation, latency",
        "compare": "our presets beside the peers on the real-model zoo (see `bench compare -h`)",
    })["runtime"]
    b.add_argument("models", nargs="*",
                   help="original .onnx model files (zoo models by name: python -P -m "
                        "onnx_l2c.models.bench_runtime --models NAME,...)")
    b.add_argument("--presets", default="lossless,int8,bits=4",
                   help="comma-separated: a preset (lossless, int8, ...), bits=N, or target=R (a data-free size target)")
    b.add_argument("--runs", type=int, default=30, help="latency runs per model and path")
    b.add_argument("--out", default="bench-results", help="folder for the JSON and markdown results")
    b.add_argument("--zstd", action="store_true", help="also measure zstd -19 of each file (lossless baseline)")
    b.add_argument("--cpp-timer", type=Path, default=None, metavar="TIME_LOAD",
                   help="also time creation and latency from C++ with this time_load binary "
                        "(bash scripts/build_examples.sh DIR builds DIR/time_load)")
    b.add_argument("--scale", type=float, default=None, metavar="GB",
                   help="also generate a model of GB gigabytes of external-data weights and measure each step's "
                        "time per GB and peak memory on it (OUT/scale.md)")
    b.add_argument("--scale-target-ratio", type=float, default=None, metavar="R",
                   help="with --scale: also run the calibrated planner to ratio R")
    b.add_argument("--scale-samples", type=int, default=128, help="with --scale-target-ratio: calibration samples")
    b.add_argument("--scale-workdir", default=None, metavar="DIR",
                   help="with --scale: where the generated model goes (default: the system's temp folder)")
    b.set_defaults(func=_cmd_bench, parser=b)
    sub.add_parser("demo", help="compress EfficientNet-Lite0 (or --model NAME), load it both ways, compare "
                                "(see `demo -h`)")
    sub.add_parser("eval", help="fidelity of a candidate against the original on a zoo task (see `eval -h`)")
    z = sub.add_parser("zoo", help="the real-model zoo: build, calibration (see `onnx-l2c zoo COMMAND -h`)")
    _add_group(z, "zoo", {"build": "build zoo models into the cache",
                          "calibration": "write a zoo task's calibration feeds as .npz files"})
    parser.description = ("onnx_l2c: compress the weights of ONNX models; load them with onnxruntime. "
                          f"Commands: {', '.join(sub.choices)}.")
    return parser


# Commands that other installed packages provide (the zoo, models/, installed
# as onnx_l2c.models, owns `demo`, `eval`, `bench compare` and `zoo ...` and
# their arguments): entry points of this group, named by their command words.
# The library never imports them by name.
COMMAND_GROUP = "onnx_l2c.commands"


def _plugin_command(argv: list[str], verbose: bool) -> int | None:
    from importlib.metadata import entry_points

    commands = {tuple(ep.name.split()): ep for ep in entry_points(group=COMMAND_GROUP)}
    for words in sorted(commands, key=len, reverse=True):
        if tuple(argv[: len(words)]) == words:
            run = commands[words].load()
            # these commands report their progress by logging: INFO, and DEBUG with -v
            logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(message)s")
            return int(run(argv[len(words):]) or 0)
    return None


def _pop_verbose(argv: list[str]) -> tuple[bool, list[str]]:
    """-v / --verbose anywhere on the line (before a `--`), and the rest."""
    end = argv.index("--") if "--" in argv else len(argv)
    rest = [a for a in argv[:end] if a not in VERBOSE_FLAGS] + argv[end:]
    return len(rest) != len(argv), rest


def _option_error(exc: OptionError, parser: argparse.ArgumentParser) -> int:
    """An option error as argparse reports its own: usage, then
    `PROG: error: argument --FLAG: DETAIL`; exit status 2."""
    detail = exc.detail(flag_name)
    return _usage_error(parser, f"argument {flag_name(exc.option, None)}: {detail}" if exc.option is not None
                        else detail)


def _error(exc: L2CError) -> int:
    message = exc.detail(flag_name) if isinstance(exc, NamesOptions) else str(exc)
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 1


def _run(argv: list[str]) -> int:
    verbose, argv = _pop_verbose(argv)
    try:
        code = _plugin_command(argv, verbose)
    except OptionError as exc:  # a plugin command's option (e.g. demo --target-ratio): as argparse reports it
        detail = exc.detail(flag_name)
        message = f"argument {flag_name(exc.option, None)}: {detail}" if exc.option is not None else detail
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 2
    except L2CError as exc:
        return _error(exc)
    if code is not None:
        return code
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return args.func(args)
    except OptionError as exc:
        return _option_error(exc, args.parser)
    except L2CError as exc:
        return _error(exc)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        code = _run(argv)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (`onnx-l2c inspect x.onnx --json | head`): as
        # the Python docs recommend, point stdout at devnull so the flush at
        # exit does not fail again, and exit quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
