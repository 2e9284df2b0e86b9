"""A run folder is flaudit's alone: ``run.json`` marks one flaudit created (with the config hash
and whether the run finished), ``run.lock`` holds the pid of the run using it.

``--out`` at a non-empty folder without the marker is refused (it holds someone else's files);
a second run on a folder in use fails at once (``flock``: a lock of a dead process is released
by the kernel, so a stale lock is simply taken over). A run moves the previous scorecard and
reports aside into ``superseded/`` before any job runs and marks the folder finished only after
writing new ones, so a run that does not finish never leaves a scorecard that looks complete:
``gate`` and ``report`` refuse a folder whose run did not finish. Only files flaudit names are
ever deleted: stored jobs, grids and temp files of its own patterns.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flaudit.core.errors import ConfigError

MARKER = "run.json"
LOCK = "run.lock"
SUPERSEDED = "superseded"
KIND = "flaudit.run/1"
FINAL_FILES = ("scorecard.json", "report.html", "summary.md")
TEMP = re.compile(r"\..+\.[A-Za-z0-9_]+\.tmp")  # store.atomic_write's temp files: .<name>.<random>.tmp


def _marker(out: Path) -> dict[str, Any] | None:
    """The run.json of ``out``; None without one; ConfigError when it is not flaudit's."""
    path = out / MARKER
    if not path.is_file():
        return None
    try:
        marker = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path} cannot be read as a flaudit run marker ({exc}); is {out} a flaudit run folder?") from None
    if not isinstance(marker, dict) or marker.get("kind") != KIND:
        raise ConfigError(f"{path} is not a flaudit run marker; {out} is not a flaudit run folder")
    return marker


def unfinished(out: Path) -> str | None:
    """Why the scorecard in run folder ``out`` must not be used (its run did not finish), or None."""
    try:
        marker = _marker(out)
    except ConfigError:  # someone else's run.json: not a folder of ours, nothing to say
        return None
    if marker is None or marker.get("state") == "finished":
        return None
    return (
        f"the run in {out} did not finish (started {marker.get('started')}, pid {marker.get('pid')}): its cells "
        "and scorecard may disagree; finish it with `flaudit run --resume --out` that folder"
    )


def _holder(out: Path) -> str:
    try:
        return (out / LOCK).read_text().strip() or "?"
    except OSError:
        return "?"


def _try_lock(path: Path, create: bool) -> int | None:
    """An fd holding an exclusive flock on ``path``; None when another process holds it."""
    fd = os.open(path, os.O_RDWR | (os.O_CREAT if create else 0), 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return None
        raise
    return fd


def _in_use(out: Path) -> ConfigError:
    return ConfigError(
        f"run folder {out} is in use by another flaudit run (pid {_holder(out)}); wait for it to end or choose another --out"
    )


def check_out(out: Path) -> None:
    """Refuses an ``--out`` that cannot be ours, before anything runs; writes nothing."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a folder")
    if out.is_dir():
        if _marker(out) is None and any(out.iterdir()):
            raise ConfigError(
                f"--out {out} is not empty and is not a flaudit run folder (no {MARKER}); "
                "choose a new or empty folder, flaudit never writes into someone else's files"
            )
        if (out / LOCK).is_file():
            fd = _try_lock(out / LOCK, create=False)
            if fd is None:
                raise _in_use(out)
            os.close(fd)
        if not os.access(out, os.W_OK | os.X_OK):
            raise ConfigError(f"--out {out} is not writable")
        return
    ancestor = out.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        raise ConfigError(f"--out {out} cannot be created: {ancestor} is not a writable folder")


@dataclass
class RunFolder:
    """An open run folder: locked by this process, marked as running until ``finish``."""

    out: Path
    config_hash: str
    started: str
    _fd: int | None = None

    def open(self) -> "RunFolder":
        check_out(self.out)
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            fd = _try_lock(self.out / LOCK, create=True)
        except OSError as exc:
            raise ConfigError(f"--out {self.out} cannot be used: {exc.strerror or exc}") from None
        if fd is None:
            raise _in_use(self.out)
        self._fd = fd
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._write_marker("running")
        self._supersede()
        self._remove_temp_files()
        return self

    def _write_marker(self, state: str, **extra: Any) -> None:
        from flaudit.auditor.running.store import atomic_write

        marker = {"kind": KIND, "state": state, "config_hash": self.config_hash, "pid": os.getpid(),
                  "started": self.started, **extra}
        atomic_write(self.out / MARKER, json.dumps(marker, indent=1) + "\n")

    def _supersede(self) -> None:
        """Moves the previous run's final files aside, so none survives a run that dies."""
        for name in FINAL_FILES:
            if (self.out / name).is_file():
                (self.out / SUPERSEDED).mkdir(exist_ok=True)
                os.replace(self.out / name, self.out / SUPERSEDED / name)

    def _remove_temp_files(self) -> None:
        """Temp files of writes a killed run never finished (nobody else writes here: we hold the lock)."""
        for folder in (self.out, self.out / "cells", self.out / "artifacts", self.out / "prepared"):
            for path in folder.iterdir() if folder.is_dir() else ():
                if TEMP.fullmatch(path.name) and path.is_file():
                    path.unlink()

    def finish(self, finished: str) -> None:
        self._write_marker("finished", finished=finished)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunFolder":
        return self.open()

    def __exit__(self, *exc: Any) -> None:
        self.close()
