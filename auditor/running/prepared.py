"""The run folder's store of attack preparations (``flaudit.auditor.attacks.toolkit.preparation``):
``DIR/prepared/<digest>.pt``, one per preparation, shared by every job of the run, in any
worker process, and by ``--resume``.

A worker that needs a preparation takes ``<digest>.lock`` (``flock``, released by the kernel if
the worker dies), so one builds it while the others wait and then read it; files are written
through a temp file and a rename and read with ``torch.load(weights_only=True)`` (tensors and
plain values only, never code). A file that cannot be read is built again; storing is best
effort (a full disk costs the sharing, not the job). Only files of these names are deleted.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import re
from pathlib import Path
from typing import Iterator

import torch

from flaudit.auditor.attacks.toolkit.preparation import DIGEST_CHARS, State

PREPARED = "prepared"
PREPARED_FILE = re.compile(rf"[0-9a-f]{{{DIGEST_CHARS}}}\.(pt|lock)")


class FolderStore:
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _path(self, key: str, suffix: str) -> Path:
        if not PREPARED_FILE.fullmatch(f"{key}.{suffix}"):
            raise ValueError(f"not a preparation digest: {key!r}")
        return self.folder / f"{key}.{suffix}"

    @contextlib.contextmanager
    def lock(self, key: str) -> Iterator[None]:
        try:
            self.folder.mkdir(exist_ok=True)
            fd = os.open(self._path(key, "lock"), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError:  # an unwritable folder: every worker builds its own
            yield
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def load(self, key: str) -> State | None:
        path = self._path(key, "pt")
        if path.is_symlink() or not path.is_file():
            return None
        try:
            state = torch.load(io.BytesIO(path.read_bytes()), map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - a damaged or foreign file is built again
            return None
        return state if isinstance(state, dict) else None

    def save(self, key: str, state: State) -> None:
        from flaudit.auditor.running.store import atomic_write  # store imports the jobs, which import us

        buffer = io.BytesIO()
        torch.save(state, buffer)
        with contextlib.suppress(OSError):
            atomic_write(self._path(key, "pt"), buffer.getvalue())


def folder_store(out: Path | None) -> FolderStore | None:
    """The store of run folder ``out``; None without one (or where this machine does not have
    it, e.g. a remote Ray node)."""
    return FolderStore(out / PREPARED) if out is not None and out.is_dir() else None


def clear(out: Path) -> None:
    """Deletes the preparations of an earlier run (a run without ``--resume`` starts afresh)."""
    folder = out / PREPARED
    for path in folder.iterdir() if folder.is_dir() else ():
        if PREPARED_FILE.fullmatch(path.name) and path.is_file() and not path.is_symlink():
            path.unlink()
