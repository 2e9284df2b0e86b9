"""The defense registry: ``name -> Defense class``.

Built-in families are listed in ``FAMILIES``: each module registers its defenses with
``register_defense``, imported on the registry's first use. Users add theirs by import path
(``name = "package.module:Class"``) or through the ``flaudit.defenses`` entry-point group.
"""

from __future__ import annotations

from typing import Any

from flaudit.core.errors import ConfigError
from flaudit.core.registry import Registry
from flaudit.defenses.base import Defense

FAMILIES = tuple(f"flaudit.defenses.{family}" for family in ("compression", "dp", "noise", "secagg"))


def _defense_class(name: str, obj: Any) -> type[Defense]:
    if not (isinstance(obj, type) and issubclass(obj, Defense)):
        raise ConfigError(f"defense plugin {name!r} is {obj!r}, not a subclass of flaudit.defenses.base.Defense")
    return obj


DEFENSES: Registry[type[Defense]] = Registry(
    "defense", builtins=FAMILIES, plugins="flaudit.defenses", accept=_defense_class, names_classes=True
)
register_defense = DEFENSES.register  # class decorator: registers and sets ``name``
