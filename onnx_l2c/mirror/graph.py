"""The interpreter: an ONNX model as a torch module, node by node."""

from __future__ import annotations

import contextlib
import re
from collections import ChainMap
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from onnx_l2c.errors import ModelError, UnsupportedError
from onnx_l2c.graph.model import embed_external, sparse_to_dense
from onnx_l2c.graph.ops import DEFAULT_DOMAINS
from onnx_l2c.mirror.ops import OPS, OpContext, to_torch

Tensor = torch.Tensor
CONTROL_FLOW = ("If", "Loop")


def supported_ops() -> list[str]:
    """The default-domain op types the mirror evaluates."""
    return sorted(set(OPS) | {"Constant", *CONTROL_FLOW})


def _attributes(node: onnx.NodeProto) -> dict[str, Any]:
    attrs: dict[str, Any] = {}
    for a in node.attribute:
        value = onnx.helper.get_attribute_value(a)
        if a.type == onnx.AttributeProto.STRING:
            value = value.decode()
        elif a.type == onnx.AttributeProto.STRINGS:
            value = [v.decode() for v in value]
        attrs[a.name] = value
    return attrs


def _constant_value(node: onnx.NodeProto, base_dir: Path) -> Tensor:
    """The tensor a Constant node holds, whichever attribute holds it."""
    attr = node.attribute[0] if len(node.attribute) == 1 else None
    if attr is None:
        raise ModelError(f"Constant node {node.name or node.output[0]!r} needs exactly one value attribute")
    if attr.name == "value":
        tensor = onnx.TensorProto()
        tensor.CopyFrom(attr.t)
        embed_external(tensor, base_dir)
        return to_torch(tensor)
    if attr.name == "sparse_value":
        try:
            return to_torch(numpy_helper.from_array(sparse_to_dense(attr.sparse_tensor)))
        except ValueError as exc:
            raise ModelError(f"Constant node {node.name or node.output[0]!r}: bad sparse_value ({exc})") from None
    simple = {"value_float": torch.float32, "value_floats": torch.float32, "value_int": torch.int64,
              "value_ints": torch.int64}
    if attr.name in simple:
        return torch.tensor(onnx.helper.get_attribute_value(attr), dtype=simple[attr.name])
    raise UnsupportedError(f"Constant node {node.name or node.output[0]!r}: attribute {attr.name!r} "
                           "is not supported by the mirror")


@dataclass
class _Step:
    node: onnx.NodeProto
    ctx: OpContext
    subgraphs: dict[str, str]  # attribute name -> graph key


