"""Images with text for the ``ocr_det`` / ``ocr_rec`` zoo models (RapidOCR PP-OCRv4).

Images (BGR uint8, as RapidOCR's ``LoadImage`` returns them):

* real images shipped in pinned packages: scikit-image's ``text``/``page``/
  ``logo``, matplotlib's ``logo2`` and ``grace_hopper`` photo, networkx's
  labelled-graph test baselines;
* matplotlib charts (Agg) of matplotlib's sample data (stock prices, EEG, ...)
  with titles, axis labels, legends and annotations taken from real sentences;
* pages and single lines rendered with Pillow in matplotlib's bundled DejaVu /
  STIX fonts (several faces and sizes, dark-on-light and light-on-dark, plain,
  tinted and photo-texture backgrounds, small rotations); the text is English
  sentences from the Python docs (``data.sentences``, split-aware) and lines
  of Python standard-library source code.

Real images alternate between the splits; rendered images use split-specific
text (and split-specific seeds), so the splits are disjoint.

Detector inputs (``ocr_det_inputs``) follow RapidOCR 1.4.4 exactly:
``RapidOCR.preprocess`` (max side 2000 / min side 30) and
``maybe_add_letterbox`` give the image the detector sees, then the detector's
``DetPreProcess(limit_side_len=736, limit_type="min")`` resizes it (both sides
multiples of 32, short side >= 736) and normalises ``(x/255 - 0.5)/0.5`` to
float32 [1, 3, H, W].

Recognizer inputs are text crops found by running the ORIGINAL RapidOCR
pipeline (package's det model, ``sorted_boxes``, ``get_crop_img_list``, the
angle classifier) on the split's images; up to ``CROPS_PER_IMAGE`` per image,
chosen by hash among crops at most ``MAX_CROP_RATIO`` times wider than high.
``ocr_rec_batches`` batches them like ``TextRecognizer.__call__`` (sorted by
aspect ratio, 6 per batch, ``resize_norm_img`` to height 48 and the batch's
widest ratio, zero padded). ``ctc_decode`` is RapidOCR's ``CTCLabelDecode``
with the character dictionary stored in the original model's metadata.

Images and crops are cached as PNG bytes under ``<cache>/data/``.

The ``other`` split is rendered from other sources: lines of Debian's English
man pages (models/data_text.py) in the DejaVu faces of ``fonts-dejavu-extra``
the splits above do not use (Condensed, ExtraLight, oblique/italic bold...),
at sizes outside theirs (10-13 px and 45-64 px on detector images, 12-15 and
41-56 px on crops), on plain, two-colour gradient and faded photo backgrounds
(scikit-learn's and scikit-image's photos, none used by the OCR splits), with
larger rotations. ``OTHER_DET`` detector images are at most 640 px a side (the
detector scales the short side to 736, so they stay fast); ``OTHER_CROPS``
recognizer crops are rendered as single text lines (the text is known).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .data import OTHER, SPLITS, check_split, sentences
from .data_cache import cached_arrays

log = logging.getLogger(__name__)

CACHE_NAME = "ocr_v2"
N_PAGES = 80  # rendered pages per split
N_LINES = 6  # rendered single lines per split (letterboxed: large detector inputs)
N_CHARTS = 20  # matplotlib charts per split
CROPS_PER_IMAGE = 3
MAX_CROP_RATIO = 24.0  # crops wider than this x their height are not used (recognizer cost)
DET_THRESH = 0.3  # DBPostProcess thresh in rapidocr's config.yaml
REC_BATCH = 6  # rec_batch_num in rapidocr's config.yaml


def _h(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:8], "little")


def _rapidocr_dir() -> Path:
    import rapidocr_onnxruntime

    return Path(rapidocr_onnxruntime.__file__).parent


def det_model_path() -> Path:
    return _rapidocr_dir() / "models" / "ch_PP-OCRv4_det_infer.onnx"


def rec_model_path() -> Path:
    return _rapidocr_dir() / "models" / "ch_PP-OCRv4_rec_infer.onnx"


# ----------------------------------------------------------------------------- sources

def _site() -> Path:
    return Path(sysconfig.get_paths()["purelib"])


def _real_images() -> list[tuple[str, Path]]:
    site = _site()
    nx = site / "networkx" / "drawing" / "tests" / "baseline"
    mpl = site / "matplotlib" / "mpl-data" / "sample_data"
    sk = site / "skimage" / "data"
    cands = [
        ("skimage_text", sk / "text.png"), ("skimage_page", sk / "page.png"),
        ("skimage_logo", sk / "logo.png"), ("mpl_logo2", mpl / "logo2.png"),
        ("mpl_grace_hopper", mpl / "grace_hopper.jpg"),
        ("nx_labels_and_colors", nx / "test_display_labels_and_colors.png"),
        ("nx_complex", nx / "test_display_complex.png"),
        ("nx_shortest_path", nx / "test_display_shortest_path.png"),
    ]
    found = [(n, p) for n, p in cands if p.is_file()]
    missing = sorted(set(n for n, _ in cands) - set(n for n, _ in found))
    if missing:
        log.warning("real OCR images not found (skipped): %s", ", ".join(missing))
    return found


def _load_bgr(path: Path) -> np.ndarray:
    from rapidocr_onnxruntime.utils import LoadImage

    return LoadImage()(path)


def _fonts() -> list[Path]:
    ttf = _site() / "matplotlib" / "mpl-data" / "fonts" / "ttf"
    names = ["DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSerif.ttf",
             "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSansMono.ttf",
             "DejaVuSansMono-Bold.ttf", "STIXGeneral.ttf", "STIXGeneralBol.ttf"]
    fonts = [ttf / n for n in names if (ttf / n).is_file()]
    if not fonts:
        raise RuntimeError(f"no fonts found in {ttf} (matplotlib is required)")
    return fonts


@functools.lru_cache(maxsize=2)
def _code_lines(split: str) -> tuple[str, ...]:
    """Non-trivial lines of stdlib modules, modules alternating between splits."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    mods = sorted(p for p in stdlib.glob("*.py"))
    mods = sorted(mods, key=lambda p: _h("mod", p.name))[SPLITS.index(split)::2][:40]
    out = []
    for p in mods:
        for ln in p.read_text(encoding="utf-8", errors="replace").splitlines():
            s = ln.rstrip()
            if 20 <= len(s) <= 70 and s.isascii() and s.strip() and not s.strip().startswith("#"):
                out.append(s.replace("\t", "    "))
    return tuple(out)


