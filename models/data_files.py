"""Real files of many content types for the ``magika`` zoo model.

Files come from the local filesystem: the Python installation (standard library
and site-packages, i.e. the pinned packages of models/requirements.txt) and
``/usr/share`` (Debian docs, fonts, sounds, ...). For every extension in
``EXT_LABELS`` the candidate paths are ordered by a hash of their root-relative
path; the low bit of another hash assigns each path to ``"calibration"`` or
``"evaluation"``, and each split takes the first ``PER_TYPE`` files of each
extension whose model input differs from every input already taken (so the
splits are disjoint in paths and in inputs).

Model inputs are made by magika's own Python API
(``Magika._get_result_or_features_from_seekable``: up to 4096 bytes from the
beginning (lstripped) and the end (rstripped), first/last 1024 bytes, padded
with token 256 - the settings of the ``config.min.json`` shipped with the
model); files that magika decides without the model (empty, < 8 meaningful
bytes) are skipped. Ground truth is the set of magika labels the extension
allows (``EXT_LABELS``); it is approximate (a ``.txt`` may hold anything).

The prepared arrays are cached under ``<cache>/data/`` (the file walk takes a
few seconds); which files exist depends on the machine, so the set is fixed by
the first preparation there.

The ``other`` split (``magika_other_inputs``) takes files from other places:
``/usr/include``, ``/usr/lib``, ``/usr/libexec`` and ``/etc`` (headers,
libraries, compiler and Perl/Python system files, configuration), skipping
anything below the calibration/evaluation roots and any file whose model
input equals a calibration or evaluation input; up to ``OTHER_PER_TYPE``
files per extension, chosen by path hash.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import sysconfig
from pathlib import Path

import numpy as np

from .data import SPLITS, _check_split
from .data_cache import cached_arrays

log = logging.getLogger(__name__)

CACHE_NAME = "magika_files_v1"
PER_TYPE = 10  # files per extension per split
OTHER_CACHE_NAME = "magika_other_v1"
OTHER_PER_TYPE = 20  # files per extension in the other split
OTHER_ROOTS = (("include", Path("/usr/include")), ("lib", Path("/usr/lib")), ("libexec", Path("/usr/libexec")),
               ("etc", Path("/etc")))

# extension -> magika model labels (from the model's target_labels_space) that are correct
EXT_LABELS: dict[str, tuple[str, ...]] = {
    "py": ("python",), "pyi": ("python",), "pyc": ("pythonbytecode",),
    "c": ("c",), "h": ("c", "cpp"), "cc": ("cpp",), "cpp": ("cpp",), "cxx": ("cpp",),
    "hpp": ("cpp",), "f90": ("fortran",), "f": ("fortran",), "go": ("go",), "cs": ("cs",),
    "java": ("java",), "rs": ("rust",), "rb": ("ruby",), "pl": ("perl",), "pm": ("perl",),
    "tcl": ("tcl",), "lua": ("lua",), "awk": ("awk",), "m4": ("m4",), "sh": ("shell",),
    "bat": ("batch",), "ps1": ("powershell",), "js": ("javascript",), "ts": ("typescript",),
    "sql": ("sql",), "proto": ("proto",), "cmake": ("cmake",),
    "rst": ("rst",), "md": ("markdown",), "txt": ("txt",), "tex": ("latex",),
    "html": ("html",), "htm": ("html",), "css": ("css",), "xml": ("xml",), "svg": ("svg",),
    "json": ("json",), "yaml": ("yaml",), "yml": ("yaml",), "toml": ("toml",),
    "ini": ("ini",), "cfg": ("ini",), "csv": ("csv",), "jinja": ("jinja",), "po": ("po",),
    "pem": ("pem",), "crt": ("crt", "pem"),
    "png": ("png",), "jpg": ("jpeg",), "jpeg": ("jpeg",), "gif": ("gif",), "bmp": ("bmp",),
    "tif": ("tiff",), "tiff": ("tiff",), "ico": ("ico",), "ps": ("postscript",),
    "eps": ("postscript",), "pdf": ("pdf",), "ttf": ("ttf",), "otf": ("otf",),
    "wav": ("wav",), "npy": ("npy",), "npz": ("npz",), "pickle": ("pickle",), "pkl": ("pickle",),
    "onnx": ("onnx",), "so": ("elf",), "gz": ("gzip",), "bz2": ("bzip",), "xz": ("xz",),
    "zip": ("zip",), "whl": ("zip",), "jar": ("jar",), "tar": ("tar",),
}


def _roots() -> list[tuple[str, Path]]:
    """(tag, directory) pairs searched for files; tags keep hashes machine-independent."""
    paths = sysconfig.get_paths()
    stdlib = Path(paths["stdlib"]).resolve()
    roots = [("pylib", stdlib)]
    for key in ("purelib", "platlib"):
        p = Path(paths[key]).resolve()
        if not p.is_relative_to(stdlib) and all(p != r for _, r in roots):
            roots.append((f"site-{key}", p))
    roots.append(("share", Path("/usr/share")))
    return roots


def _hash(s: str, salt: str) -> bytes:
    return hashlib.sha256(f"{salt}:{s}".encode()).digest()


def _candidates(roots: list[tuple[str, Path]] | None = None,
                exclude: tuple[Path, ...] = ()) -> dict[str, list[tuple[str, Path]]]:
    """extension -> [(root-relative key, path)] of regular files, hash-ordered
    (below `roots`, default the calibration/evaluation roots; none below `exclude`)."""
    out: dict[str, list[tuple[str, Path]]] = {e: [] for e in EXT_LABELS}
    seen_real: set[Path] = set()
    for tag, root in roots if roots is not None else _roots():
        if not root.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            if exclude and any(Path(dirpath).resolve().is_relative_to(x) for x in exclude):
                dirnames.clear()
                continue
            for fn in sorted(filenames):
                ext = fn.rsplit(".", 1)[-1].lower() if "." in fn else ""
                if ext not in out:
                    continue
                p = Path(dirpath) / fn
                if p.is_symlink() or not p.is_file():
                    continue
                if p in seen_real:
                    continue
                seen_real.add(p)
                out[ext].append((f"{tag}/{p.relative_to(root).as_posix()}", p))
    for ext in out:
        out[ext].sort(key=lambda kp: _hash(kp[0], "order"))
    return out


def _model_input(m, path: Path) -> np.ndarray | None:  # noqa: ANN001 - magika.Magika
    """magika's model input of one file (int32 [2048]), None when magika decides without the model."""
    from magika.types import Seekable

    cfg = m._model_config
    try:
        with open(path, "rb") as f:
            _, feats = m._get_result_or_features_from_seekable(Seekable(f), path)
    except OSError:
        return None
    if feats is None:  # decided without the model (empty / too few bytes)
        return None
    return np.asarray(feats.beg[: cfg.beg_size] + feats.end[-cfg.end_size :], dtype=np.int32)


