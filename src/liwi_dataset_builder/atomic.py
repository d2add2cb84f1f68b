"""Crash-safe file writes: write a temporary file, flush it to disk, rename it into place.

A rename within one filesystem is atomic, so after a crash (SIGKILL included) a file either has
its old content, its complete new content, or does not exist; never half of it.

Temporary names carry the host and the process id (``.NAME.tmp-HOST-PID``), because machines of
one build may share the output folder: a process removes only temporaries of its own host whose
process is gone (``remove_stale_temporaries`` for a folder at build start, and the target's own
before each write); other hosts' temporaries are theirs to clean up. An exception during a write
(KeyboardInterrupt included) removes the temporary file.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "host_name",
    "remove_stale_temporaries",
    "remove_stale_temporaries_of",
    "temporary_name",
]


def temporary_name(path: Path) -> Path:
    """A hidden sibling of ``path`` unique to this process on this host (``.NAME.tmp-HOST-PID``).

    The host is part of the name because machines of one build may share the output folder.
    """
    return path.with_name(f".{path.name}.tmp-{host_name()}-{os.getpid()}")


def host_name() -> str:
    """This machine's name, made safe for file names."""
    return "".join(c if c.isalnum() or c in "._" else "_" for c in socket.gethostname()) or "host"


def remove_stale_temporaries(folder: Path) -> None:
    """Delete temporary files in ``folder`` left by dead processes of this host (a killed build)."""
    for path in folder.glob(f".*.tmp-{host_name()}-*"):
        pid = path.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and _alive(int(pid)):
            continue
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def remove_stale_temporaries_of(path: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files of ``path`` that dead processes of this host left; return them.

    Only ``.NAME.tmp-HOST-PID`` with this host's name and a process id that no longer runs (nor this
    process's own, which is in use) are removed; temporaries of other hosts are kept.
    """
    path = Path(path)
    prefix = f".{path.name}.tmp-{host_name()}-"
    removed = []
    try:
        names = [entry.name for entry in os.scandir(path.parent) if entry.name.startswith(prefix)]
    except OSError:
        return removed
    for name in names:
        pid = name[len(prefix) :]
        if not pid.isdigit() or int(pid) == os.getpid() or _alive(int(pid)):
            continue
        with contextlib.suppress(OSError):
            (path.parent / name).unlink()
            removed.append(path.parent / name)
    return removed


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    path = Path(path)
    remove_stale_temporaries_of(path)
    temporary = temporary_name(path)
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], value: Any) -> None:
    """Write ``value`` as indented JSON to ``path`` atomically."""
    atomic_write_text(path, json.dumps(value, indent=2, sort_keys=False) + "\n")
