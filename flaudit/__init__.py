"""flaudit: privacy defense audits for federated learning (attacks x defenses -> scorecard).

    import flaudit
    card = flaudit.run_audit("audit.toml", out="runs/pr-123")   # -> flaudit.Scorecard
    flaudit.gate("runs/main", card).passed
    flaudit.simulate({"clients": 4, "rounds": 2}).final_test_accuracy

The installed package maps the repository's top folders: ``flaudit.core`` (registries, errors,
typed tables), ``flaudit.scenarios`` (the simulated FL world), ``flaudit.defenses`` (what
protects updates) and ``flaudit.auditor`` (attacks, metrics, the audit runner, results, CLI).
The API is imported on first use, so ``import flaudit.core`` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["run_audit", "load_scorecard", "gate", "simulate", "default_audit", "Scorecard", "CellResult"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("flaudit.api"), name)
    raise AttributeError(f"module 'flaudit' has no attribute {name!r}")