class Mirror(torch.nn.Module):
    """`model` evaluated with torch ops; `trainable` names float initializers
    or Constant outputs (of any graph) that become parameters (`weight(name)`).

    `forward(feeds, overrides)` runs the graph on `feeds` (input name →
    tensor or array) with the values in `overrides` (name → tensor) in place
    of those initializers, and returns every graph output by name."""

    def __init__(self, model: onnx.ModelProto, base_dir: str | Path | None = None,
                 trainable: Iterable[str] = ()) -> None:
        super().__init__()
        self.base_dir = Path(base_dir) if base_dir is not None else Path(".")
        self.opset = next((o.version for o in model.opset_import if o.domain in DEFAULT_DOMAINS), 1)
        wanted = set(trainable)
        self._constants: dict[str, dict[str, Tensor]] = {}
        self._steps: dict[str, list[_Step]] = {}
        self._graphs: dict[str, onnx.GraphProto] = {}
        self._keys: dict[str, str] = {}  # trainable name -> parameter key
        self._owned: dict[str, list[str]] = {}  # graph key -> the trainable names defined there
        self.params = torch.nn.ParameterDict()
        missing: dict[str, str] = {}
        self._prepare(model.graph, "main", wanted, missing)
        if missing:
            listed = ", ".join(f"{op} (node {name!r})" for op, name in sorted(missing.items()))
            raise UnsupportedError(f"the torch mirror has no implementation of {listed}; supported: "
                                   + ", ".join(supported_ops()))
        absent = wanted - set(self._keys)
        if absent:
            raise ModelError(f"not a float initializer or Constant of the model: {sorted(absent)[:5]}")
        self.input_names = [v.name for v in model.graph.input if v.name not in self._constants["main"]]
        self.output_names = [v.name for v in model.graph.output]
        self.device = torch.device("cpu")

    def to_device(self, device: str | torch.device) -> "Mirror":
        """Move the graph's constants and parameters to `device`; `forward`
        then takes its feeds there and creates the ops' new tensors there."""
        self.device = torch.device(device)
        for constants in self._constants.values():
            for name, value in constants.items():
                constants[name] = value.to(self.device)
        self.to(self.device)
        return self

    # --- building -----------------------------------------------------------------------

    def _prepare(self, graph: onnx.GraphProto, key: str, wanted: set[str], missing: dict[str, str]) -> None:
        self._graphs[key] = graph
        constants: dict[str, Tensor] = {}
        for t in graph.initializer:
            tensor = onnx.TensorProto()
            tensor.CopyFrom(t)
            embed_external(tensor, self.base_dir)
            constants[t.name] = to_torch(tensor)
        steps: list[_Step] = []
        for node in graph.node:
            if node.domain not in DEFAULT_DOMAINS:
                missing[f"{node.domain}::{node.op_type}"] = node.name or node.output[0]
                continue
            if node.op_type == "Constant":
                constants[node.output[0]] = _constant_value(node, self.base_dir)
                continue
            if node.op_type not in OPS and node.op_type not in CONTROL_FLOW:
                missing[node.op_type] = node.name or node.output[0]
                continue
            subgraphs: dict[str, str] = {}
            for a in node.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    sub = f"{key}/{node.name or node.op_type}.{a.name}#{len(self._graphs)}"
                    subgraphs[a.name] = sub
                    self._prepare(a.g, sub, wanted, missing)
                elif a.type == onnx.AttributeProto.GRAPHS:
                    raise UnsupportedError(f"node {node.name!r}: {node.op_type} with a list of graphs is not "
                                           "supported by the mirror")
            ctx = OpContext(node, _attributes(node) if not subgraphs else {}, self.opset, self._unset)
            steps.append(_Step(node, ctx, subgraphs))
        for name in wanted & set(constants):
            if name in self._keys or not constants[name].is_floating_point():
                continue
            key_name = f"w{len(self._keys)}_" + re.sub(r"\W", "_", name)[:40]
            self.params[key_name] = torch.nn.Parameter(constants.pop(name).float())
            self._keys[name] = key_name
            self._owned.setdefault(key, []).append(name)
        self._constants[key] = constants
        self._steps[key] = steps

    @staticmethod
    def _unset(graph: onnx.GraphProto, inputs: list[Tensor]) -> list[Tensor]:  # pragma: no cover
        raise AssertionError("subgraphs run through the interpreter")

    def weight(self, name: str) -> torch.nn.Parameter:
        """The parameter that stands for the trainable initializer `name`."""
        return self.params[self._keys[name]]

    # --- running ------------------------------------------------------------------------

    def layer_outputs(self, weights: Iterable[str]) -> list[str]:
        """The main graph's values that layers of `weights` produce: outputs of
        the nodes that read one of them (directly or through nodes that read
        only weights and constants, such as a Transpose of the weight) together
        with an activation; in graph order."""
        tuned = set(weights)
        static = tuned | set(self._constants["main"]) | set(self._keys)
        found: list[str] = []
        for step in self._steps["main"]:
            used = [n for n in step.node.input if n]
            if not used or step.subgraphs:
                continue
            if all(n in static for n in used):  # weight-only: its outputs count as weights
                static.update(o for o in step.node.output if o)
                if any(n in tuned for n in used):
                    tuned.update(o for o in step.node.output if o)
            elif any(n in tuned for n in used):
                found += [o for o in step.node.output[:1] if o]
        return found

    def forward(self, feeds: Mapping[str, Any], overrides: Mapping[str, Tensor] | None = None,
                taps: Iterable[str] = ()) -> dict[str, Tensor]:
        values: dict[str, Tensor] = {}
        for name, value in feeds.items():
            if not isinstance(value, Tensor):
                array = np.asarray(value)
                if array.dtype.kind not in "biuf":
                    raise UnsupportedError(f"input {name!r}: element type {array.dtype} is not supported by the mirror")
                value = torch.from_numpy(array if array.flags.writeable else array.copy())
            values[name] = value.to(self.device)
        absent = [n for n in self.input_names if n not in values]
        if absent:
            raise ModelError(f"the mirror needs the inputs {absent}")
        weights = {name: self.params[key] for name, key in self._keys.items()}
        if overrides:
            weights.update(overrides)
        tapped: dict[str, Tensor] = dict.fromkeys(taps)  # type: ignore[arg-type]
        # on an accelerator, the ops' own new tensors (shapes, ranges, masks) are created there too
        with self.device if self.device.type != "cpu" else contextlib.nullcontext():
            outs = self._run("main", ChainMap(values), weights, tapped)
        return dict(zip(self.output_names, outs)) | tapped

    def _run(self, key: str, scope: ChainMap, weights: Mapping[str, Tensor],
             tapped: dict[str, Tensor] | None = None) -> list[Tensor]:
        local = dict(self._constants[key])
        for name in self._owned.get(key, ()):
            local[name] = weights[name]
        for name in weights.keys() & local.keys():  # overrides of other initializers, in their dtype (fp16...)
            local[name] = weights[name].to(local[name].dtype)
        env = scope.new_child(local)
        for step in self._steps[key]:
            node = step.node
            try:
                inputs = [env[n] if n else None for n in node.input]
            except KeyError as exc:
                raise ModelError(f"node {node.name or node.op_type!r} reads {exc}, which nothing defines") from None
            if node.op_type == "If":
                branch = "then_branch" if bool(inputs[0].reshape(-1)[0]) else "else_branch"
                outs = self._run(step.subgraphs[branch], env, weights)
            elif node.op_type == "Loop":
                outs = self._loop(step, inputs, env, weights)
            else:
                try:
                    result = OPS[node.op_type](step.ctx, *inputs)
                except NotImplementedError as exc:  # torch has no kernel for this dtype
                    raise UnsupportedError(f"node {node.name or node.output[0]!r} ({node.op_type}): {exc}") from exc
                except (RuntimeError, IndexError, ValueError) as exc:  # shapes or values the op cannot take
                    raise ModelError(f"node {node.name or node.output[0]!r} ({node.op_type}) failed in the torch "
                                     f"mirror: {exc}") from exc
                outs = list(result) if isinstance(result, tuple) else [result]
                if self.device.type != "cpu":  # an op that built a tensor from an attribute (numpy) on the CPU
                    outs = [o.to(self.device) if isinstance(o, Tensor) and o.device != self.device else o
                            for o in outs]
            for name, value in zip(node.output, outs):
                if name:
                    env.maps[0][name] = value
                    if tapped is not None and name in tapped:
                        tapped[name] = value
        return [env[v.name] for v in self._graphs[key].output]

    def _loop(self, step: _Step, inputs: list[Tensor | None], env: ChainMap,
              weights: Mapping[str, Tensor]) -> list[Tensor]:
        trip, cond, *carried = inputs
        body_key = step.subgraphs["body"]
        body = self._graphs[body_key]
        n_carried = len(carried)
        scans: list[list[Tensor]] = [[] for _ in range(len(body.output) - 1 - n_carried)]
        limit = int(trip.reshape(-1)[0]) if trip is not None else None
        keep_going = bool(cond.reshape(-1)[0]) if cond is not None else True
        i = 0
        while keep_going and (limit is None or i < limit):
            local = env.new_child({})
            args = [torch.tensor(i, dtype=torch.int64),
                    torch.tensor(keep_going) if cond is not None else torch.tensor(True), *carried]
            for value_info, value in zip(body.input, args):
                local.maps[0][value_info.name] = value
            outs = self._run(body_key, local, weights)
            keep_going = bool(outs[0].reshape(-1)[0])
            carried = outs[1:1 + n_carried]
            for acc, value in zip(scans, outs[1 + n_carried:]):
                acc.append(value)
            i += 1
        stacked = [torch.stack(acc) if acc else torch.zeros(0) for acc in scans]
        return [*carried, *stacked]
