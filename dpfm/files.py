"""Writing output files: checked before any work, replaced atomically, readable by all.

Every file DPFM writes (results, sweeps, checkpoints, plots, bench tables, synthesis
reports, experiment pages) goes through :func:`atomic_path`: the new content is written to a
temporary file beside the target and moved over it with ``os.replace``, so a reader sees the
old file or the new one, never half of one, and an error or interrupt leaves the old file.
New files get mode ``0666 & ~umask`` (0644 under the usual umask), as ``open`` would give.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager

__all__ = ["check_output_path", "atomic_path", "dumps", "write_json", "write_text"]


def check_output_path(path, what="output"):
    """Make sure ``path`` can be written, before any work: ValueError naming the problem.

    The parent directory must exist and accept a new file (probed by creating and removing a
    temporary file there); ``path`` itself must not be a directory.
    """
    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise ValueError(f"cannot write {what} {path}: it is a directory")
    if not os.path.exists(parent):
        raise ValueError(f"cannot write {what} {path}: directory {parent} does not exist")
    if not os.path.isdir(parent):
        raise ValueError(f"cannot write {what} {path}: {parent} is not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=".dpfm-probe-", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ValueError(f"cannot write {what} {path}: directory {parent} is not writable "
                         f"({e.strerror or e})") from None
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise ValueError(f"cannot write {what} {path}: the existing file is read-only")


@contextmanager
def atomic_path(path, *, make_dirs=False):
    """Yield a temporary path in ``path``'s directory (same suffix); on success it replaces
    ``path`` atomically (``os.replace``) with mode ``0666 & ~umask``, on an exception it is
    removed.  ``make_dirs`` creates missing parent directories first."""
    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path))
    if make_dirs:
        os.makedirs(parent, exist_ok=True)
    base = os.path.basename(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=os.path.splitext(base)[1], dir=parent)
    os.close(fd)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _scalar(x):
    return not isinstance(x, (dict, list, tuple))


def dumps(obj, level=0) -> str:
    """JSON, indented, with every container of scalars kept on one line (a history row, a
    net, a list of k) so results stay readable.  NaN and infinities are refused."""
    if _scalar(obj) or all(_scalar(v) for v in (obj.values() if isinstance(obj, dict) else obj)):
        return json.dumps(obj, allow_nan=False)
    pad, inner = "  " * level, "  " * (level + 1)
    if isinstance(obj, dict):
        items = [f"{inner}{json.dumps(str(k))}: {dumps(v, level + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    items = [f"{inner}{dumps(v, level + 1)}" for v in obj]
    return "[\n" + ",\n".join(items) + "\n" + pad + "]"


def write_text(path, text: str, *, make_dirs=False) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path, make_dirs=make_dirs) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)


def write_json(path, obj, *, make_dirs=False) -> None:
    """Write ``obj`` as JSON (:func:`dumps`) to ``path`` atomically."""
    write_text(path, dumps(obj) + "\n", make_dirs=make_dirs)
