"""The registries an audit draws its attacks and defenses from.

``registered()`` imports every attack and defense family, so a newly added module is audited
with no change here; tests hand the planner their own ``Catalog`` instead.
"""

from __future__ import annotations

from dataclasses import dataclass

from scenarios.registry import Registry


@dataclass(frozen=True)
class Catalog:
    attacks: Registry
    defenses: Registry


def registered() -> Catalog:
    import defenses  # noqa: F401  (fills DEFENSES)
    from auditor.attacks import ATTACKS
    from defenses.registry import DEFENSES

    return Catalog(ATTACKS, DEFENSES)
