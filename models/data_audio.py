"""16 kHz audio clips with and without speech for the ``silero_vad`` zoo model.

Every clip is 4.096 s (128 chunks of 512 samples) of 16 kHz mono audio:

* speech: English sentences from the Python docs (``data.sentences``, so the
  calibration/evaluation split follows theirs) spoken by Debian's ``espeak-ng``
  (voices en-us / en-gb / regional variants, male/female variants, several
  rates and pitches), or - for some clips - real recorded human speech, the
  ALSA test utterances ``/usr/share/sounds/alsa/{Front,Rear,Side}_*.wav``
  (package alsa-utils);
* non-speech: real recorded sounds from Debian's ``sound-icons`` package
  (instruments, bells, water, birds, ...), CPython's test recording
  ``test/audiodata/pluck-pcm16.wav``, and a floor of the recorded ALSA
  ``Noise.wav``; some clips are non-speech only.

Speech is mixed with the non-speech background at SNRs of 30/20/10/5/0 dB.
The splits are disjoint: different sentences, different human-speech files,
different sound-icons files, different halves of the noise recording. A clip
is fully determined by (split, index) through a hash-seeded RNG; espeak-ng's
output is deterministic for its version (1.51 in Debian 12).

Needs ``espeak-ng``, ``sound-icons`` and ``alsa-utils`` (scripts/install_system_deps.sh).
The prepared clips (int16) are cached under ``<cache>/data/``.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import shutil
import subprocess
import sysconfig
import tempfile
import warnings
from pathlib import Path

import numpy as np

from .data import SPLITS, _check_split, sentences
from .data_cache import cached_arrays

log = logging.getLogger(__name__)

CACHE_NAME = "vad_clips_v1"
SAMPLE_RATE = 16000
CHUNK = 512  # silero-vad's window at 16 kHz
CONTEXT = 64  # samples of the previous chunk silero-vad prepends at 16 kHz
CLIP_CHUNKS = 128
CLIP_SAMPLES = CHUNK * CLIP_CHUNKS  # 65536 = 4.096 s
N_CLIPS = 300  # per split

ALSA_DIR = Path("/usr/share/sounds/alsa")
ICONS_DIR = Path("/usr/share/sounds/sound-icons")
_SNRS_DB = (30.0, 20.0, 10.0, 5.0, 0.0)
_VOICES = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbclan")
_VARIANTS = ("", "+m1", "+m3", "+m7", "+f1", "+f2", "+f3", "+f4", "+klatt")


def _h(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:8], "little")


def _read_wav(path: Path) -> np.ndarray:
    """Mono float32 in [-1, 1] at 16 kHz."""
    from scipy.io import wavfile
    from scipy.signal import resample_poly

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sr, x = wavfile.read(path)
    if x.ndim == 2:
        x = x.mean(axis=1)
    if np.issubdtype(x.dtype, np.integer):
        x = x.astype(np.float64) / float(np.iinfo(x.dtype).max + 1)
    x = np.asarray(x, dtype=np.float64)
    if sr != SAMPLE_RATE:
        g = math.gcd(sr, SAMPLE_RATE)
        x = resample_poly(x, SAMPLE_RATE // g, sr // g)
    return x.astype(np.float32)


def _espeak(text: str, voice: str, rate: int, pitch: int, workdir: Path) -> np.ndarray:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError("espeak-ng not found: run scripts/install_system_deps.sh")
    out = workdir / "speech.wav"
    subprocess.run([exe, "-v", voice, "-s", str(rate), "-p", str(pitch), "-w", str(out), text],
                   check=True, capture_output=True)
    return _read_wav(out)


def _split_files(paths: list[Path], split: str) -> list[Path]:
    """Files of ``split``: alternate over a name-hash order (disjoint, each split non-empty)."""
    ordered = sorted(paths, key=lambda p: _h("file", p.name))
    return ordered[SPLITS.index(split)::2]


@functools.lru_cache(maxsize=2)
def _sources(split: str) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
    """(non-speech events, human speech utterances, noise floor) of a split."""
    if not ALSA_DIR.is_dir() or not ICONS_DIR.is_dir():
        raise RuntimeError(f"{ALSA_DIR} / {ICONS_DIR} missing: run scripts/install_system_deps.sh")
    icons = sorted(p for p in ICONS_DIR.glob("*.wav") if not p.is_symlink())
    pluck = Path(sysconfig.get_paths()["stdlib"]) / "test" / "audiodata" / "pluck-pcm16.wav"
    events = [_read_wav(p) for p in _split_files(icons + ([pluck] if pluck.is_file() else []), split)]
    human = sorted(p for p in ALSA_DIR.glob("*.wav") if p.name != "Noise.wav")
    speech = [_read_wav(p) for p in _split_files(human, split)]
    noise = _read_wav(ALSA_DIR / "Noise.wav")
    half = len(noise) // 2
    floor = noise[:half] if split == "calibration" else noise[half:]
    return events, speech, floor


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if len(x) else 0.0


def _trim(x: np.ndarray, thresh: float = 1e-3) -> np.ndarray:
    idx = np.flatnonzero(np.abs(x) > thresh)
    return x[idx[0] : idx[-1] + 1] if len(idx) else x


def _background(rng: np.random.Generator, events: list[np.ndarray], floor: np.ndarray) -> np.ndarray:
    reps = -(-CLIP_SAMPLES // len(floor)) + 1
    start = int(rng.integers(len(floor)))
    bg = np.tile(floor, reps)[start : start + CLIP_SAMPLES] * (10 ** (rng.uniform(-40, -20) / 20))
    for _ in range(int(rng.integers(2, 7))):
        ev = events[int(rng.integers(len(events)))] * (10 ** (rng.uniform(-12, 0) / 20))
        at = int(rng.integers(-len(ev) // 2, CLIP_SAMPLES))
        lo, hi = max(at, 0), min(at + len(ev), CLIP_SAMPLES)
        if hi > lo:
            bg[lo:hi] += ev[lo - at : hi - at]
    return bg.astype(np.float64)


def _clip(split: str, i: int, texts: list[str], workdir: Path) -> tuple[np.ndarray, int, float]:
    """(int16 clip, kind, snr_db); kind 0 = non-speech, 1 = espeak speech, 2 = human speech."""
    rng = np.random.default_rng(_h("vad", split, i))
    events, human, floor = _sources(split)
    bg = _background(rng, events, floor)
    r = i % 10
    kind = 0 if r in (0, 1) else 2 if r == 2 else 1
    snr = float("inf")
    x = bg
    if kind:
        if kind == 1:
            words = texts[i % len(texts)].split()[:11]
            voice = _VOICES[int(rng.integers(len(_VOICES)))] + _VARIANTS[int(rng.integers(len(_VARIANTS)))]
            sp = _trim(_espeak(" ".join(words), voice, int(rng.integers(140, 200)),
                               int(rng.integers(30, 71)), workdir))
        else:
            parts = [_trim(human[int(rng.integers(len(human)))]) for _ in range(int(rng.integers(1, 3)))]
            gap = np.zeros(int(rng.integers(1600, 8000)), np.float32)
            sp = np.concatenate([parts[0], *(np.concatenate([gap, p]) for p in parts[1:])])
        sp = sp.astype(np.float64) * (0.1 / max(_rms(sp), 1e-9))
        at = int(rng.integers(0, 20000))
        speech = np.zeros(CLIP_SAMPLES)
        n = min(len(sp), CLIP_SAMPLES - at)
        speech[at : at + n] = sp[:n]
        snr = _SNRS_DB[int(rng.integers(len(_SNRS_DB)))]
        bg = bg * (_rms(sp) / max(_rms(bg), 1e-9) / (10 ** (snr / 20)))
        x = speech + bg
    peak = float(np.max(np.abs(x)))
    x = x * (rng.uniform(0.3, 0.9) / max(peak, 1e-9))
    return np.clip(np.round(x * 32767), -32768, 32767).astype(np.int16), kind, snr


def _build() -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory(prefix="onnx_l2c_vad.") as tmp:
        for split in SPLITS:
            texts = sentences(split, n=300)
            clips, kinds, snrs = zip(*(_clip(split, i, texts, Path(tmp)) for i in range(N_CLIPS)))
            arrays[f"{split}_audio"] = np.stack(clips)
            arrays[f"{split}_kind"] = np.array(kinds, np.int8)
            arrays[f"{split}_snr_db"] = np.array(snrs, np.float32)
            log.info("vad %s: %d clips (%d non-speech)", split, len(clips), kinds.count(0))
    return arrays


@functools.lru_cache(maxsize=1)
def _arrays() -> dict[str, np.ndarray]:
    return cached_arrays(CACHE_NAME, _build)


def vad_clips(split: str) -> np.ndarray:
    """float32 [N, 65536] 16 kHz clips in [-1, 1] (N = 300)."""
    _check_split(split)
    return _arrays()[f"{split}_audio"].astype(np.float32) / 32768.0


def vad_clip_info(split: str) -> tuple[np.ndarray, np.ndarray]:
    """(kind per clip: 0 non-speech / 1 espeak speech / 2 recorded speech, SNR in dB (inf = none))."""
    _check_split(split)
    a = _arrays()
    return a[f"{split}_kind"].copy(), a[f"{split}_snr_db"].copy()


def silero_model_path() -> Path:
    """The ONNX model silero-vad's ``load_silero_vad(onnx=True)`` loads (opset 16, 8k/16k If)."""
    import silero_vad

    return Path(silero_vad.__file__).parent / "data" / "silero_vad.onnx"


