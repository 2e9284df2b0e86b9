"""The attack registry: ``name -> Attack class``.

Built-in families are listed in ``FAMILIES``: each module registers its attacks with
``register_attack``, imported on the registry's first use. Users add theirs by import path
(``name = "package.module:Class"``) or through the ``flaudit.attacks`` entry-point group.
"""

from __future__ import annotations

from flaudit.auditor.attacks.base import Attack
from flaudit.core.registry import Registry, subclass_plugin

FAMILIES = tuple(f"flaudit.auditor.attacks.{family}" for family in (
    "inconsistency", "rtf", "scale_mia",  # malicious server
    "cpa", "dlf", "dlg", "ggl", "grnn", "inverting_gradients", "label_inference",  # honest server
    "dmgan", "peer",  # curious client
    "logit_inversion",  # logit-sharing server
))


ATTACKS: Registry[type[Attack]] = Registry(
    "attack", builtins=FAMILIES, plugins="flaudit.attacks", accept=subclass_plugin("attack", Attack), names_classes=True
)
register_attack = ATTACKS.register  # class decorator: registers and sets ``name``
