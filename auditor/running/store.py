"""Where an audit run keeps its results on disk, written so that a killed run loses at most the
jobs that were running and never leaves a half-written file.

``DIR/cells/<job key>.json`` holds each finished job (its description and result),
``DIR/artifacts/`` its reconstruction grid and ``DIR/prepared/`` what its attack prepared
(``running.prepared``); ``--resume`` reuses the finished jobs whose key (a digest of everything
that determines the result) still matches the plan, and the preparations. Jobs that failed,
and stored records that are not whole, are run again. A record naming an artifact outside the
run folder is refused. Only files of flaudit's own names are ever deleted.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping

from flaudit.auditor.results.artifact_paths import ARTIFACTS, check_relative
from flaudit.auditor.running import prepared
from flaudit.auditor.running.jobs import Job
from flaudit.auditor.running.results import ERROR, AttackOutcome, JobError, JobResult, NotWhole
from flaudit.core.jsonable import digest, to_json

CELLS = "cells"
JOB_FILE = re.compile(r"(utility|attack|privacy_audit)-[0-9a-f]{16}\.json")  # a stored job: <job key>.json
GRID_FILE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*-[0-9a-f]{8}-seed[0-9]+\.png")  # artifact_name()
SLUG_CHARS = 80


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
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text.replace("/", "__")).strip("_.-")


def artifact_name(cell_id: str, seed: int) -> str:
    """A file name per (cell, seed): a readable, bounded slug plus a digest of the exact id, so
    labels that slug alike ("a b", "a_b") never share a file."""
    return f"{slug(cell_id)[:SLUG_CHARS] or 'cell'}-{digest(cell_id, 8)}-seed{seed}.png"


def stored(out: Path) -> Iterator[tuple[Path, Mapping[str, Any], JobResult]]:
    """Every stored job file of ``out`` that parses: its path, its JSON record and its result
    (ok or error); unreadable and partial records are skipped."""
    folder = out / CELLS
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else ():
        if not JOB_FILE.fullmatch(path.name):
            continue
        try:
            record = json.loads(path.read_text())
            result = JobResult.of(record["key"].split("-", 1)[0], record["result"])
        except (OSError, ValueError, RecursionError, KeyError, TypeError, AttributeError):  # NotWhole is a ValueError
            continue
        yield path, record, result


def read_finished(out: Path) -> dict[str, JobResult]:
    """Stored results with status ok, by job key; unreadable or partial records are ignored
    (their jobs run again); one naming an artifact outside the folder is refused."""
    done = {}
    for path, record, result in stored(out):
        if not result.ok or path.stem != record["key"]:
            continue
        if isinstance(result.outcome, AttackOutcome) and result.outcome.artifact is not None:
            cell = (record.get("job") or {}).get("cell_id", "?") if isinstance(record.get("job"), Mapping) else "?"
            check_relative(result.outcome.artifact, f"stored job {path} (cell {cell!r})")
        done[record["key"]] = result
    return done


class ResultStore:
    def __init__(self, out: Path, resume: bool) -> None:
        self.out = out
        self.cells = out / CELLS
        self.artifacts = out / ARTIFACTS
        if not resume:
            self._clear()
            prepared.clear(out)
        self.cells.mkdir(parents=True, exist_ok=True)

    def _clear(self) -> None:
        """Deletes the stored jobs and grids of earlier runs: only files of our own names."""
        for folder, pattern in ((self.cells, JOB_FILE), (self.artifacts, GRID_FILE)):
            for path in folder.iterdir() if folder.is_dir() else ():
                if pattern.fullmatch(path.name) and path.is_file() and not path.is_symlink():
                    path.unlink()

    def save(self, job: Job, result: dict[str, Any]) -> JobResult:
        """Persists one job's result (grid first, so a stored result's artifact exists) and
        returns it typed."""
        result = dict(result)
        png = result.pop("grid_png", None)
        if png is not None:
            name = artifact_name(job.cell_id, job.scenario.seed)
            atomic_write(self.artifacts / name, png)
            result["artifact"] = f"{ARTIFACTS}/{name}"
        result = to_json(result)
        record = {"key": job.key, "job": job.describe(), "result": result}
        atomic_write(self.cells / f"{job.key}.json", json.dumps(record, indent=1, allow_nan=False))
        try:
            return JobResult.of(job.kind, result)
        except NotWhole as exc:  # a job that reports ok without what the scorecard reads is that job's failure
            return JobResult(ERROR, float(result.get("seconds") or 0.0), error=JobError("NotWhole", f"incomplete result: {exc}"))
