"""What a strategy chain is configured with, as JSON: each wrapper's class and its scalar
settings (e.g. Flower's DP wrappers: noise multiplier, clipping norm, sampled clients), from the
outermost inner strategy down (wrappers keep the one they wrap in ``.strategy``)."""

from __future__ import annotations

from typing import Any

SCALARS = (bool, int, float, str)


def describe_chain(strategy: Any) -> dict[str, Any]:
    chain = []
    seen = set()
    while strategy is not None and id(strategy) not in seen:
        seen.add(id(strategy))
        fields = {k: v for k, v in vars(strategy).items() if not k.startswith("_") and isinstance(v, SCALARS)}
        chain.append({"class": f"{type(strategy).__module__}.{type(strategy).__qualname__}", "settings": fields})
        strategy = getattr(strategy, "strategy", None)
    return {"chain": chain}
