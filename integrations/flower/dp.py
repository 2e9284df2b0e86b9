"""Flower's differential-privacy settings, audited from the recording (needs no Flower).

What the recording holds (``settings``, written by ``settings.recorded_settings``): the strategy chain with each wrapper's scalars (e.g.
``DifferentialPrivacyServerSideFixedClipping``: noise multiplier, clipping norm, sampled
clients), what Flower's own accountant reported (``privacy_spent``, where the app gave the
wrapper one) and, where the app passed its ``ClientApp``, its mods (``describe_client_app``:
app-wide, train-only, evaluate-only). ``findings`` turns them into the audit's findings:

- ``epsilon``: the epsilon Flower reports beside Opacus' RDP accounting of the same mechanism
  (noise multiplier, sampling rate, rounds), or Opacus' alone where Flower reports none;
- ``local_dp_epsilon``: ``LocalDpMod`` calibrates sigma = S sqrt(2 ln(1.25/delta)) / epsilon per
  round, the classic Gaussian mechanism, proven for epsilon < 1 only (Dwork & Roth, Thm A.1):
  at epsilon >= 1 the per-round claim has no guarantee;
- ``local_dp_sensitivity``: its sensitivity S is not the clipping norm C it clips updates to,
  so the noise is calibrated to another sensitivity than the update's;
- ``dp_mod_app_wide``: a DP mod registered on the whole ClientApp also wraps evaluate
  messages (and evaluate rounds then wait out the strategy's timeout, a Flower bug): register
  it on ``@app.train(mods=[...])``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

DEFAULT_DELTA = 1e-5  # where Flower's settings name none
LOCAL_DP = "LocalDpMod"
DP_MODS = (LOCAL_DP, "fixedclipping_mod", "adaptiveclipping_mod")  # flwr's client-side DP mods
CENTRAL_DP = "DifferentialPrivacy"  # the prefix of every Flower DP strategy wrapper's class
AGREEMENT = 0.05  # relative difference of two accountants' epsilon that is still agreement


@dataclass(frozen=True)
class Finding:
    code: str  # epsilon, local_dp_epsilon, local_dp_sensitivity, dp_mod_app_wide
    severity: str  # "info" or "warning"
    message: str
    values: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "severity": self.severity, "message": self.message, "values": self.values}


# ---- Opacus' accounting of the same mechanism ---------------------------------------------------


def opacus_epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    """Opacus' RDP accountant for ``steps`` sampled Gaussian releases."""
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    accountant.history = [(float(noise_multiplier), float(sample_rate), int(steps))]
    return float(accountant.get_epsilon(delta))


def local_dp_sigma(settings: Mapping[str, Any]) -> float:
    """LocalDpMod's noise standard deviation (flwr 1.42's formula)."""
    return settings["sensitivity"] * math.sqrt(2 * math.log(1.25 / settings["delta"])) / settings["epsilon"]


# ---- findings ---------------------------------------------------------------------------------


