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

The ``other`` split (``vad_other_clips``) uses none of those sources' files,
voices or settings:

* 8 kHz clips (silero's other sample rate: 256-sample chunks, 32 samples of
  context), 128 chunks each: recorded human speech, the Asterisk prompts of
  Debian's ``asterisk-core-sounds-en-wav`` (one speaker), over recorded music
  (``asterisk-moh-opsound-wav``) and seeded coloured noise; non-speech clips
  are music, noise and the package's recorded tones and monkey calls;
  some clips carry speech from ``flite`` and ``espeak-ng`` voices resampled to 8 kHz;
* 16 kHz clips: ``flite`` voices (kal, awb, rms, slt), ``espeak-ng`` voices
  and variants the other splits do not use (other accents and languages, other
  rates and pitches), and the Asterisk prompts, over music and coloured noise.

The spoken text is man-page sentences (models/data_text.py); the SNRs
(25/15/8/3/-3 dB) differ from the splits'. Needs ``flite`` and the two
Asterisk packages (scripts/install_system_deps.sh).
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
    return _read_wav_at(path, SAMPLE_RATE)


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


def run_silero(sess, audio: np.ndarray, batch: int = 100, sample_rate: int = SAMPLE_RATE) -> np.ndarray:  # noqa: ANN001
    """Speech probability per chunk, float32 [N, n_chunks].

    Exactly silero-vad's ``OnnxWrapper.__call__`` loop (batched over clips, as
    the wrapper supports): at 16 kHz chunks of 512 samples with 64 samples of
    context, at 8 kHz 256 and 32. State zeros [2, B, 128], context zeros; each
    step feeds ``concat(context, chunk)``, the state and ``sr``, keeps
    ``stateN`` as the next state and the last context-many input samples as
    the next context.
    """
    if sample_rate not in (SAMPLE_RATE, SAMPLE_RATE_8K):
        raise ValueError(f"silero-vad takes 16000 or 8000 Hz, got {sample_rate}")
    chunk, context_size = (CHUNK, CONTEXT) if sample_rate == SAMPLE_RATE else (CHUNK_8K, CONTEXT_8K)
    n, length = audio.shape
    if length % chunk:
        audio = np.pad(audio, ((0, 0), (0, chunk - length % chunk)))
    steps = audio.shape[1] // chunk
    out = np.empty((n, steps), np.float32)
    sr = np.array(sample_rate, dtype=np.int64)
    for b0 in range(0, n, batch):
        x = np.ascontiguousarray(audio[b0 : b0 + batch], dtype=np.float32)
        bsz = len(x)
        state = np.zeros((2, bsz, 128), np.float32)
        context = np.zeros((bsz, context_size), np.float32)
        for t in range(steps):
            inp = np.concatenate([context, x[:, t * chunk : (t + 1) * chunk]], axis=1)
            prob, state = sess.run(["output", "stateN"], {"input": inp, "state": state, "sr": sr})
            out[b0 : b0 + bsz, t] = prob[:, 0]
            context = inp[:, -context_size:]
    return out


# ----------------------------------------------------------------------------- the other split

OTHER_CACHE_NAME = "vad_other_v1"
SAMPLE_RATE_8K = 8000
CHUNK_8K = 256  # silero-vad's window at 8 kHz
CONTEXT_8K = 32
CLIP_SAMPLES_8K = CHUNK_8K * CLIP_CHUNKS  # 32768 = 4.096 s
N_OTHER_8K = 200
N_OTHER_16K = 100
ASTERISK_SOUNDS = Path("/usr/share/asterisk/sounds/en_US_f_Allison")
ASTERISK_MOH = Path("/usr/share/asterisk/moh")
# recorded prompts that are not speech: tones and monkey calls (non-speech events)
_NOT_SPEECH = ("ascending-2tone.wav", "descending-2tone.wav", "beep.wav", "beeperr.wav", "confbridge-join.wav",
               "confbridge-leave.wav", "tt-monkeys.wav")
