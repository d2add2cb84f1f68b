"""Atomic file writes: an interrupted export never leaves a half-written file behind.

`atomic_write` writes to a temporary file in the target's folder, flushes it to disk and moves it
over the target with `os.replace`, which is atomic on POSIX and Windows: readers see either the
old file or the complete new one. `check_writable` tells early (before any expensive work) that
the target cannot be written, with a message that names the path.

A temporary file is named ``.NAME.PID-XXXXXXXX.tmp`` after the process that writes it. A write that
was killed outright (SIGKILL, a power cut) cannot remove its own; the next write of the same
target removes those whose process is gone (`remove_stale_temporaries`).
"""

from __future__ import annotations

import os
import re
import secrets
import stat
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import BinaryIO

__all__ = ["OutputPathError", "atomic_write", "check_writable", "remove_stale_temporaries", "temporary_pattern"]

# Longest part of the target name kept in a temporary name (file names hold 255 bytes).
_NAME_CHARS = 200


class OutputPathError(PermissionError):
    """A file cannot be written at the output path: its folder is missing, not a folder, or read-only."""


def check_writable(path: str | os.PathLike) -> Path:
    """Raise `OutputPathError` unless a file can be created at ``path``; return it as a `Path`.

    Cheap: call it before decomposing, so that a bad output path fails at once. It creates and
    removes a small probe file in the folder, which also catches read-only mounts and the cases
    that permission bits do not show (e.g. when running as root).
    """
    path = Path(path)
    folder = path.parent
    if path.is_dir():
        raise OutputPathError(f"cannot write {str(path)!r}: it is a folder; give a file name inside it instead")
    if not folder.exists():
        raise OutputPathError(f"cannot write {str(path)!r}: the folder {str(folder)!r} does not exist; create it first")
    if not folder.is_dir():
        raise OutputPathError(f"cannot write {str(path)!r}: {str(folder)!r} is a file, not a folder")
    try:
        descriptor, probe = _create_temp(path)
    except OSError as error:
        raise OutputPathError(
            f"cannot write {str(path)!r}: no permission to create files in {str(folder)!r} ({error.strerror})"
        ) from error
    os.close(descriptor)
    probe.unlink(missing_ok=True)
    return path


@contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Open a temporary file beside ``path`` for binary writing; on success it replaces ``path``.

    The data is fsynced before the rename. On any exception (``KeyboardInterrupt`` included) the
    temporary file is removed and ``path`` is left as it was (absent, or the previous file).
    """
    path = Path(path)
    remove_stale_temporaries(path)
    try:
        descriptor, temp = _create_temp(path)
    except OSError:
        check_writable(path)  # raises a clear error for the usual causes
        raise
    try:
        with os.fdopen(descriptor, "wb") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        if path.exists():  # keep the permissions of the file being replaced
            os.chmod(temp, stat.S_IMODE(path.stat().st_mode))
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


def temporary_pattern(path: str | os.PathLike) -> re.Pattern[str]:
    """The names of ``path``'s temporary files; group 1 is the writer's process id."""
    return re.compile(rf"\.{re.escape(Path(path).name[:_NAME_CHARS])}\.(\d+)-[0-9a-f]{{8}}\.tmp")


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete the temporary files of ``path`` left by processes that no longer run; return them.

    Only names of ``path``'s own pattern (`temporary_pattern`) are touched, and only when their
    process is gone: not running, or a newer process that reuses the id. Temporaries of this
    process and of live ones are kept. Errors (a read-only folder) are ignored.
    """
    path = Path(path)
    pattern = temporary_pattern(path)
    removed = []
    try:
        candidates = [entry for entry in os.scandir(path.parent) if pattern.fullmatch(entry.name)]
    except OSError:
        return removed
    for entry in candidates:
        pid = int(pattern.fullmatch(entry.name).group(1))  # type: ignore[union-attr]
        try:
            modified = entry.stat(follow_symlinks=False).st_mtime
            if pid == os.getpid() or _writer_alive(pid, modified):
                continue
            os.unlink(entry.path)
        except OSError:
            continue
        removed.append(Path(entry.path))
    return removed


def _writer_alive(pid: int, modified: float) -> bool:
    """Whether process ``pid`` runs and may have written a file last modified at ``modified``."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists, owned by another user (or we cannot tell): keep its files
    started = _process_start_time(pid)
    # A process that started after the file's last change did not write it: the id was reused.
    return started is None or started <= modified + 2.0


def _process_start_time(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch), on Linux; None where unknown."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            fields = file.read().rsplit(b")", 1)[1].split()
        with open("/proc/stat", "rb") as file:
            boot = next(float(line.split()[1]) for line in file if line.startswith(b"btime "))
        return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError, StopIteration):
        return None


def _create_temp(path: Path) -> tuple[int, Path]:
    """Create a new, uniquely named hidden file in ``path``'s folder (mode 0o666 less the umask)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        temp = path.parent / f".{path.name[:_NAME_CHARS]}.{os.getpid()}-{secrets.token_hex(4)}.tmp"
        try:
            return os.open(temp, flags, 0o666), temp
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file beside {str(path)!r}")


def _fsync_folder(folder: Path) -> None:
    """Flush a folder entry to disk so that the rename survives a crash (POSIX only, best effort)."""
    if os.name != "posix":
        return
    with suppress(OSError):
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
