"""Durable, crash-safe file-system changes: a write or a folder rename that has returned survives a
kill or a power loss (fsync of files, folder trees and the folders that hold renamed entries), and a
folder is published or removed by renames so that a reader never sees it half there.

Temp and aside names carry their writer (`owner()`: pid and host), so a later scan can tell the
leftovers of a writer that died (`alive`) from those of one still running.
"""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path


def owner() -> str:
    """Who writes a temp folder: the pid and host, so a later scan can tell a dead writer's leftovers."""
    return f"{os.getpid()}-{socket.gethostname()}"


def alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_durably(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def fsync_tree(folder: Path) -> None:
    """Flush every file and folder under `folder` to disk, so a power loss cannot undo the rename's promise."""
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        elif p.is_dir():
            fsync_dir(p)


def fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open folders; renames there are still atomic enough
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def publish(tmp: Path, final: Path) -> None:
    """Rename the finished temp folder to its final name (moving an older save of the same step aside)."""
    if final.exists():
        old = final.with_name(f".old-{final.name}-{owner()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    fsync_dir(final.parent)


def remove_atomically(folder: Path) -> None:
    """Rename first, then delete: a kill mid-delete leaves a `.del-` leftover, never a broken `step-`."""
    doomed = folder.with_name(f".del-{folder.name}-{owner()}")
    shutil.rmtree(doomed, ignore_errors=True)
    os.replace(folder, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


__all__ = [
    "alive",
    "fsync_dir",
    "fsync_tree",
    "owner",
    "publish",
    "remove_atomically",
    "write_durably",
]
