"""Crash-safe file writes: write a temporary file, flush it to disk, rename it into place.

A rename within one filesystem is atomic, so after a crash (SIGKILL included) a file either has
its old content, its complete new content, or does not exist; never half of it.
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


def _alive(pid: int) -> bool:
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
    temporary = temporary_name(path)
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], value: Any) -> None:
    """Write ``value`` as indented JSON to ``path`` atomically."""
    atomic_write_text(path, json.dumps(value, indent=2, sort_keys=False) + "\n")
