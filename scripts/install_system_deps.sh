#!/usr/bin/env bash
# Debian packages the model zoo's evaluation data needs (models/data_audio.py):
#   espeak-ng    speech synthesiser: deterministic English speech for silero_vad
#   sound-icons  real recorded non-speech sounds (instruments, bells, ...) as .wav
#   alsa-utils   /usr/share/sounds/alsa/*.wav: recorded human speech ("Front left", ...)
#                and a noise recording
# Idempotent: does nothing when everything is already installed; otherwise runs
# `apt-get update` once and installs only what is missing (no recommends).
set -euo pipefail

PACKAGES=(espeak-ng sound-icons alsa-utils)

missing=()
for pkg in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$pkg")
    fi
done

if [ ${#missing[@]} -eq 0 ]; then
    echo "install_system_deps: already installed: ${PACKAGES[*]}"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

echo "install_system_deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update
$SUDO apt-get install -y --no-install-recommends "${missing[@]}"
