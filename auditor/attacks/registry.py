"""The attack registry: ``name -> Attack class``.

Built-in families are listed in ``FAMILIES``: each module registers its attacks with
``register_attack``, imported on the registry's first use. Users add theirs by import path
(``name = "package.module:Class"``) or through the ``flaudit.attacks`` entry-point group.
"""

from __future__ import annotations

from typing import Any

from flaudit.auditor.attacks.base import Attack
from flaudit.core.errors import ConfigError
from flaudit.core.registry import Registry

FAMILIES = tuple(f"flaudit.auditor.attacks.{family}" for family in (
    "rtf", "scale_mia",  # malicious server
    "cpa", "dlf", "dlg", "ggl", "grnn", "inverting_gradients", "label_inference",  # honest server
    "dmgan", "peer",  # curious client
    "logit_inversion",  # logit-sharing server
))


def _attack_class(name: str, obj: Any) -> type[Attack]:
    if not (isinstance(obj, type) and issubclass(obj, Attack)):
        raise ConfigError(f"attack plugin {name!r} is {obj!r}, not a subclass of flaudit.auditor.attacks.base.Attack")
    return obj


ATTACKS: Registry[type[Attack]] = Registry(
    "attack", builtins=FAMILIES, plugins="flaudit.attacks", accept=_attack_class, names_classes=True
)
register_attack = ATTACKS.register  # class decorator: registers and sets ``name``
