"""The registries an audit draws its attacks and defenses from.

``registered()`` is every built-in and plugin attack and defense; tests hand the planner
their own ``Catalog`` instead.
"""

from __future__ import annotations

from dataclasses import dataclass

from flaudit.auditor.attacks.registry import ATTACKS
from flaudit.core.registry import Registry
from flaudit.defenses.registry import DEFENSES


@dataclass(frozen=True)
class Catalog:
    attacks: Registry
    defenses: Registry


def registered() -> Catalog:
    return Catalog(ATTACKS, DEFENSES)