def _build() -> dict[str, np.ndarray]:
    from magika import Magika

    m = Magika()
    taken: dict[str, dict[str, list]] = {s: {"x": [], "key": [], "ext": []} for s in SPLITS}
    seen_inputs: set[bytes] = set()
    counts = {s: {} for s in SPLITS}
    for ext, items in _candidates().items():
        for key, path in items:
            split = SPLITS[_hash(key, "split")[0] & 1]
            if counts[split].get(ext, 0) >= PER_TYPE:
                if all(counts[s].get(ext, 0) >= PER_TYPE for s in SPLITS):
                    break
                continue
            x = _model_input(m, path)
            if x is None:
                continue
            digest = hashlib.sha256(x.tobytes()).digest()
            if digest in seen_inputs:
                continue
            seen_inputs.add(digest)
            t = taken[split]
            t["x"].append(x)
            t["key"].append(key)
            t["ext"].append(ext)
            counts[split][ext] = counts[split].get(ext, 0) + 1
    arrays: dict[str, np.ndarray] = {}
    for s in SPLITS:
        t = taken[s]
        arrays[f"{s}_bytes"] = np.stack(t["x"]).astype(np.int32)
        arrays[f"{s}_key"] = np.array(t["key"], dtype=str)
        arrays[f"{s}_ext"] = np.array(t["ext"], dtype=str)
        log.info("magika %s: %d files, %d extensions", s, len(t["x"]), len(set(t["ext"])))
    return arrays


@functools.lru_cache(maxsize=1)
def _arrays() -> dict[str, np.ndarray]:
    return cached_arrays(CACHE_NAME, _build)


