"""A differentiable mirror of an ONNX graph in torch, for the joint optimizer.

`Mirror(model, base_dir)` evaluates the graph node by node with torch ops
(eager, so If and Loop take their data-dependent branches), with chosen
initializers replaced by tensors the caller passes (the joint optimizer's
fake-quantized weights, which carry gradients). Why a small interpreter
instead of a converter from the field: onnx2torch 1.5.15 and onnx2pytorch
0.6.0 each convert one of the six zoo models (they fail on GreaterOrEqual,
GlobalMaxPool, If, LSTM and weights held in Constant nodes); walking the
graph needs one function per op and nothing per model, weights in Constant
nodes and subgraphs are just values, and a missing op is one clear error
(`UnsupportedError` naming it) that the planner turns into a post-training
fallback.

torch is an optional dependency: importing this package without it raises
`UnsupportedError` naming the install command.
"""

from __future__ import annotations

import importlib.util

from onnx_l2c.errors import UnsupportedError

if importlib.util.find_spec("torch") is None:  # pragma: no cover - exercised without torch only
    raise UnsupportedError('the joint optimizer needs torch: pip install "onnx-l2c[torch]" '
                           "(CPU only: pip install torch --index-url https://download.pytorch.org/whl/cpu)")

from onnx_l2c.mirror.graph import Mirror, supported_ops

__all__ = ["Mirror", "supported_ops"]
