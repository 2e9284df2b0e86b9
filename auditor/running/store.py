"""Where an audit run keeps its results on disk, written so that a killed run loses at most the
jobs that were running and never leaves a half-written file.

``DIR/cells/<job key>.json`` holds each finished job (its description and result) and
``DIR/artifacts/`` its reconstruction grid; ``--resume`` reuses the finished ones whose key
(a digest of everything that determines the result) still matches the plan. Jobs that failed
are run again.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from flaudit.auditor.running.jobs import Job
from flaudit.core.jsonable import to_json

CELLS = "cells"
ARTIFACTS = "artifacts"


def atomic_write(path: Path, data: str | bytes) -> None:
    """Writes ``path`` through a temp file in the same folder and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data.encode() if isinstance(data, str) else data)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temp, 0o644)  # mkstemp's 0600 would hide reports from other readers
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text.replace("/", "__")).strip("_")


class ResultStore:
    def __init__(self, out: Path, resume: bool) -> None:
        self.out = out
        self.cells = out / CELLS
        self.artifacts = out / ARTIFACTS
        if not resume:
            self._clear()
        self.cells.mkdir(parents=True, exist_ok=True)

    def _clear(self) -> None:
        for folder, pattern in ((self.cells, "*.json"), (self.artifacts, "*.png")):
            for path in folder.glob(pattern) if folder.is_dir() else ():
                path.unlink()

    def finished(self) -> dict[str, dict[str, Any]]:
        """Stored results with status ok, by job key; unreadable files are ignored (re-run)."""
        done = {}
        for path in self.cells.glob("*.json"):
            try:
                record = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            if record.get("result", {}).get("status") == "ok" and path.stem == record.get("key"):
                done[record["key"]] = record["result"]
        return done

    def save(self, job: Job, result: dict[str, Any]) -> dict[str, Any]:
        """Persists one job's result (grid first, so a stored result's artifact exists)."""
        result = dict(result)
        png = result.pop("grid_png", None)
        if png is not None:
            name = f"{slug(job.cell_id)}-seed{job.scenario.seed}.png"
            atomic_write(self.artifacts / name, png)
            result["artifact"] = f"{ARTIFACTS}/{name}"
        result = to_json(result)
        record = {"key": job.key, "job": job.describe(), "result": result}
        atomic_write(self.cells / f"{job.key}.json", json.dumps(record, indent=1, allow_nan=False))
        return result
