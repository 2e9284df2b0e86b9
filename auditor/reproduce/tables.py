"""A reproduced table: typed rows of (our setting, the paper's numbers, ours), as Markdown.

Every row carries what the audit would show for it: the identifiable recovery rate, the
attack's larger data-blind null on the same targets, and, for imprint attacks, the isolation
bound (the share of the targets alone in their bin, which no selection can beat). A row the
paper reports but this machine cannot run has no measurement and says why in its note.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Generic, TypeVar

S = TypeVar("S")
MISSING = "—"


def setting_field(header: str, **kwargs: Any) -> Any:
    """A setting's field with the column header the Markdown gives it."""
    return dataclasses.field(metadata={"header": header}, **kwargs)


Claim = float | str | None  # a published number, the paper's words where it gives none, or nothing


@dataclass(frozen=True)
class Published:
    """What the paper reports for a row: a number, its words instead ("not affected"), or None."""

    rate: Claim = None
    psnr: Claim = None
    seconds: Claim = None


@dataclass(frozen=True)
class Privacy:
    """What a DP defense spent and used in the attacked round (its own figures)."""

    epsilon: float
    delta: float
    noise_multiplier: float


@dataclass(frozen=True)
class Measured:
    """Our run of a row, the mean over ``draws`` independent draws of the clients' images."""

    rate: float  # identifiably recovered share of the targets (the audit's criterion)
    null_rate: float  # the attack's larger null: the same targets, matching and criterion
    bound: float  # isolation bound (imprint attacks): the share alone in a bin
    psnr: float | None  # mean PSNR (dB) of the recovered targets; None when none was recovered
    returned_psnr: float | None  # mean PSNR of every returned image to its matched target; None: none returned
    seconds: float  # the reconstruction alone (phase 2), wall clock
    targets: int  # samples in the attacked round (all clients)
    returned: int  # images the attack returned
    local_steps: int  # SGD steps each client took
    draws: int
    privacy: Privacy | None = None
    diagnostics: dict[str, float] = dataclasses.field(default_factory=dict)  # the attack's own, first draw (JSON only)


@dataclass(frozen=True)
class Row(Generic[S]):
    setting: S
    published: Published | None
    measured: Measured | None
    note: str = ""


@dataclass(frozen=True)
class Table(Generic[S]):
    name: str  # what --table selects
    title: str  # the paper's table, as it names it
    setup: str  # what we ran
    differences: str  # where our setting is not the paper's
    rows: tuple[Row[S], ...]


def _number(value: float | None, digits: int) -> str:
    return MISSING if value is None else f"{value:.{digits}f}"


@dataclass(frozen=True)
class Column:
    header: str
    cell: Callable[[Row[Any]], str]
    shown: Callable[[Table[Any]], bool] = lambda table: True


def _published(get: Callable[[Published], Claim], digits: int) -> Callable[[Row[Any]], str]:
    def cell(row: Row[Any]) -> str:
        claim = None if row.published is None else get(row.published)
        return claim if isinstance(claim, str) else _number(claim, digits)

    return cell


def _measured(get: Callable[[Measured], Any], render: Callable[[Any], str]) -> Callable[[Row[Any]], str]:
    return lambda row: MISSING if row.measured is None else render(get(row.measured))


def _any_privacy(table: Table[Any]) -> bool:
    return any(r.measured is not None and r.measured.privacy is not None for r in table.rows)


def _privacy(get: Callable[[Privacy], float], digits: int) -> Callable[[Row[Any]], str]:
    return lambda row: MISSING if row.measured is None or row.measured.privacy is None else f"{get(row.measured.privacy):.{digits}g}"


COLUMNS = (
    Column("paper rate", _published(lambda p: p.rate, 2)),
    Column("our rate", _measured(lambda m: m.rate, lambda v: f"**{v:.3f}**")),
    Column("our null", _measured(lambda m: m.null_rate, lambda v: f"{v:.3f}")),
    Column("isolation bound", _measured(lambda m: m.bound, lambda v: f"{v:.3f}")),
    Column("paper PSNR", _published(lambda p: p.psnr, 2)),
    Column("our PSNR, recovered", _measured(lambda m: m.psnr, lambda v: _number(v, 2))),
    Column("our PSNR, returned", _measured(lambda m: m.returned_psnr, lambda v: _number(v, 2))),
    Column("paper s", _published(lambda p: p.seconds, 3)),
    Column("our s", _measured(lambda m: m.seconds, lambda v: f"{v:.3f}")),
    Column("returned / targets", _measured(lambda m: m, lambda m: f"{m.returned} / {m.targets}")),
    Column("local steps", _measured(lambda m: m.local_steps, str)),
    Column("ε spent", _privacy(lambda p: p.epsilon, 3), _any_privacy),
    Column("σ", _privacy(lambda p: p.noise_multiplier, 3), _any_privacy),
    Column("note", lambda row: row.note),
)


def _setting_cells(setting: Any) -> list[tuple[str, str]]:
    return [(f.metadata.get("header", f.name), str(getattr(setting, f.name))) for f in dataclasses.fields(setting)]


def markdown(table: Table[Any]) -> str:
    """The table as a Markdown section: title, setup, differences, then the rows."""
    columns = [c for c in COLUMNS if c.shown(table)]
    settings = [_setting_cells(r.setting) for r in table.rows]
    headers = [h for h, _ in settings[0]] + [c.header for c in columns] if settings else []
    lines = [f"## {table.title}", "", table.setup, "", f"Differences from the paper: {table.differences}", ""]
    lines += ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row, cells in zip(table.rows, settings):
        lines.append("| " + " | ".join([v for _, v in cells] + [c.cell(row) for c in columns]) + " |")
    return "\n".join(lines) + "\n"
