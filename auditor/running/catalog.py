"""The registries an audit draws its attacks and defenses from.

``registered()`` imports every attack and defense family, so a newly added module is audited
with no change here; tests hand the planner their own ``Catalog`` instead.
"""

from __future__ import annotations

from dataclasses import dataclass

from flaudit.core.registry import Registry


@dataclass(frozen=True)
class Catalog:
    attacks: Registry
    defenses: Registry


def registered() -> Catalog:
    import flaudit.defenses  # noqa: F401  (fills DEFENSES)
    from flaudit.auditor.attacks import ATTACKS
    from flaudit.defenses.registry import DEFENSES

    return Catalog(ATTACKS, DEFENSES)