def run_silero(sess, audio: np.ndarray, batch: int = 100) -> np.ndarray:  # noqa: ANN001
    """Speech probability per 512-sample chunk, float32 [N, n_chunks].

    Exactly silero-vad's ``OnnxWrapper.__call__`` loop at 16 kHz (batched over
    clips, as the wrapper supports): state zeros [2, B, 128], context zeros
    [B, 64]; each step feeds ``concat(context, chunk)`` [B, 576], the state and
    ``sr`` = 16000, keeps ``stateN`` as the next state and the last 64 input
    samples as the next context.
    """
    n, length = audio.shape
    if length % CHUNK:
        audio = np.pad(audio, ((0, 0), (0, CHUNK - length % CHUNK)))
    steps = audio.shape[1] // CHUNK
    out = np.empty((n, steps), np.float32)
    sr = np.array(SAMPLE_RATE, dtype=np.int64)
    for b0 in range(0, n, batch):
        x = np.ascontiguousarray(audio[b0 : b0 + batch], dtype=np.float32)
        bsz = len(x)
        state = np.zeros((2, bsz, 128), np.float32)
        context = np.zeros((bsz, CONTEXT), np.float32)
        for t in range(steps):
            inp = np.concatenate([context, x[:, t * CHUNK : (t + 1) * CHUNK]], axis=1)
            prob, state = sess.run(["output", "stateN"], {"input": inp, "state": state, "sr": sr})
            out[b0 : b0 + bsz, t] = prob[:, 0]
            context = inp[:, -CONTEXT:]
    return out


def _main() -> None:
    import time

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    t0 = time.perf_counter()
    for s in SPLITS:
        a = vad_clips(s)
        kind, snr = vad_clip_info(s)
        print(s, a.shape, "kinds", np.bincount(kind).tolist(), "snr", np.unique(snr).tolist())
    print(f"{time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    _main()