_OTHER_SNRS_DB = (25.0, 15.0, 8.0, 3.0, -3.0)
_FLITE_VOICES = ("kal", "kal16", "awb", "rms", "slt")
# espeak-ng voices and variants none of the splits use (their _VOICES/_VARIANTS)
_OTHER_ESPEAK = ("en-gb-x-gbcwmd", "en-us-nyc", "de", "fr", "es", "it", "pl", "nl", "pt", "sv")
_OTHER_ESPEAK_VARIANTS = ("+m2", "+m4", "+m5", "+m6", "+f5", "+Andy", "+belinda", "+grandma", "+iven", "+max",
                          "+michel", "+paul", "+klatt2", "+klatt4")


def _read_wav_at(path: Path, rate: int) -> np.ndarray:
    """Mono float32 in [-1, 1] at `rate` (resampled with a polyphase filter when needed)."""
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
    if sr != rate:
        g = math.gcd(sr, rate)
        x = resample_poly(x, rate // g, sr // g)
    return x.astype(np.float32)


def _resample(x: np.ndarray, src: int, dst: int) -> np.ndarray:
    from scipy.signal import resample_poly

    if src == dst:
        return x
    g = math.gcd(src, dst)
    return resample_poly(x.astype(np.float64), dst // g, src // g).astype(np.float32)


@functools.lru_cache(maxsize=1)
def _asterisk() -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """(speech prompts, non-speech prompts, music tracks), 8 kHz float32, in sorted file order."""
    if not ASTERISK_SOUNDS.is_dir() or not ASTERISK_MOH.is_dir():
        raise RuntimeError(f"{ASTERISK_SOUNDS} / {ASTERISK_MOH} missing: run scripts/install_system_deps.sh")
    files = sorted(p for p in ASTERISK_SOUNDS.rglob("*.wav") if p.parent.name != "silence" and not p.is_symlink())
    speech = [_read_wav_at(p, SAMPLE_RATE_8K) for p in files if p.name not in _NOT_SPEECH]
    events = [_read_wav_at(p, SAMPLE_RATE_8K) for p in files if p.name in _NOT_SPEECH]
    music = [_read_wav_at(p, SAMPLE_RATE_8K) for p in sorted(ASTERISK_MOH.glob("*.wav"))]
    return speech, events, music


@functools.lru_cache(maxsize=1)
def _other_texts() -> tuple[str, ...]:
    """Short man-page sentences (at most 14 words) for the synthesisers, hash-ordered."""
    from .data_text import document_sentences, man_documents

    texts = {s for _, s in document_sentences(man_documents()) if len(s.split()) <= 14}
    return tuple(sorted(texts, key=lambda t: _h("vad-other-text", t)))


def _flite(text: str, voice: str, stretch: float, workdir: Path) -> tuple[np.ndarray, int]:
    exe = shutil.which("flite")
    if exe is None:
        raise RuntimeError("flite not found: run scripts/install_system_deps.sh")
    out = workdir / "flite.wav"
    subprocess.run([exe, "-voice", voice, "--setf", f"duration_stretch={stretch:.3f}", "-o", str(out), text],
                   check=True, capture_output=True)
    rate = 8000 if voice == "kal" else SAMPLE_RATE
    return _read_wav_at(out, rate), rate


def _coloured_noise(rng: np.random.Generator, n: int) -> np.ndarray:
    """White, pink or brown noise (or mains hum with harmonics) of unit RMS."""
    kind = int(rng.integers(4))
    if kind == 3:
        t = np.arange(n) / SAMPLE_RATE_8K
        f0 = float(rng.choice([50.0, 60.0]))
        x = sum(np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 2 * np.pi)) / k for k in range(1, 6))
        x = x + 0.05 * rng.standard_normal(n)
    else:
        spec = np.fft.rfft(rng.standard_normal(n))
        f = np.maximum(np.arange(len(spec)), 1.0)
        spec = spec / f ** (kind / 2)  # 0 white, 1 pink, 2 brown
        x = np.fft.irfft(spec, n)
    return (x / max(_rms(x), 1e-12)).astype(np.float64)


