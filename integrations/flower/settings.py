"""What a federation ran with, as JSON, for the recording's ``settings``: the strategy chain
(each wrapper's class and scalar settings, e.g. Flower's DP wrappers: noise multiplier, clipping
norm, sampled clients, from the outermost inner strategy down: wrappers keep the one they wrap
in ``.strategy``), what Flower's accountant reported (``privacy_spent``) and, where the app
passes it, its ClientApp's mods. ``dp.findings`` audits them."""

from __future__ import annotations

import types
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


def describe_mod(mod: Any) -> dict[str, Any]:
    """A mod's name and scalar settings (a function mod has none)."""
    if isinstance(mod, types.FunctionType):
        return {"class": mod.__name__, "settings": {}}
    fields = {k: v for k, v in vars(mod).items() if not k.startswith("_") and isinstance(v, SCALARS)}
    return {"class": type(mod).__name__, "settings": fields}


def _chain_mods(function: Any, app_wide: int) -> list[Any]:
    """The mods flwr 1.42's ``make_ffn`` wrapped around a registered function (closures of
    ``new_ffn(_ffn, _mod)``, outermost first), less the ``app_wide`` ones it starts with."""
    mods = []
    while function is not None and function.__closure__ and "_mod" in function.__code__.co_freevars:
        cells = dict(zip(function.__code__.co_freevars, function.__closure__))
        mods.append(cells["_mod"].cell_contents)
        function = cells["_ffn"].cell_contents
    return mods[app_wide:]


def describe_client_app(client_app: Any) -> dict[str, Any]:
    """A ClientApp's mods: app-wide (``ClientApp(mods=...)``) and per message type
    (``@app.train(mods=...)``), each with its scalar settings."""
    app_wide = list(getattr(client_app, "_mods", []))
    described = {"app": [describe_mod(m) for m in app_wide]}
    for name, function in getattr(client_app, "_registered_funcs", {}).items():
        described[name] = [describe_mod(m) for m in _chain_mods(function, len(app_wide))]
    return described


def privacy_spent(strategy: Any) -> dict[str, Any] | None:
    """What the first DP wrapper in the chain with an accountant reports (Flower's
    ``privacy_spent()``) and how that accountant is configured; None when none has one."""
    seen = set()
    while strategy is not None and id(strategy) not in seen:
        seen.add(id(strategy))
        spent = strategy.privacy_spent() if callable(getattr(strategy, "privacy_spent", None)) else None
        if spent is not None:
            config = strategy.accountant.config
            return {
                "wrapper": type(strategy).__name__, "epsilon": float(spent.epsilon), "delta": float(spent.delta),
                "num_releases": int(spent.num_releases), "accounting_method": str(spent.accounting_method),
                "population_size": int(config.population_size), "sampling_method": str(config.sampling_method.value),
            }
        strategy = getattr(strategy, "strategy", None)
    return None


def recorded_settings(strategy: Any, client_app: Any = None) -> dict[str, Any]:
    """The settings a recording starts with (``privacy_spent`` is added as rounds finish)."""
    settings = describe_chain(strategy)
    if client_app is not None:
        settings["client_app"] = describe_client_app(client_app)
    return settings
