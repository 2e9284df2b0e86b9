"""The defense registry: ``name -> Defense class``.

Built-in families are listed in ``FAMILIES``: each module registers its defenses with
``register_defense``, imported on the registry's first use. Users add theirs by import path
(``name = "package.module:Class"``) or through the ``flaudit.defenses`` entry-point group.
"""

from __future__ import annotations

from flaudit.core.registry import Registry, subclass_plugin
from flaudit.defenses.base import Defense

FAMILIES = tuple(f"flaudit.defenses.{family}" for family in ("compression", "dp", "noise", "secagg"))

DEFENSES: Registry[type[Defense]] = Registry(
    "defense", builtins=FAMILIES, plugins="flaudit.defenses", accept=subclass_plugin("defense", Defense), names_classes=True
)
register_defense = DEFENSES.register  # class decorator: registers and sets ``name``
