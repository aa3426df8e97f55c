#!/usr/bin/env bash
# Installs the system tools the Python venv cannot carry, from Debian's package archive:
#   yosys   Debian's yosys (0.23 on bookworm): `dpfm synth`'s xc7z020 estimates (dpfm.rtl.synth)
#   tclsh   Debian's tcl: runs the generated Vivado build.tcl over stub commands
#           (tests/test_board_tcl.py)
# Usage: install-systools.sh [TOOL...]   (default: all of them; `make systools` runs this).
# A tool already on PATH is left alone, so it is safe to run repeatedly; only the missing ones
# are installed, in one apt-get call. Needs root (or sudo) when something is missing.
set -euo pipefail

# The command each tool provides -> the Debian package that provides it.
declare -A PACKAGE=([yosys]=yosys [tclsh]=tcl)
ALL=(yosys tclsh)

tools=("$@")
[ ${#tools[@]} -eq 0 ] && tools=("${ALL[@]}")

missing=()
for tool in "${tools[@]}"; do
    if [ -z "${PACKAGE[$tool]+set}" ]; then
        echo "install-systools: unknown tool '$tool' (known: ${ALL[*]})" >&2
        exit 2
    fi
    if command -v "$tool" >/dev/null 2>&1; then
        echo "$tool present: $(command -v "$tool")"
    else
        missing+=("${PACKAGE[$tool]}")
    fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-systools: missing ${missing[*]} and no apt-get; install them by hand" \
         "(Yosys >= 0.23, Tcl >= 8.6)" >&2
    exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
for tool in "${tools[@]}"; do
    command -v "$tool" >/dev/null 2>&1 || { echo "install-systools: $tool still missing" >&2; exit 1; }
done
echo "installed: ${missing[*]}"
