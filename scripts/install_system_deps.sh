#!/usr/bin/env bash
# Debian packages the model zoo's evaluation data needs (models/data_audio.py):
#   espeak-ng    speech synthesiser: deterministic English speech for silero_vad
#   sound-icons  real recorded non-speech sounds (instruments, bells, ...) as .wav
#   alsa-utils   /usr/share/sounds/alsa/*.wav: recorded human speech ("Front left", ...)
#                and a noise recording
# and for the `other` evaluation sets (models/data_text.py, data_ocr.py, data_audio.py),
# gathered from other sources than the calibration/evaluation splits:
#   manpages, man-db        English man pages (troff source): sentences for minilm, text lines for OCR
#   fonts-dejavu-core/-extra  DejaVu faces (Condensed, ExtraLight, Oblique, ...) the OCR splits do not use
#   flite                   a second speech synthesiser (other voices than espeak-ng) for silero_vad
#   asterisk-core-sounds-en-wav  recorded human speech prompts (8 kHz WAV) for silero_vad at 8 kHz
#   asterisk-moh-opsound-wav     recorded music (8 kHz WAV): non-speech backgrounds for silero_vad
# Idempotent: does nothing when everything is already installed; otherwise runs
# `apt-get update` once and installs only what is missing (no recommends).
set -euo pipefail

PACKAGES=(espeak-ng sound-icons alsa-utils manpages man-db fonts-dejavu-core fonts-dejavu-extra flite
          asterisk-core-sounds-en-wav asterisk-moh-opsound-wav)

missing=()
for pkg in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$pkg")
    fi
done

if [ ${#missing[@]} -eq 0 ]; then
    echo "install_system_deps: already installed: ${PACKAGES[*]}"
else
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then
        SUDO="sudo"
    fi
    echo "install_system_deps: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update
    $SUDO apt-get install -y --no-install-recommends "${missing[@]}"
fi

# Slim container images tell dpkg to skip /usr/share/man (path-exclude in
# /etc/dpkg/dpkg.cfg.d/): the packages then install without their files.
for f in /usr/share/man/man7/signal.7.gz /usr/share/fonts/truetype/dejavu/DejaVuSansCondensed.ttf \
         /usr/share/asterisk/sounds/en_US_f_Allison/activated.wav; do
    if [ ! -e "$f" ]; then
        echo "install_system_deps: WARNING: $f is missing although its package is installed;" \
             "check /etc/dpkg/dpkg.cfg.d/ for path-exclude lines and reinstall the package" >&2
    fi
done
