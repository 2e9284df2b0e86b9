"""Audit a real Flower federation: record it, replay it to the attacks, red-team it.

The recording format and its loader (``recording``) and the ``recorded`` scenario kind
(``replay``) need no Flower; the strategy wrappers, the canary mod and the in-process grid
import ``flwr`` (``pip install 'flaudit[flower]'``) and live in their own modules:
``strategy`` (message API), ``legacy`` (the legacy API, needed for SecAgg+), ``canary``,
``grid``, ``redteam``.
"""

from flaudit.integrations.flower.canary_log import log_batch

__all__ = ["log_batch"]
