"""The audit's verdict on each DP claim: the empirical lower bound beside the claimed epsilon.

Per (scenario, defense column) and per DP component of the column: the claimed epsilon (the
canary client's, from the audit run's own accountant), the lower bound, both over seeds, the
number of canaries and the confidence. A claim is violated when, at some seed, the lower bound
exceeds the epsilon claimed in that run: the defense does not give the privacy it reports.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Iterable, Mapping

from flaudit.auditor.metrics.stats import interval
from flaudit.auditor.privacy_audit.job import PrivacyAuditJob
from flaudit.auditor.running.results import JobResult

FIGURES = ("epsilon_lower_bound", "audit_canaries", "audit_confidence")  # added to the component's figures


def _check(seeds: Mapping[int, JobResult], component: str) -> dict[str, Any]:
    ok = {s: r.privacy_audit for s, r in seeds.items() if r.ok and component in r.privacy_audit.claims}
    claims = {s: r.claims[component] for s, r in ok.items()}
    violating = [
        s for s, c in claims.items()
        if c["claimed_epsilon"] is not None and c["epsilon_lower_bound"] > c["claimed_epsilon"]
    ]
    first = next(iter(ok.values()), None)
    return {
        "claimed_epsilon": interval(c["claimed_epsilon"] for c in claims.values()),
        "epsilon_lower_bound": interval(c["epsilon_lower_bound"] for c in claims.values()),
        "delta": interval(c["delta"] for c in claims.values()),
        "canaries": None if first is None else first.canaries,
        "confidence": None if first is None else first.confidence,
        "observed": None if first is None else first.observed,
        "canary_client": None if first is None else first.canary_client,
        "seeds": sorted(ok),
        "violation": bool(violating),
        "violating_seeds": sorted(violating),
        "errors": [r.error.to_json(s) for s, r in seeds.items() if not r.ok],
    }


def privacy_audits(jobs: Iterable[PrivacyAuditJob], results: Mapping[str, JobResult]) -> dict[tuple[str, str], dict[str, Any]]:
    """{(scenario, defense label): {component name: its check}} for every audited column."""
    by_column: dict[tuple[str, str], dict[int, JobResult]] = defaultdict(dict)
    components: dict[tuple[str, str], list[str]] = {}
    for job in jobs:
        column = (job.scenario_label, job.defense_label)
        by_column[column][job.scenario.seed] = results[job.key]
        components[column] = [c.name for c in job.defenses if getattr(c.cls, "claims_dp", False)]
    return {column: {name: _check(seeds, name) for name in components[column]} for column, seeds in by_column.items()}


def figures(check: Mapping[str, Any]) -> dict[str, Any]:
    """The check as defense figures (intervals over the audited seeds)."""
    count = len(check["seeds"])
    return {
        "epsilon_lower_bound": check["epsilon_lower_bound"],
        "audit_canaries": interval([check["canaries"]] * count) if count else None,
        "audit_confidence": interval([check["confidence"]] * count) if count else None,
    }


def violations(audits: Mapping[tuple[str, str], Mapping[str, Mapping[str, Any]]]) -> list[str]:
    """``scenario/defense:component`` of every violated claim."""
    return [f"{s}/{d}:{name}" for (s, d), checks in audits.items() for name, c in checks.items() if c["violation"]]
