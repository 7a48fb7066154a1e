"""Atomic outputs: every directory or file the SDK writes appears whole or not at all.

    >>> with atomic_dir("erased-circle", overwrite=False) as tmp:   # OutputExistsError if it exists
    ...     (tmp / "esd.json").write_text("{}")                       # write everything into tmp
    # on success tmp becomes erased-circle; on any error (or Ctrl-C) tmp is removed and an
    # existing erased-circle is left exactly as it was

The work directory is a hidden sibling of the output (same filesystem, so the final step is a
rename). An existing output is replaced only after the new one is complete: it is renamed
aside, the new one renamed in, then the old one removed. Files and directories get the modes
the process's umask gives (0644/0755 by default), whatever the writers used (ONNX's external
data, for one, is created 0600), so that a serving container running as another user can read
what was shipped.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Iterator

from .errors import OutputExistsError


def _umask() -> int:
    """The process's umask. Read from /proc where it can be: setting it to read it back (the only
    portable way) would briefly change it for every thread of a server."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_output(out: str | Path, overwrite: bool) -> Path:
    """Refuse an existing output unless overwriting, and make sure its parent can be written.
    Call it before expensive work; `atomic_dir` checks again when it finishes."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise OutputExistsError(f"output {out} already exists: pass --overwrite to replace it, or choose another --out")
    parent = out.parent if str(out.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputExistsError(f"cannot create the output's parent directory {parent} ({e.strerror}): "
                                "choose another --out") from e
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputExistsError(f"output directory {parent} is not writable: choose another --out")
    return out


def readable_modes(root: Path) -> None:
    """Give every file and directory under ``root`` the modes the umask allows (0644/0755)."""
    mask = _umask()
    for path in [root, *root.rglob("*")]:
        if path.is_symlink():
            continue
        path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)


def replace_dir(tmp: Path, out: Path, overwrite: bool) -> None:
    """Move the finished directory ``tmp`` to ``out``, replacing an existing ``out`` only if allowed."""
    if out.exists():
        if not overwrite:
            raise OutputExistsError(f"output {out} appeared while it was being written: pass --overwrite "
                                    "or choose another --out")
        trash = out.parent / f".{out.name}.old-{os.getpid()}"
        shutil.rmtree(trash, ignore_errors=True)
        out.rename(trash)
        try:
            tmp.rename(out)
        except BaseException:
            trash.rename(out)  # put the old output back
            raise
        shutil.rmtree(trash, ignore_errors=True)
    else:
        tmp.rename(out)


@contextlib.contextmanager
def atomic_dir(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh hidden work directory that becomes ``out`` when the block succeeds."""
    out = check_output(out, overwrite)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        readable_modes(tmp)
        replace_dir(tmp, out, overwrite)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(path: str | Path, overwrite: bool = True) -> Iterator[Path]:
    """Yield a hidden sibling path to write; it replaces ``path`` when the block succeeds."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} already exists: pass --overwrite to replace it")
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    try:
        yield tmp
        tmp.chmod(0o666 & ~_umask())
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> None:
    """Replace a text file atomically."""
    with atomic_file(path) as tmp:
        tmp.write_text(text)
