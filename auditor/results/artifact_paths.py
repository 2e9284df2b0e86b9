"""Artifact paths a run folder may name: ``artifacts/<name>.png``, relative, normalised, and
resolving inside the run folder. A scorecard or a stored cell is data a user may have edited,
so a path it names is checked before anything is read through it: reports embed only their own
files, never ``/etc/passwd`` or a symlink out of the folder."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterator, Mapping

from flaudit.core.errors import FlauditError

ARTIFACTS = "artifacts"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}\.png")


class UnsafePathError(FlauditError):
    """A scorecard or a stored cell names a file outside its run folder."""


def check_relative(path: Any, where: str) -> str:
    """``path`` when it is ``artifacts/<name>.png`` (no absolute path, no ``..``, no other
    folder); otherwise UnsafePathError naming ``where`` (the cell)."""
    parts = path.split("/") if isinstance(path, str) else []
    if len(parts) != 2 or parts[0] != ARTIFACTS or not _NAME.fullmatch(parts[1]):
        raise UnsafePathError(
            f"{where} names artifact {str(path)[:120]!r}, which is not a file artifacts/<name>.png inside "
            "the run folder; refusing to read it"
        )
    return path


def resolve_inside(out: Path, path: Any, where: str) -> Path:
    """The file ``path`` names in run folder ``out``, once it is checked and its real location
    (symlinks followed) is still inside ``out``."""
    target = out / check_relative(path, where)
    real, root = target.resolve(), out.resolve()
    if not real.is_relative_to(root) or (target.is_symlink() and not real.is_relative_to(root / ARTIFACTS)):
        raise UnsafePathError(f"{where}: artifact {path!r} leads outside the run folder (a symlink); refusing to read it")
    return target


def scorecard_artifacts(document: Mapping[str, Any]) -> Iterator[tuple[str, Any]]:
    """(cell id, path) of every artifact a scorecard names (grids and per-seed runs)."""
    for cell in document.get("cells", ()):
        for artifact in cell.get("artifacts", ()):
            yield cell.get("id", "?"), artifact.get("grid")
        for run in cell.get("runs", ()):
            if run.get("artifact") is not None:
                yield cell.get("id", "?"), run["artifact"]


def check_scorecard(document: Mapping[str, Any], where: str) -> None:
    for cell_id, path in scorecard_artifacts(document):
        check_relative(path, f"{where}: cell {cell_id!r}")
