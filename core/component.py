"""The base every registered attack and defense shares: a name, typed parameters, profiles.

A component's ``Params`` is a frozen dataclass read from its config table by
``from_table`` (key by key, with ranges, see ``tables``); ``profiles`` are named parameter
overlays, e.g. ``{"full": {"iterations": 24000}}`` for a paper's budgets, which
``flaudit run --profile NAME`` applies under the config's own parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

from flaudit.core.tables import from_mapping


@dataclass(frozen=True)
class NoParams:
    """For components without parameters."""


class Component:
    """Base of registered attacks and defenses (``kind`` names their config table)."""

    kind: ClassVar[str] = "component"
    name: ClassVar[str] = ""  # set by the registry
    Params: ClassVar[type] = NoParams
    profiles: ClassVar[Mapping[str, Mapping[str, Any]]] = {}

    def __init__(self, params: Any = None) -> None:
        self.params = params if params is not None else self.Params()

    @classmethod
    def from_table(cls, table: Mapping[str, Any]) -> "Component":
        return cls(from_mapping(cls.Params, table, f"{cls.kind}.{cls.name}"))
