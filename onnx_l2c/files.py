"""Atomic output files: everything is written to temporary names in the
destination folder and renamed into place only when the whole run succeeded."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO

from onnx_l2c.errors import L2CError
from onnx_l2c.codec import PAYLOAD_ALIGN


class AtomicOutputs:
    """Temporary files that become their final paths on `commit()`.

    Use as a context manager: leaving the block without commit() (an
    exception) deletes every temporary file, so a failed run leaves nothing.
    """

    def __init__(self) -> None:
        self._pending: list[tuple[Path, Path]] = []

    def temp_for(self, final: Path) -> Path:
        final = Path(final)
        if not final.parent.is_dir():
            raise L2CError(f"{final}: output folder {final.parent} does not exist")
        fd, name = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp")
        os.close(fd)
        self._pending.append((Path(name), final))
        return Path(name)

    def commit(self) -> None:
        # Side files first, the model last: a reader never sees a model whose
        # sidecar is missing.
        for temp, final in reversed(self._pending):
            os.replace(temp, final)
        self._pending.clear()

    def __enter__(self) -> "AtomicOutputs":
        return self

    def __exit__(self, *exc: object) -> None:
        for temp, _ in self._pending:
            temp.unlink(missing_ok=True)
        self._pending.clear()


class AlignedWriter:
    """Writes blobs back to back at PAYLOAD_ALIGN-aligned offsets."""

    def __init__(self, fh: BinaryIO) -> None:
        self._fh = fh
        self.size = 0

    def add(self, data: bytes | memoryview) -> tuple[int, int]:
        pad = -self.size % PAYLOAD_ALIGN
        if pad:
            self._fh.write(b"\0" * pad)
            self.size += pad
        offset = self.size
        self._fh.write(data)
        self.size += len(data)
        return offset, len(data)