def _other_background(rng: np.random.Generator, n: int, rate: int, music: list[np.ndarray],
                      events: list[np.ndarray]) -> np.ndarray:
    """Music, coloured noise, or both, with some recorded non-speech events, at `rate`."""
    choice = int(rng.integers(3))
    bg = np.zeros(n)
    if choice in (0, 2):
        track = music[int(rng.integers(len(music)))]
        need = -(-n * SAMPLE_RATE_8K // rate) + 1
        start = int(rng.integers(0, max(1, len(track) - need)))
        seg = _resample(track[start : start + need], SAMPLE_RATE_8K, rate)[:n]
        bg[: len(seg)] += seg / max(_rms(seg), 1e-9) * 10 ** (rng.uniform(-20, 0) / 20)
    if choice in (1, 2):
        noise = _coloured_noise(rng, -(-n * SAMPLE_RATE_8K // rate))
        bg += _resample(noise.astype(np.float32), SAMPLE_RATE_8K, rate)[:n] * 10 ** (rng.uniform(-30, -6) / 20)
    for _ in range(int(rng.integers(0, 3))):
        ev = _resample(events[int(rng.integers(len(events)))], SAMPLE_RATE_8K, rate)
        ev = ev / max(float(np.max(np.abs(ev))), 1e-9) * 10 ** (rng.uniform(-18, -3) / 20)
        at = int(rng.integers(-len(ev) // 2, n))
        lo, hi = max(at, 0), min(at + len(ev), n)
        if hi > lo:
            bg[lo:hi] += ev[lo - at : hi - at]
    return bg


def _other_speech(rng: np.random.Generator, kind: str, rate: int, i: int, workdir: Path) -> np.ndarray:
    speech, _, _ = _asterisk()
    texts = _other_texts()
    if kind == "prompt":
        parts = [_trim(speech[int(rng.integers(len(speech)))]) for _ in range(int(rng.integers(1, 4)))]
        gap = np.zeros(int(rng.integers(SAMPLE_RATE_8K // 10, SAMPLE_RATE_8K // 2)), np.float32)
        sp = np.concatenate([parts[0], *(np.concatenate([gap, p]) for p in parts[1:])])
        return _resample(sp, SAMPLE_RATE_8K, rate)
    text = texts[(i * 104729 + rate) % len(texts)]
    if kind == "flite":
        voice = _FLITE_VOICES[int(rng.integers(len(_FLITE_VOICES)))]
        sp, sr = _flite(text, voice, float(rng.uniform(0.75, 1.45)), workdir)
        return _resample(_trim(sp), sr, rate)
    voice = _OTHER_ESPEAK[int(rng.integers(len(_OTHER_ESPEAK)))]
    voice += _OTHER_ESPEAK_VARIANTS[int(rng.integers(len(_OTHER_ESPEAK_VARIANTS)))]
    speed = int(rng.integers(100, 140)) if rng.random() < 0.5 else int(rng.integers(201, 261))
    pitch = int(rng.integers(10, 30)) if rng.random() < 0.5 else int(rng.integers(72, 96))
    return _resample(_trim(_espeak(text, voice, speed, pitch, workdir)), SAMPLE_RATE, rate)


# clip kind by index mod 10, per sample rate: 8 kHz mostly recorded speech, 16 kHz mostly other voices
_OTHER_PLAN = {SAMPLE_RATE_8K: ("none", "none", "none", "prompt", "prompt", "prompt", "prompt", "prompt", "flite",
                                "espeak"),
               SAMPLE_RATE: ("none", "none", "flite", "flite", "flite", "flite", "espeak", "espeak", "espeak",
                             "prompt")}
OTHER_KINDS = ("none", "prompt", "flite", "espeak")  # kind codes stored per clip


def _other_clip(rate: int, i: int, workdir: Path) -> tuple[np.ndarray, int, float]:
    """(int16 clip, kind code, snr_db) of the other split."""
    rng = np.random.default_rng(_h("vad-other", rate, i))
    _, events, music = _asterisk()
    n = CLIP_SAMPLES_8K if rate == SAMPLE_RATE_8K else CLIP_SAMPLES
    bg = _other_background(rng, n, rate, music, events)
    kind = _OTHER_PLAN[rate][i % 10]
    snr = float("inf")
    x = bg
    if kind != "none":
        sp = _other_speech(rng, kind, rate, i, workdir).astype(np.float64)
        sp = sp * (0.1 / max(_rms(sp), 1e-9))
        at = int(rng.integers(0, n // 3))
        speech = np.zeros(n)
        m = min(len(sp), n - at)
        speech[at : at + m] = sp[:m]
        snr = _OTHER_SNRS_DB[int(rng.integers(len(_OTHER_SNRS_DB)))]
        bg = bg * (_rms(sp) / max(_rms(bg), 1e-9) / (10 ** (snr / 20)))
        x = speech + bg
    peak = float(np.max(np.abs(x)))
    x = x * (rng.uniform(0.2, 0.95) / max(peak, 1e-9))
    return np.clip(np.round(x * 32767), -32768, 32767).astype(np.int16), OTHER_KINDS.index(kind), snr


def _build_other() -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory(prefix="onnx_l2c_vad_other.") as tmp:
        for rate, count, tag in ((SAMPLE_RATE_8K, N_OTHER_8K, "8k"), (SAMPLE_RATE, N_OTHER_16K, "16k")):
            clips, kinds, snrs = zip(*(_other_clip(rate, i, Path(tmp)) for i in range(count)))
            arrays[f"audio_{tag}"] = np.stack(clips)
            arrays[f"kind_{tag}"] = np.array(kinds, np.int8)
            arrays[f"snr_db_{tag}"] = np.array(snrs, np.float32)
            log.info("vad other %s: %d clips (%d non-speech)", tag, len(clips), kinds.count(0))
    return arrays


@functools.lru_cache(maxsize=1)
def _other_arrays() -> dict[str, np.ndarray]:
    return cached_arrays(OTHER_CACHE_NAME, _build_other)


def vad_other_clips() -> tuple[np.ndarray, np.ndarray]:
    """The ``other`` split: (float32 [200, 32768] 8 kHz clips, float32 [100, 65536] 16 kHz clips), in [-1, 1]."""
    a = _other_arrays()
    return a["audio_8k"].astype(np.float32) / 32768.0, a["audio_16k"].astype(np.float32) / 32768.0


def vad_other_info() -> dict[str, np.ndarray]:
    """Per clip of ``vad_other_clips``: ``kind_8k``/``kind_16k`` (index into ``OTHER_KINDS``) and
    ``snr_db_8k``/``snr_db_16k`` (inf = no speech)."""
    a = _other_arrays()
    return {k: a[k].copy() for k in ("kind_8k", "kind_16k", "snr_db_8k", "snr_db_16k")}


def _main() -> None:
    import time

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    t0 = time.perf_counter()
    for s in SPLITS:
        a = vad_clips(s)
        kind, snr = vad_clip_info(s)
        print(s, a.shape, "kinds", np.bincount(kind).tolist(), "snr", np.unique(snr).tolist())
    a8, a16 = vad_other_clips()
    info = vad_other_info()
    print("other 8 kHz", a8.shape, "kinds", np.bincount(info["kind_8k"]).tolist(),
          "16 kHz", a16.shape, "kinds", np.bincount(info["kind_16k"]).tolist())
    print(f"{time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    _main()