def magika_inputs(split: str) -> tuple[np.ndarray, list[str], list[str]]:
    """(int32 [N, 2048] model inputs ``bytes``, extension per file, file key per file)."""
    _check_split(split)
    a = _arrays()
    return a[f"{split}_bytes"].copy(), a[f"{split}_ext"].tolist(), a[f"{split}_key"].tolist()


def _build_other() -> dict[str, np.ndarray]:
    from magika import Magika

    m = Magika()
    zoo = {hashlib.sha256(x.tobytes()).digest() for s in SPLITS for x in magika_inputs(s)[0]}
    exclude = tuple(root.resolve() for _, root in _roots())
    xs, keys, exts = [], [], []
    for ext, items in _candidates(list(OTHER_ROOTS), exclude).items():
        n = 0
        for key, path in items:
            if n >= OTHER_PER_TYPE:
                break
            x = _model_input(m, path)
            if x is None:
                continue
            digest = hashlib.sha256(x.tobytes()).digest()
            if digest in zoo:  # the same input as a calibration/evaluation file (or an earlier pick)
                continue
            zoo.add(digest)
            xs.append(x)
            keys.append(key)
            exts.append(ext)
            n += 1
    if not xs:
        raise RuntimeError(f"no files for magika's other split under {', '.join(str(r) for _, r in OTHER_ROOTS)}")
    log.info("magika other: %d files, %d extensions", len(xs), len(set(exts)))
    return {"bytes": np.stack(xs).astype(np.int32), "key": np.array(keys, dtype=str),
            "ext": np.array(exts, dtype=str)}


@functools.lru_cache(maxsize=1)
def _other_arrays() -> dict[str, np.ndarray]:
    return cached_arrays(OTHER_CACHE_NAME, _build_other)


def magika_other_inputs() -> tuple[np.ndarray, list[str], list[str]]:
    """The ``other`` split: (int32 [N, 2048] model inputs, extension per file, file key per file)."""
    a = _other_arrays()
    return a["bytes"].copy(), a["ext"].tolist(), a["key"].tolist()


@functools.lru_cache(maxsize=1)
def magika_labels() -> tuple[str, ...]:
    """The model's output label space (index -> label), from the shipped config."""
    import json

    import magika

    cfg = Path(magika.__file__).parent / "models" / "standard_v3_3" / "config.min.json"
    return tuple(json.loads(cfg.read_text())["target_labels_space"])


def magika_model_path() -> Path:
    import magika

    return Path(magika.__file__).parent / "models" / "standard_v3_3" / "model.onnx"


def expected_labels(exts: list[str]) -> list[tuple[str, ...]]:
    """Correct labels for each file, from its extension."""
    return [EXT_LABELS[e] for e in exts]


@functools.lru_cache(maxsize=1)
def _postprocess_config() -> tuple[dict, float, dict, dict]:
    import json

    import magika

    root = Path(magika.__file__).parent
    cfg = json.loads((root / "models" / "standard_v3_3" / "config.min.json").read_text())
    kb = json.loads((root / "config" / "content_types_kb.min.json").read_text())
    is_text = {k: bool(v.get("is_text")) for k, v in kb.items()}
    return cfg["thresholds"], float(cfg["medium_confidence_threshold"]), cfg["overwrite_map"], is_text


def magika_output_labels(scores: np.ndarray) -> list[str]:
    """Labels magika reports in its default HIGH_CONFIDENCE mode
    (``Magika._get_output_label_from_dl_label_and_score``): the overwrite map, then
    a per-label score threshold below which it falls back to ``txt`` / ``unknown``."""
    thresholds, medium, overwrite, is_text = _postprocess_config()
    labels = magika_labels()
    out = []
    for row in np.asarray(scores):
        k = int(row.argmax())
        dl, score = labels[k], float(row[k])
        label = overwrite.get(dl, dl)
        if score < thresholds.get(dl, medium):
            label = "txt" if is_text.get(label, False) else "unknown"
        out.append(label)
    return out


def _main() -> None:  # python -P -m onnx_l2c.models.data_files: summary of the prepared sets
    import collections
    import time

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    t0 = time.perf_counter()
    for s in SPLITS:
        x, exts, keys = magika_inputs(s)
        print(s, x.shape, dict(sorted(collections.Counter(exts).items())))
    x, exts, _ = magika_other_inputs()
    print("other", x.shape, dict(sorted(collections.Counter(exts).items())))
    print(f"{time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    _main()
