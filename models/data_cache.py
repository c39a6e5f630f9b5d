"""On-disk cache for prepared evaluation arrays (``<cache>/data/<name>.npz``).

Preparing some evaluation sets is slow (walking the filesystem, synthesising
speech, running the original OCR detector to find text boxes), so the prepared
arrays are stored once and reused. Files are written atomically and hold only
plain arrays (no pickles). Bump the version inside ``name`` when the
preparation changes.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def cache_root(cache_dir: Path | None = None) -> Path:
    """``cache_dir`` or ``$ONNX_L2C_CACHE`` or ``~/.cache/onnx_l2c``: the zoo's models,
    data and references live below it."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("ONNX_L2C_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "onnx_l2c"


def data_dir(cache_dir: Path | None = None) -> Path:
    """``<cache>/data`` (see `cache_root`)."""
    return cache_root(cache_dir) / "data"


def _atomic_savez(path: Path, arrays: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".npz.tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        tmp.chmod(0o644)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def cached_arrays(name: str, build: Callable[[], dict[str, np.ndarray]],
                  cache_dir: Path | None = None) -> dict[str, np.ndarray]:
    """Load ``<cache>/data/<name>.npz``, building and storing it first if absent."""
    path = data_dir(cache_dir) / f"{name}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except Exception as exc:  # noqa: BLE001 - a corrupt cache file is rebuilt
            log.warning("rebuilding unreadable cache file %s: %s", path, exc)
    t0 = time.perf_counter()
    arrays = build()
    _atomic_savez(path, arrays)
    log.info("prepared %s in %.1f s -> %s", name, time.perf_counter() - t0, path)
    return arrays
