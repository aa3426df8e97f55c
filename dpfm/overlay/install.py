"""``python -m dpfm.overlay.install BUILD_DIR [--sub NAME]``: copy ``dpfm.bit``, ``dpfm.hwh``
and ``dpfm.json`` of a board build into the overlay package (``make overlay``)."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from dpfm.overlay import OVERLAY_DIR

FILES = ("dpfm.bit", "dpfm.hwh", "dpfm.json")


def install(build_dir, sub: str | None = None, dest=OVERLAY_DIR) -> Path:
    """Copy the three files from ``build_dir`` to ``dest`` (or ``dest/sub``); returns the
    folder.  ``FileNotFoundError`` naming every missing file, before anything is copied."""
    build_dir = Path(build_dir)
    missing = [str(build_dir / f) for f in FILES if not (build_dir / f).is_file()]
    if missing:
        raise FileNotFoundError(f"missing {', '.join(missing)}; build them with `make bitstream`")
    out = Path(dest) / sub if sub else Path(dest)
    out.mkdir(parents=True, exist_ok=True)
    for f in FILES:
        shutil.copy2(build_dir / f, out / f)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m dpfm.overlay.install", description=__doc__)
    p.add_argument("build_dir")
    p.add_argument("--sub", help="subfolder of the overlay package (e.g. k4, for a k sweep)")
    args = p.parse_args(argv)
    try:
        out = install(args.build_dir, args.sub)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"overlay files in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
