"""``flaudit reproduce NAME``: measure a paper's tables and write them to a folder.

``DIR/table.md`` holds every table with the paper's columns beside ours, ``DIR/rows.json`` the
same rows as data (with what they depend on), ``DIR/grids/`` one PNG per measured row (its
best-recovered targets above the reconstructions). Everything is written once the last row is
measured, each file through a rename: an interrupted run leaves the previous files whole.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence, TextIO

import torch

from flaudit.auditor.reproduce.registry import REPRODUCTIONS, Measurement, Reproduction
from flaudit.auditor.reproduce.tables import Row, markdown
from flaudit.auditor.running.progress import clock
from flaudit.auditor.running.store import atomic_write
from flaudit.core.errors import ConfigError
from flaudit.core.jsonable import to_json

TABLE_MD, ROWS_JSON, GRIDS = "table.md", "rows.json", "grids"
SCHEMA = "flaudit.reproduction/1"


@dataclass(frozen=True)
class Request:
    name: str
    tables: tuple[str, ...]  # empty: all of them
    quick: bool
    out: Path
    threads: int = 1  # torch threads: fixed, since float rounding (and so the numbers) depends on it
    progress: bool = True
    command: str = ""  # as typed, for the table's header


def selected_tables(reproduction: Reproduction, name: str, asked: Sequence[str]) -> tuple[str, ...]:
    unknown = [t for t in asked if t not in reproduction.tables]
    if unknown:
        raise ConfigError(f"reproduction {name!r} has no table {unknown[0]!r}; its tables: {', '.join(reproduction.tables)}")
    return tuple(t for t in reproduction.tables if t in asked) if asked else reproduction.tables


class RowLines:
    """One line per finished row on ``stream`` (a CI log reads a record, not redraws)."""

    def __init__(self, enabled: bool, stream: TextIO | None = None) -> None:
        self.enabled, self.stream, self.began, self.count = enabled, stream or sys.stderr, time.perf_counter(), 0

    def __call__(self, table: str, row: Row[Any]) -> None:
        self.count += 1
        if not self.enabled:
            return
        setting = ", ".join(f"{k}={v}" for k, v in to_json(row.setting).items())
        m = row.measured
        result = row.note or "not run" if m is None else (
            f"rate {m.rate:.3f} (null {m.null_rate:.3f}, bound {m.bound:.3f}), PSNR "
            f"{'-' if m.psnr is None else f'{m.psnr:.2f}'} dB, {m.returned}/{m.targets} returned, {m.seconds:.3f} s")
        print(f"[{self.count}] {table} {setting}: {result} (elapsed {clock(time.perf_counter() - self.began)})",
              file=self.stream, flush=True)


def reproduce(request: Request) -> Path:
    """Measures the request's tables and writes the folder; returns ``table.md``'s path."""
    reproduction = REPRODUCTIONS.get(request.name)
    tables = selected_tables(reproduction, request.name, request.tables)
    if request.threads < 1:
        raise ConfigError(f"--threads must be at least 1, got {request.threads}")
    torch.set_num_threads(request.threads)
    began = time.perf_counter()
    measurement = reproduction.measure(tables, request.quick, RowLines(request.progress))
    seconds = time.perf_counter() - began
    header = _header(reproduction, request, seconds, measurement)
    document = {
        "schema": SCHEMA, "reproduction": request.name, "title": reproduction.title, "source": reproduction.source,
        "quick": request.quick, "command": request.command, "seconds": seconds, "threads": request.threads,
        "torch": torch.__version__, "python": platform.python_version(), "depends_on": reproduction.describe(request.quick),
        "notes": measurement.notes, "tables": to_json(measurement.tables),
    }
    for name, png in measurement.grids.items():
        atomic_write(request.out / GRIDS / name, png)
    atomic_write(request.out / ROWS_JSON, json.dumps(document, indent=2) + "\n")
    path = request.out / TABLE_MD
    atomic_write(path, header + "\n" + "\n".join(markdown(t) for t in measurement.tables))
    return path


def _header(reproduction: Reproduction, request: Request, seconds: float, measurement: Measurement) -> str:
    notes = "".join(f"- {k}: {json.dumps(to_json(v))}\n" for k, v in measurement.notes.items())
    return (
        f"# {reproduction.title}: published vs measured\n\n"
        f"Published numbers: {reproduction.source}. Ours: `{request.command or 'flaudit reproduce ' + request.name}` "
        f"({'quick' if request.quick else 'full'} profile, {request.threads} torch thread(s), torch {torch.__version__}), "
        f"{clock(seconds)} wall time. Rates are identifiable recovery as the audit scores a cell; the null is the "
        f"attack's best data-blind guess on the same targets; the isolation bound is the share of targets alone in "
        f"a bin, the most any selection can recover. PSNR, recovered: the mean over the identifiably recovered targets; returned: "
        f"over every returned image and its matched target. Times: the reconstruction (phase 2) alone. Grids of each "
        f"row (best-recovered targets above the reconstructions): `{GRIDS}/`.\n\n{notes}"
    )
