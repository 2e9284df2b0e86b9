"""The defense registry: ``name -> Defense class``; the family modules register into it."""

from __future__ import annotations

from flaudit.core.registry import Registry

DEFENSES: Registry[type] = Registry("defense")
register_defense = DEFENSES.register_class  # class decorator: registers and sets ``name``