def _central(settings: Mapping[str, Any], rounds: int, nodes: int) -> list[Finding]:
    chain = settings.get("chain", [])
    wrapper = next((w for w in chain if w["class"].rsplit(".", 1)[-1].startswith(CENTRAL_DP)), None)
    if wrapper is None or not wrapper["settings"].get("noise_multiplier"):
        return []
    z = float(wrapper["settings"]["noise_multiplier"])
    spent = settings.get("privacy_spent")
    population = spent["population_size"] if spent else nodes
    sampled = int(wrapper["settings"].get("num_sampled_clients", population))
    amplified = spent is not None and spent["sampling_method"] != "no-amplification"
    rate = sampled / population if amplified else 1.0
    delta = spent["delta"] if spent else DEFAULT_DELTA
    releases = spent["num_releases"] if spent else rounds
    ours = opacus_epsilon(z, rate, releases, delta)
    values = {"noise_multiplier": z, "sample_rate": rate, "releases": releases, "delta": delta, "opacus_epsilon": ours,
              "flower_epsilon": spent["epsilon"] if spent else None}
    name = wrapper["class"].rsplit(".", 1)[-1]
    mechanism = f"sigma={z:g}, sample rate {rate:g}, {releases} releases, delta={delta:g}"
    if spent is None:
        return [Finding("epsilon", "warning", f"{name} has no accountant: Flower reports no epsilon; Opacus' RDP "
                        f"accountant gives epsilon={ours:.3g} for the same mechanism ({mechanism})", values)]
    agree = abs(spent["epsilon"] - ours) <= AGREEMENT * max(ours, 1e-12)
    return [Finding("epsilon", "info" if agree else "warning",
                    f"{name}: Flower's accountant reports epsilon={spent['epsilon']:.3g}; Opacus' RDP accountant gives "
                    f"epsilon={ours:.3g} for the same mechanism ({mechanism})" + ("" if agree else ": they disagree"),
                    values)]


def _local(mod: Mapping[str, Any], rounds: int) -> list[Finding]:
    s = mod["settings"]
    found = []
    sigma = local_dp_sigma(s)
    z = sigma / s["clipping_norm"]
    ours = opacus_epsilon(z, 1.0, rounds, s["delta"])
    values = {"epsilon_per_round": s["epsilon"], "delta": s["delta"], "sensitivity": s["sensitivity"],
              "clipping_norm": s["clipping_norm"], "sigma": sigma, "rounds": rounds, "opacus_epsilon": ours}
    if s["epsilon"] >= 1:
        found.append(Finding("local_dp_epsilon", "warning",
                             f"LocalDpMod(epsilon={s['epsilon']:g}) per round: its Gaussian calibration sigma = "
                             "S sqrt(2 ln(1.25/delta)) / epsilon is proven only for epsilon < 1, so the per-round claim "
                             f"has no guarantee; Opacus' RDP accounting of its noise (sigma={sigma:.3g}, clipping "
                             f"{s['clipping_norm']:g}) over {rounds} rounds: epsilon={ours:.3g} at delta={s['delta']:g}", values))
    if s["sensitivity"] != s["clipping_norm"]:
        found.append(Finding("local_dp_sensitivity", "warning",
                             f"LocalDpMod: sensitivity={s['sensitivity']:g} but clipping_norm={s['clipping_norm']:g}: "
                             "the noise is calibrated to another sensitivity than the clipped update's "
                             f"(L2 sensitivity {s['clipping_norm']:g}); the stated epsilon does not hold", values))
    if not found:
        found.append(Finding("epsilon", "info", f"LocalDpMod(epsilon={s['epsilon']:g}, delta={s['delta']:g}) per round; "
                             f"Opacus' RDP accounting of its noise over {rounds} rounds: epsilon={ours:.3g}", values))
    return found


def findings(settings: Mapping[str, Any], rounds: int, nodes: int) -> list[Finding]:
    """The DP findings of a recording's ``settings`` for its ``rounds`` rounds of ``nodes`` nodes."""
    found = _central(settings, rounds, nodes)
    mods: Mapping[str, Sequence[Mapping[str, Any]]] = settings.get("client_app", {})
    for group, listed in mods.items():  # "app", or a registered function: "train.default", "evaluate.default", ...
        message_type = group.split(".")[0]
        for mod in listed:
            if mod["class"] == LOCAL_DP and message_type != "evaluate":
                found.extend(_local(mod, rounds))
            if mod["class"] in DP_MODS and message_type == "app":
                found.append(Finding("dp_mod_app_wide", "warning",
                                     f"{mod['class']} is registered app-wide (ClientApp(mods=[...])): it also wraps "
                                     "evaluate messages (Flower's evaluate rounds then wait out the strategy's timeout); "
                                     "register it on training only: @app.train(mods=[...])", {"mod": mod["class"]}))
    return found
