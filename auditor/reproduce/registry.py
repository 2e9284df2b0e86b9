"""The papers ``flaudit reproduce`` knows: ``name -> Reproduction``.

A paper's module registers one ``Reproduction`` with ``register_reproduction``; the registry
imports the built-in modules (``PAPERS``) on first use. Adding a paper is one module."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable

from flaudit.auditor.reproduce.tables import Row, Table
from flaudit.core.registry import Registry

PAPERS = ("flaudit.auditor.reproduce.scale_mia",)

RowDone = Callable[[str, Row[Any]], None]  # (table name, finished row): the progress line


@dataclass(frozen=True)
class Measurement:
    tables: list[Table[Any]]
    grids: dict[str, bytes]  # file name -> PNG of a row's best-recovered targets above their reconstructions
    notes: dict[str, Any] = field(default_factory=dict)  # JSON-able figures of the run (e.g. preparation times)


class Reproduction(ABC):
    """One paper's tables. ``tables`` lists their names in the paper's order; ``measure`` runs
    the named ones (``quick``: the small version a CI test runs in minutes) and calls
    ``row_done`` as each row finishes."""

    title: str  # the paper
    source: str  # where the published numbers were read
    tables: tuple[str, ...]

    @abstractmethod
    def measure(self, tables: tuple[str, ...], quick: bool, row_done: RowDone) -> Measurement: ...

    @abstractmethod
    def describe(self, quick: bool) -> dict[str, Any]:
        """Everything the measured numbers depend on (seeds, attack parameters), for the JSON."""


REPRODUCTIONS: Registry[Reproduction] = Registry("reproduction", builtins=PAPERS)
register_reproduction = REPRODUCTIONS.register
