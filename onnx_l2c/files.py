"""Atomic output files: everything is written to temporary names in the
destination folder and renamed into place only when the whole run succeeded."""

from __future__ import annotations

import glob
import os
import tempfile
from pathlib import Path
from typing import BinaryIO

from onnx_l2c.errors import FileError
from onnx_l2c.codec import PAYLOAD_ALIGN


_TEMP_SUFFIX = ".tmp"


def _temp_marker(final: Path) -> str:
    """Temporary names are MARKER + the writer's pid + "." + random + ".tmp":
    the pid lets a later run tell a dead run's leftovers from a live run's files."""
    return f".{final.name}.l2c-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temps(final: Path) -> list[Path]:
    """Delete the temporary files that a killed run left for `final` (those
    whose writer process no longer exists). Returns what was removed."""
    removed = []
    marker = _temp_marker(final)
    for path in final.parent.glob(f"{glob.escape(marker)}*{_TEMP_SUFFIX}"):
        pid_text = path.name[len(marker):].split(".", 1)[0]
        if pid_text.isdigit() and int(pid_text) != os.getpid() and not _alive(int(pid_text)):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _file_mode() -> int:
    """The mode a plain open() would give a new file: 0o666 less the umask."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # no /proc: read it by setting it (and put it back)
    os.umask(mask)
    return 0o666 & ~mask


class AtomicOutputs:
    """Temporary files that become their final paths on `commit()`.

    Use as a context manager: leaving the block without commit() (an
    exception) deletes every temporary file, so a failed run leaves nothing;
    the leftovers of a killed run are removed by the next run that writes
    the same file. `commit()` renames in the order the temporary files were
    asked for: ask for side files (the sidecar) before the file that
    references them (the graph), so a reader never sees a new graph with a
    missing or old sidecar. The files get the mode a normal write would
    (0o666 less the umask), and their data is flushed to disk before the
    renames.
    """

    def __init__(self) -> None:
        self._pending: list[tuple[Path, Path]] = []

    def temp_for(self, final: Path) -> Path:
        final = Path(final)
        if not final.parent.is_dir():
            raise FileError(f"{final}: output folder {final.parent} does not exist")
        remove_stale_temps(final)
        fd, name = tempfile.mkstemp(dir=final.parent, prefix=f"{_temp_marker(final)}{os.getpid()}.",
                                   suffix=_TEMP_SUFFIX)
        os.close(fd)
        self._pending.append((Path(name), final))
        return Path(name)

    def commit(self) -> None:
        mode = _file_mode()
        for temp, _ in self._pending:
            os.chmod(temp, mode)
            with open(temp, "rb+") as fh:
                os.fsync(fh.fileno())
        for temp, final in self._pending:  # side files first (see the class doc)
            os.replace(temp, final)
        folders = {final.parent for _, final in self._pending}
        self._pending.clear()
        for folder in folders:  # the renames themselves
            try:
                fd = os.open(folder, os.O_RDONLY)
            except OSError:
                continue  # e.g. a platform without directory handles
            try:
                os.fsync(fd)
            except OSError:
                pass
            finally:
                os.close(fd)

    def discard(self) -> None:
        """Delete the temporary files not yet committed (none after `commit()`)."""
        for temp, _ in self._pending:
            temp.unlink(missing_ok=True)
        self._pending.clear()

    def __enter__(self) -> "AtomicOutputs":
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()


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
