from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def pytest_configure(config: pytest.Config) -> None:
    import onnx_l2c

    source = Path(__file__).resolve().parent.parent / "onnx_l2c"
    if Path(onnx_l2c.__file__).absolute().parent == source and not (source / "lib").is_dir():
        raise pytest.UsageError("tests must import the installed onnx_l2c: run `pip install .` and then "
                                "`pytest` (not `python -m pytest`, which imports the source folder)")