def _textures() -> list[np.ndarray]:
    import skimage.data

    return [np.asarray(getattr(skimage.data, n)()) for n in ("brick", "grass", "gravel")]


def _background(rng: np.random.Generator, w: int, h: int, dark: bool) -> np.ndarray:
    """RGB uint8 background: plain, tinted or a faded photo texture."""
    kind = int(rng.integers(3))
    if kind == 2:
        tex = _textures()[int(rng.integers(3))]
        tex = np.stack([tex] * 3, -1) if tex.ndim == 2 else tex[..., :3]
        reps = (-(-h // tex.shape[0]), -(-w // tex.shape[1]), 1)
        tex = np.tile(tex, reps)[:h, :w].astype(np.float32)
        base = 40.0 if dark else 215.0
        img = base + (tex - tex.mean()) * rng.uniform(0.15, 0.35)
    else:
        if dark:
            col = rng.integers(0, 70, 3) if kind else np.zeros(3)
        else:
            col = rng.integers(200, 256, 3) if kind else np.full(3, 255)
        img = np.broadcast_to(col.astype(np.float32), (h, w, 3)).copy()
    return np.clip(img, 0, 255).astype(np.uint8)


def _wrap(words: list[str], font, max_w: int) -> list[str]:  # noqa: ANN001
    lines, cur = [], ""
    for w in words:
        t = f"{cur} {w}".strip()
        if cur and font.getlength(t) > max_w:
            lines.append(cur)
            cur = w
        else:
            cur = t
    if cur:
        lines.append(cur)
    return lines


def _render_page(split: str, i: int) -> np.ndarray:
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(_h("ocr-page", split, i))
    w = int(rng.integers(480, 1000))
    h = int(w * rng.uniform(0.75, 1.35))
    dark = rng.random() < 0.2
    img = Image.fromarray(_background(rng, w, h, dark))
    draw = ImageDraw.Draw(img)
    fonts = _fonts()
    code = rng.random() < 0.25
    font_path = fonts[6] if code and len(fonts) > 6 else fonts[int(rng.integers(len(fonts)))]
    size = int(rng.integers(14, 44))
    font = ImageFont.truetype(str(font_path), size)
    if dark:
        color = tuple(int(c) for c in rng.integers(190, 256, 3))
    else:
        color = tuple(int(c) for c in rng.integers(0, 90, 3))
    margin = int(rng.integers(10, 60))
    spacing = rng.uniform(1.2, 1.8)
    if code:
        pool = _code_lines(split)
        start = int(rng.integers(len(pool)))
        lines = [pool[(start + k) % len(pool)] for k in range(60)]
    else:
        pool = sentences(split, n=300)
        start = int(rng.integers(len(pool)))
        words = " ".join(pool[(start + k) % len(pool)] for k in range(30)).split()
        lines = None
    cols = 2 if rng.random() < 0.3 else 1
    gap = int(rng.integers(20, 60))
    col_w = int((w - 2 * margin - gap * (cols - 1)) / cols * rng.uniform(0.6, 1.0))
    if lines is None:
        lines = _wrap(words, font, col_w)
    k = 0
    for col in range(cols):
        x, y = margin + col * (col_w + gap), margin
        while k < len(lines) and y + size <= h - margin // 2:
            draw.text((x, y), lines[k], font=font, fill=color)
            y += int(size * spacing)
            k += 1
    if rng.random() < 0.3:
        angle = float(rng.uniform(-4, 4))
        fill = tuple(int(c) for c in np.asarray(img)[0, 0])
        img = img.rotate(angle, resample=Image.BICUBIC, expand=True, fillcolor=fill)
    return np.ascontiguousarray(np.asarray(img)[..., ::-1])  # RGB -> BGR


def _render_line(split: str, i: int) -> np.ndarray:
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(_h("ocr-line", split, i))
    fonts = _fonts()
    size = int(rng.integers(16, 40))
    font = ImageFont.truetype(str(fonts[int(rng.integers(len(fonts)))]), size)
    pool = sentences(split, n=300)
    words = pool[int(rng.integers(len(pool)))].split()
    text = " ".join(words[: int(rng.integers(3, 8))])
    pad = int(rng.integers(4, 16))
    w = int(font.getlength(text)) + 2 * pad
    h = int(size * rng.uniform(1.3, 2.0))
    dark = rng.random() < 0.2
    img = Image.fromarray(_background(rng, w, h, dark))
    color = (230, 230, 230) if dark else tuple(int(c) for c in rng.integers(0, 90, 3))
    ImageDraw.Draw(img).text((pad, (h - size) // 2), text, font=font, fill=color)
    return np.ascontiguousarray(np.asarray(img)[..., ::-1])


def _render_chart(split: str, i: int) -> np.ndarray:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import cbook

    rng = np.random.default_rng(_h("ocr-chart", split, i))
    pool = sentences(split, n=300)

    def phrase(k: int) -> str:
        words = pool[int(rng.integers(len(pool)))].rstrip(".").split()
        s = int(rng.integers(0, max(1, len(words) - k)))
        return " ".join(words[s : s + k])

    with plt.rc_context({"font.size": float(rng.uniform(9, 16)), "svg.hashsalt": "0"}):
        fig, ax = plt.subplots(figsize=(rng.uniform(5, 9), rng.uniform(3.5, 6.5)), dpi=100)
        kind = i % 3
        if kind == 0:
            with open(cbook.get_sample_data("Stocks.csv", asfileobj=False), encoding="utf-8") as f:
                rows = [ln.strip().split(",") for ln in f if ln.strip() and not ln.startswith("#")]
            cols = rows[0][1:]
            vals = np.array([[float(v) if v else np.nan for v in r[1:]] for r in rows[1:]])
            for c in sorted({int(rng.integers(len(cols))) for _ in range(int(rng.integers(2, 4)))}):
                ax.plot(vals[:, c], label=f"{cols[c]} {phrase(2)}")
            ax.legend(loc="upper left")
        elif kind == 1:
            cats = [phrase(1) for _ in range(int(rng.integers(3, 7)))]
            vals = rng.uniform(1, 10, len(cats))
            ax.bar(range(len(cats)), vals, color=plt.cm.tab10(np.arange(len(cats))))
            ax.set_xticks(range(len(cats)), cats, rotation=int(rng.choice([0, 20])))
        else:
            with cbook.get_sample_data("goog.npz") as d:
                price = d["price_data"]["adj_close"][:250]
            ax.plot(price)
            k = int(rng.integers(20, 230))
            ax.annotate(phrase(3), xy=(k, price[k]), xytext=(k, price.max()),
                        arrowprops={"arrowstyle": "->"})
        ax.set_title(phrase(int(rng.integers(3, 7))))
        ax.set_xlabel(phrase(2))
        ax.set_ylabel(phrase(2))
        fig.tight_layout()
        fig.canvas.draw()
        rgba = np.asarray(fig.canvas.buffer_rgba())
        plt.close(fig)
    return np.ascontiguousarray(rgba[..., 2::-1])  # RGBA -> BGR


def _images(split: str) -> Iterator[tuple[str, np.ndarray]]:
    real = _real_images()
    for name, path in real[SPLITS.index(split)::2]:
        yield name, _load_bgr(path)
    for i in range(N_CHARTS):
        yield f"chart{i}", _render_chart(split, i)
    for i in range(N_LINES):
        yield f"line{i}", _render_line(split, i)
    for i in range(N_PAGES):
        yield f"page{i}", _render_page(split, i)


# ----------------------------------------------------------------------------- preparation

def _png(img: np.ndarray) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def _unpng(b: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.imdecode(b, cv2.IMREAD_COLOR)


def _pack(blobs: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)
    return np.frombuffer(b"".join(blobs), np.uint8).copy(), offsets


def _unpack(buf: np.ndarray, offsets: np.ndarray) -> list[np.ndarray]:
    return [_unpng(buf[offsets[k] : offsets[k + 1]]) for k in range(len(offsets) - 1)]


def _build() -> dict[str, np.ndarray]:
    from rapidocr_onnxruntime import RapidOCR

    engine = RapidOCR()  # the package's own models and config.yaml
    arrays: dict[str, np.ndarray] = {}
    for split in SPLITS:
        det_imgs, names, crops, crop_src = [], [], [], []
        for idx, (name, img) in enumerate(_images(split)):
            img, _, _ = engine.preprocess(img)
            img, _ = engine.maybe_add_letterbox(img, {})
            det_imgs.append(_png(img))
            names.append(name)
            boxes, _ = engine.auto_text_det(img)
            if boxes is None:
                continue
            found = engine.get_crop_img_list(img, boxes)
            found, _, _ = engine.text_cls(found)
            usable = [k for k in range(len(found))
                      if found[k].shape[1] <= MAX_CROP_RATIO * found[k].shape[0]]
            order = sorted(usable, key=lambda k: _h("crop", split, name, k))
            for k in sorted(order[:CROPS_PER_IMAGE]):
                crops.append(_png(np.ascontiguousarray(found[k])))
                crop_src.append(idx)
        arrays[f"{split}_det_png"], arrays[f"{split}_det_off"] = _pack(det_imgs)
        arrays[f"{split}_det_name"] = np.array(names, dtype=str)
        arrays[f"{split}_rec_png"], arrays[f"{split}_rec_off"] = _pack(crops)
        arrays[f"{split}_rec_src"] = np.array(crop_src, np.int32)
        log.info("ocr %s: %d detector images, %d text crops", split, len(det_imgs), len(crops))
    return arrays


@functools.lru_cache(maxsize=1)
def _arrays() -> dict[str, np.ndarray]:
    return cached_arrays(CACHE_NAME, _build)


def ocr_images(split: str) -> list[np.ndarray]:
    """BGR uint8 images as the detector stage receives them (after RapidOCR.preprocess/letterbox)."""
    check_split(split)
    if split == OTHER:
        a = _other_arrays()
        return _unpack(a["det_png"], a["det_off"])
    a = _arrays()
    return _unpack(a[f"{split}_det_png"], a[f"{split}_det_off"])


def ocr_image_names(split: str) -> list[str]:
    check_split(split)
    if split == OTHER:
        return [f"other{i}" for i in range(len(_other_arrays()["det_off"]) - 1)]
    return _arrays()[f"{split}_det_name"].tolist()


def render_page(split: str, i: int) -> np.ndarray:
    """Rendered page ``i`` of ``split`` (BGR uint8), as used in the OCR sets."""
    return _render_page(split, i)


def det_input(bgr: np.ndarray) -> np.ndarray:
    """One BGR image -> detector input float32 [1, 3, H, W], as RapidOCR prepares it."""
    from rapidocr_onnxruntime.ch_ppocr_det.utils import DetPreProcess
    from rapidocr_onnxruntime.main import RapidOCR

    img, _, _ = RapidOCR.preprocess(_PreprocessCfg(), bgr)
    img, _ = RapidOCR.maybe_add_letterbox(_PreprocessCfg(), img, {})
    return DetPreProcess(limit_side_len=736, limit_type="min", mean=[0.5] * 3, std=[0.5] * 3)(img)


class _PreprocessCfg:  # RapidOCR's Global settings from its config.yaml, for its methods
    max_side_len = 2000
    min_side_len = 30
    min_height = 30
    width_height_ratio = 8

    def _get_padding_h(self, h: int, w: int) -> int:
        from rapidocr_onnxruntime.main import RapidOCR

        return RapidOCR._get_padding_h(self, h, w)


def ocr_det_inputs(split: str) -> list[np.ndarray]:
    """float32 [1, 3, H, W] detector inputs, one per image (H, W multiples of 32, min side >= 736)."""
    from rapidocr_onnxruntime.ch_ppocr_det.utils import DetPreProcess

    pre = DetPreProcess(limit_side_len=736, limit_type="min", mean=[0.5] * 3, std=[0.5] * 3)
    return [pre(img) for img in ocr_images(split)]


def ocr_crops(split: str) -> list[np.ndarray]:
    """BGR uint8 text crops found by the original RapidOCR pipeline (``other``: rendered lines)."""
    check_split(split)
    if split == OTHER:
        a = _other_arrays()
        return _unpack(a["rec_png"], a["rec_off"])
    a = _arrays()
    return _unpack(a[f"{split}_rec_png"], a[f"{split}_rec_off"])


def ocr_other_texts() -> list[str]:
    """The text rendered on each crop of the ``other`` split (ground truth)."""
    return _other_arrays()["rec_text"].tolist()


class _RecShape:
    rec_image_shape = [3, 48, 320]


def ocr_rec_batches(split: str) -> tuple[list[np.ndarray], np.ndarray]:
    """(float32 [b, 3, 48, W] batches, crop index of each batch row), as TextRecognizer batches."""
    from rapidocr_onnxruntime.ch_ppocr_rec.text_recognize import TextRecognizer

    crops = ocr_crops(split)
    ratios = np.array([c.shape[1] / float(c.shape[0]) for c in crops])
    indices = np.argsort(ratios)  # same call as TextRecognizer.__call__
    shape = _RecShape()
    _, img_h, img_w = shape.rec_image_shape
    batches = []
    for b0 in range(0, len(crops), REC_BATCH):
        idx = indices[b0 : b0 + REC_BATCH]
        max_wh_ratio = max([img_w / img_h] + [crops[k].shape[1] * 1.0 / crops[k].shape[0] for k in idx])
        norm = [TextRecognizer.resize_norm_img(shape, crops[k], max_wh_ratio)[np.newaxis] for k in idx]
        batches.append(np.concatenate(norm).astype(np.float32))
    return batches, indices.astype(np.int64)


def render_text_line(text: str, size: int = 32) -> np.ndarray:
    """``text`` in black DejaVu Sans on white, as a recognizer input float32 [1, 3, 48, W]."""
    from PIL import Image, ImageDraw, ImageFont
    from rapidocr_onnxruntime.ch_ppocr_rec.text_recognize import TextRecognizer

    font = ImageFont.truetype(str(_fonts()[0]), size)
    w, h = int(font.getlength(text)) + 16, int(size * 1.5)
    img = Image.new("RGB", (w, h), (255, 255, 255))
    ImageDraw.Draw(img).text((8, (h - size) // 2), text, font=font, fill=(0, 0, 0))
    bgr = np.ascontiguousarray(np.asarray(img)[..., ::-1])
    ratio = max(_RecShape.rec_image_shape[2] / 48, w / h)
    return TextRecognizer.resize_norm_img(_RecShape(), bgr, ratio)[np.newaxis].astype(np.float32)


@functools.lru_cache(maxsize=1)
def _ctc():  # noqa: ANN202 - rapidocr CTCLabelDecode
    import onnx
    from rapidocr_onnxruntime.ch_ppocr_rec.utils import CTCLabelDecode

    model = onnx.load(str(rec_model_path()), load_external_data=False)
    meta = {p.key: p.value for p in model.metadata_props}
    return CTCLabelDecode(character=meta["character"].splitlines())


def ctc_decode(preds: np.ndarray) -> list[tuple[str, float]]:
    """RapidOCR's CTC decoding of recognizer output [b, T, 6625] -> [(text, mean confidence)]."""
    return _ctc()(preds)


# ----------------------------------------------------------------------------- the other split

OTHER_CACHE_NAME = "ocr_other_v1"
OTHER_DET = 200
OTHER_CROPS = 400
OTHER_MAX_SIDE = 640
_OTHER_FACES = ("DejaVuSansCondensed.ttf", "DejaVuSansCondensed-Bold.ttf", "DejaVuSansCondensed-Oblique.ttf",
                "DejaVuSansCondensed-BoldOblique.ttf", "DejaVuSans-ExtraLight.ttf", "DejaVuSans-BoldOblique.ttf",
                "DejaVuSerifCondensed.ttf", "DejaVuSerifCondensed-Bold.ttf", "DejaVuSerifCondensed-Italic.ttf",
                "DejaVuSerif-BoldItalic.ttf", "DejaVuSansMono-Oblique.ttf", "DejaVuSansMono-BoldOblique.ttf")
DEJAVU_DIR = Path("/usr/share/fonts/truetype/dejavu")


@functools.lru_cache(maxsize=1)
def _other_fonts() -> tuple[Path, ...]:
    fonts = tuple(DEJAVU_DIR / n for n in _OTHER_FACES if (DEJAVU_DIR / n).is_file())
    if len(fonts) < len(_OTHER_FACES):
        missing = sorted(set(_OTHER_FACES) - {f.name for f in fonts})
        raise RuntimeError(f"DejaVu faces missing in {DEJAVU_DIR}: {', '.join(missing)} "
                           "(fonts-dejavu-extra: run scripts/install_system_deps.sh)")
    return fonts


@functools.lru_cache(maxsize=1)
def _other_photos() -> tuple[np.ndarray, ...]:
    """RGB uint8 photos for backgrounds (none of them used by the OCR splits)."""
    import skimage.data
    from sklearn.datasets import load_sample_image

    photos = [load_sample_image("china.jpg"), load_sample_image("flower.jpg")]
    photos += [np.asarray(getattr(skimage.data, n)())[..., :3] for n in ("coffee", "chelsea", "astronaut", "rocket")]
    return tuple(photos)


@functools.lru_cache(maxsize=1)
def _other_lines() -> tuple[str, ...]:
    from .data_text import man_lines

    lines = man_lines(min_chars=12, max_chars=60)
    return tuple(sorted(lines, key=lambda ln: _h("ocr-other-line", ln)))


def _other_background(rng: np.random.Generator, w: int, h: int) -> tuple[np.ndarray, bool]:
    """(RGB uint8 background, whether it is dark): plain, a two-colour gradient or a faded photo."""
    kind = int(rng.integers(3))
    dark = rng.random() < 0.3
    if kind == 0:
        col = rng.integers(0, 60, 3) if dark else rng.integers(205, 256, 3)
        img = np.broadcast_to(col.astype(np.float32), (h, w, 3)).copy()
    elif kind == 1:
        lo, hi = (0, 90) if dark else (170, 256)
        a, b = rng.integers(lo, hi, 3).astype(np.float32), rng.integers(lo, hi, 3).astype(np.float32)
        angle = rng.uniform(0, np.pi)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        t = xx * np.cos(angle) + yy * np.sin(angle)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
        img = a + (b - a) * t[..., None]
    else:
        from skimage.transform import resize

        photo = _other_photos()[int(rng.integers(len(_other_photos())))]
        ph, pw = photo.shape[:2]
        scale = rng.uniform(max(h / ph, w / pw), max(h / ph, w / pw) * 2.0)
        ch, cw = min(ph, int(np.ceil(h / scale))), min(pw, int(np.ceil(w / scale)))
        top, left = int(rng.integers(0, ph - ch + 1)), int(rng.integers(0, pw - cw + 1))
        crop = resize(photo[top : top + ch, left : left + cw].astype(np.float32), (h, w), order=1,
                      preserve_range=True, anti_aliasing=True)
        fade = rng.uniform(0.35, 0.7)  # how far toward the base colour, so text stays readable
        img = crop * (1 - fade) + (20.0 if dark else 235.0) * fade
    return np.clip(img, 0, 255).astype(np.uint8), dark


def _text_colour(rng: np.random.Generator, dark: bool) -> tuple[int, int, int]:
    lo, hi = (200, 256) if dark else (0, 70)
    return tuple(int(c) for c in rng.integers(lo, hi, 3))


def _other_size(rng: np.random.Generator, small: tuple[int, int], large: tuple[int, int]) -> int:
    lo, hi = small if rng.random() < 0.5 else large
    return int(rng.integers(lo, hi + 1))


def _render_other_det(i: int) -> np.ndarray:
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(_h("ocr-other-det", i))
    w, h = int(rng.integers(320, OTHER_MAX_SIDE + 1)), int(rng.integers(240, OTHER_MAX_SIDE + 1))
    bg, dark = _other_background(rng, w, h)
    img = Image.fromarray(bg)
    draw = ImageDraw.Draw(img)
    fonts, lines = _other_fonts(), _other_lines()
    start = int(rng.integers(len(lines)))
    k = 0
    y = int(rng.integers(4, max(5, h // 3)))
    for _ in range(int(rng.integers(1, 4))):  # text blocks one below the other, each its own face, size, colour
        size = _other_size(rng, (10, 13), (45, 64))
        font = ImageFont.truetype(str(fonts[int(rng.integers(len(fonts)))]), size)
        colour = _text_colour(rng, dark)
        x = int(rng.integers(4, max(5, w // 3)))
        step = int(size * rng.uniform(1.25, 2.0))
        for _ in range(int(rng.integers(1, 12))):
            if y + size > h - 2:
                break
            text = lines[(start + k) % len(lines)]
            k += 1
            while text and x + font.getlength(text) > w - 2:  # cut the line at a word to fit
                text = text.rsplit(" ", 1)[0] if " " in text else ""
            if text:
                draw.text((x, y), text, font=font, fill=colour)
            y += step
        y += int(rng.integers(0, 40))
    if rng.random() < 0.3:  # larger rotations than the splits' +-4 degrees
        angle = float(rng.uniform(5, 15) * rng.choice([-1, 1]))
        fill = tuple(int(c) for c in np.asarray(img)[0, 0])
        img = img.rotate(angle, resample=Image.BICUBIC, expand=True, fillcolor=fill)
        if max(img.size) > OTHER_MAX_SIDE:
            f = OTHER_MAX_SIDE / max(img.size)
            img = img.resize((max(1, round(img.size[0] * f)), max(1, round(img.size[1] * f))), Image.BICUBIC)
    return np.ascontiguousarray(np.asarray(img)[..., ::-1])  # RGB -> BGR


def _render_other_crop(i: int) -> tuple[np.ndarray, str]:
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(_h("ocr-other-crop", i))
    fonts, lines = _other_fonts(), _other_lines()
    words = lines[(i * 7919) % len(lines)].split()  # crops read other lines than the detector images' start
    n = int(rng.integers(2, 8))
    s0 = int(rng.integers(0, max(1, len(words) - n + 1)))
    text = " ".join(words[s0 : s0 + n])[:48].strip()
    size = _other_size(rng, (12, 15), (41, 56))
    font = ImageFont.truetype(str(fonts[int(rng.integers(len(fonts)))]), size)
    x0, y0, x1, y1 = font.getbbox(text)
    px, py = int(rng.integers(2, 11)), int(rng.integers(2, max(3, int(size * 0.35))))
    w, h = x1 - x0 + 2 * px, y1 - y0 + 2 * py
    bg, dark = _other_background(rng, w, h)
    img = Image.fromarray(bg)
    ImageDraw.Draw(img).text((px - x0, py - y0), text, font=font, fill=_text_colour(rng, dark))
    if rng.random() < 0.4:
        fill = tuple(int(c) for c in np.asarray(img)[0, 0])
        img = img.rotate(float(rng.uniform(-2, 2)), resample=Image.BICUBIC, expand=False, fillcolor=fill)
    return np.ascontiguousarray(np.asarray(img)[..., ::-1]), text


def _build_other() -> dict[str, np.ndarray]:
    from rapidocr_onnxruntime.main import RapidOCR

    det = []
    for i in range(OTHER_DET):  # as RapidOCR prepares an image for its detector (what ocr_images holds)
        img, _, _ = RapidOCR.preprocess(_PreprocessCfg(), _render_other_det(i))
        img, _ = RapidOCR.maybe_add_letterbox(_PreprocessCfg(), img, {})
        det.append(_png(img))
    crops, texts = zip(*(_render_other_crop(i) for i in range(OTHER_CROPS)))
    arrays: dict[str, np.ndarray] = {}
    arrays["det_png"], arrays["det_off"] = _pack(det)
    arrays["rec_png"], arrays["rec_off"] = _pack([_png(c) for c in crops])
    arrays["rec_text"] = np.array(texts, dtype=str)
    log.info("ocr other: %d detector images, %d text crops", len(det), len(crops))
    return arrays


@functools.lru_cache(maxsize=1)
def _other_arrays() -> dict[str, np.ndarray]:
    return cached_arrays(OTHER_CACHE_NAME, _build_other)


def _main() -> None:
    import time

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    t0 = time.perf_counter()
    for s in (*SPLITS, OTHER):
        imgs = ocr_images(s)
        crops = ocr_crops(s)
        sizes = np.array([i.shape[:2] for i in imgs])
        print(s, len(imgs), "images, sizes min", sizes.min(0).tolist(), "max", sizes.max(0).tolist(),
              len(crops), "crops")
    print(f"{time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    _main()
