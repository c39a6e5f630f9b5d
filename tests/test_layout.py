"""The shape of the code: one stage vocabulary (Python's stage classes and the
C++ tables agree), one method protocol (a new method is one module), a read
path that loads no planner, and no import cycles."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import onnx

import onnx_l2c
from helpers import ROOT, run_isolated
from onnx_l2c import ErrorCode
from onnx_l2c.codec import (BFLOAT16, DECODE_LIMIT_FLOOR, DECODE_LIMIT_RATIO, DTYPE_NAMES, FLOAT, FLOAT16,
                            FLOAT_DTYPES, FORMAT_VERSION, MAX_DIMS, RAW_DTYPES_VERSION, STAGES, BlockMode,
                            max_format_version)

PAYLOAD_H = ROOT / "runtime" / "src" / "payload.h"
API_H = ROOT / "runtime" / "include" / "onnx_l2c.h"


def _enum(text: str, name: str) -> dict[str, int]:
    body = re.search(r"enum\s+" + name + r"\b[^{]*\{([^}]*)\}", text)
    assert body is not None, f"enum {name} not found"
    return {k: int(v) for k, v in re.findall(r"(\w+)\s*=\s*(\d+)", body.group(1))}


def _constants(text: str) -> dict[str, int]:
    """constexpr integer constants: plain numbers or `T(1) << n`."""
    out = {}
    for name, expr in re.findall(r"constexpr\s+\w+\s+(k\w+)\s*=\s*([^;]+);", text):
        shift = re.fullmatch(r"\w+\((\d+)\)\s*<<\s*(\d+)", expr.strip())
        if shift:
            out[name] = int(shift.group(1)) << int(shift.group(2))
        elif re.fullmatch(r"\d+", expr.strip()):
            out[name] = int(expr)
    return out


def test_stage_kinds_versions_and_limits_match_the_native_tables():
    text = PAYLOAD_H.read_text()
    kinds = _enum(text, "StageKind")
    assert {k[1:].lower(): v for k, v in kinds.items()} == {cls.name: kind for kind, cls in STAGES.items()}
    constants = _constants(text)
    assert constants["kMinFormatVersion"] == FORMAT_VERSION
    assert constants["kMaxFormatVersion"] == max_format_version()
    for cls in STAGES.values():
        if cls.min_version > FORMAT_VERSION:
            assert constants[f"k{cls.name.capitalize()}FormatVersion"] == cls.min_version, cls.name
        for limit, value in cls.limits.items():
            assert constants.get(limit) == value, f"{cls.name}: {limit} is {constants.get(limit)} in payload.h"
    assert (constants["kDecodeLimitFloor"], constants["kDecodeLimitRatio"]) == (DECODE_LIMIT_FLOOR, DECODE_LIMIT_RATIO)
    # every dtype the format holds, named as ONNX names it (float32 is FLOAT)
    native_dtypes = {("FLOAT" if k == "kFloat32" else k[1:].upper()): v for k, v in _enum(text, "DType").items()}
    assert native_dtypes == {onnx.TensorProto.DataType.Name(d): d for d in DTYPE_NAMES}
    assert {FLOAT, FLOAT16, BFLOAT16} == set(FLOAT_DTYPES)
    assert constants["kRawDtypesFormatVersion"] == RAW_DTYPES_VERSION
    assert {k[1:].upper(): v for k, v in _enum(text, "ExpandMode").items()} == {m.name: int(m) for m in BlockMode}


def test_error_codes_match_the_c_api():
    text = API_H.read_text()
    codes = dict(re.findall(r"\bL2C_(?:E_)?(\w+)\s*=\s*(\d+)", text))
    assert {k: int(v) for k, v in codes.items()} == {c.name: int(c) for c in ErrorCode}
    assert int(re.search(r"#define\s+L2C_MAX_DIMS\s+(\d+)", text).group(1)) == MAX_DIMS


def test_loading_imports_no_planner_pass_or_statistics():
    proc = run_isolated("""
        import sys
        import onnx_l2c.load.compressed
        import onnx_l2c
        onnx_l2c.InferenceSession, onnx_l2c.decompress, onnx_l2c.inspect
        heavy = sorted(m for m in sys.modules if m.startswith(("onnx_l2c.passes", "onnx_l2c.plan", "onnx_l2c.measure",
                                                               "onnx_l2c.write", "onnx_l2c.models", "torch")))
        print(heavy)
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]", proc.stdout


