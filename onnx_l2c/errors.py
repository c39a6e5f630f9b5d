"""The package's one exception type."""

from __future__ import annotations


class L2CError(Exception):
    """Any failure of onnx_l2c: bad options, bad input model, corrupt payload.

    Messages name the file and tensor involved and, for options, the valid
    choices.
    """
