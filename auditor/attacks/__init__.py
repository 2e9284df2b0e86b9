"""The attack registry: ``name -> Attack class``, one module per attack family.

Family modules register themselves with ``register_attack``; they are imported at the bottom
of this file, so importing ``auditor.attacks`` fills ATTACKS.
"""

from __future__ import annotations

from flaudit.core.registry import Registry

ATTACKS: Registry[type] = Registry("attack")
register_attack = ATTACKS.register_class  # class decorator: registers and sets ``name``


# Attack families (each import registers its attacks):
from flaudit.auditor.attacks import rtf, scale_mia  # noqa: E402,F401  (malicious server)
from flaudit.auditor.attacks import cpa, dlf, dlg, ggl, grnn, inverting_gradients, label_inference  # noqa: E402,F401  (honest server)
from flaudit.auditor.attacks import dmgan, peer  # noqa: E402,F401  (curious client)
from flaudit.auditor.attacks import logit_inversion  # noqa: E402,F401  (logit-sharing server)