def _module_imports(path: Path, package_root: Path, modules: set[str]) -> set[str]:
    """Modules of onnx_l2c that `path` imports at module level (not in functions or TYPE_CHECKING)."""
    tree = ast.parse(path.read_text())
    rel = path.relative_to(package_root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    here = parts if path.name == "__init__.py" else parts[:-1]
    out: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, (ast.If, ast.Try)):
                visit(node.body)
                visit(getattr(node, "orelse", []))
                continue
            if isinstance(node, ast.Import):
                out.update(a.name for a in node.names if a.name.startswith("onnx_l2c"))
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(here[: len(here) - node.level + 1] + ([base] if base else []))
                if base.startswith("onnx_l2c"):
                    # `from pkg import module` depends on the module; `from pkg import name` on pkg
                    for a in node.names:
                        out.add(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base)

    visit(tree.body)
    return out


def test_no_import_cycles_between_modules():
    package = Path(onnx_l2c.__file__).parent
    modules = {}
    for path in package.rglob("*.py"):
        rel = path.relative_to(package.parent).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.parts[-1] == "__init__" else rel.parts)
        modules[name] = path
    graph = {name: {m for m in _module_imports(path, package, set(modules)) if m in modules and m != name}
             for name, path in modules.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def walk(name: str, path: list[str]) -> None:
        state[name] = 1
        for dep in sorted(graph[name]):
            if state.get(dep) == 1:
                cycle = path[path.index(dep):] + [dep]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                walk(dep, path + [dep])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            walk(name, [name])


def test_a_new_method_is_one_module(tmp_path):
    """A Method subclass defined outside the package registers itself: `--methods` accepts it,
    its own option becomes a compress() keyword (and a CLI flag), the planner asks it for
    candidates, the writer encodes with it and the report names it."""
    from builders import mlp

    import numpy as np
    from helpers import save

    src = save(mlp(np.random.default_rng(0)), tmp_path / "model.onnx")
    proc = run_isolated(f"""
        import json
        from dataclasses import dataclass
        from typing import ClassVar
        import onnx_l2c
        from onnx_l2c.config import OptionSpec, all_options
        from onnx_l2c.passes import Knob, Method, Params, registry
        from onnx_l2c.passes.base import sweep
        from onnx_l2c.passes.steps import QuantParams, quantize

        @dataclass(frozen=True)
        class HalfParams(Params):
            method: ClassVar[str] = "half"
            alpha: float

            @property
            def family(self):
                return ("half",)

            def knobs(self):
                return (Knob("alpha", steps=3),)

            def describe(self):
                return {{"alpha": self.alpha}}

        class Half(Method):
            name = "half"
            order = 99
            options = (OptionSpec("half_coarsest", float, 0.0, "half: coarsest log2 step offset"),)

            def candidates(self, tensor, ctx, lossless_bytes):
                def candidate(alpha):
                    p = HalfParams(alpha)
                    return p, self.quantize(tensor, p, ctx)
                coarsest = ctx.options.option("half_coarsest")
                return sweep((-8, -6, -4, -2, coarsest), tensor.numel, lossless_bytes, candidate)

            def quantize(self, tensor, params, ctx):
                return quantize(tensor, QuantParams(params.alpha, False, 0.0), ctx.stats)

            def encode(self, tensor, params, ctx):
                return self.quantize(tensor, params, ctx).recipe

            def summary(self, recipes):
                return {{"tensors": len(recipes)}}

        Half.summary_key = "half"
        assert "half" in registry() and "half_coarsest" in {{o.name for o in all_options()}}
        r = onnx_l2c.compress({str(src)!r}, {str(tmp_path / "small.onnx")!r}, methods="half", target_ratio=3,
                              min_elements=1, half_coarsest=1.0)
        assert r.options["half_coarsest"] == 1.0
        print(json.dumps({{"methods": sorted({{t.method for t in r.tensors}}), "plan": r.plan["half"],
                          "ratio": r.ratio}}))
    """)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "half" in out["methods"] and set(out["methods"]) <= {"half", "lossless"}
    assert out["plan"]["tensors"] >= 1 and out["ratio"] > 2.5
