"""A finished job's result, typed, as the store keeps it and the scorecard, the estimate and the
progress read it. Executors carry results as plain JSON-able dicts (they cross processes and
Ray); the store parses each one once, when it is saved or read back, and a stored record that
does not parse is not whole: its job runs again.

The JSON stays what ``cells/<job key>.json`` has always held, so older run folders resume.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

OK, ERROR = "ok", "error"


class NotWhole(ValueError):
    """A stored result lacks what the scorecard reads."""


def _need(raw: Mapping[str, Any], key: str) -> Any:
    if key not in raw:
        raise NotWhole(f"no {key!r}")
    return raw[key]


def _mapping(value: Any, key: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise NotWhole(f"{key!r} is not a mapping")
    return value


@dataclass(frozen=True)
class JobError:
    type: str
    message: str
    traceback: str = ""

    @classmethod
    def of(cls, raw: Any) -> "JobError":
        raw = _mapping(raw, "error")
        return cls(str(_need(raw, "type")), str(_need(raw, "message")), str(raw.get("traceback", "")))

    def to_json(self, seed: int | None = None) -> dict[str, Any]:
        """As the scorecard lists errors (with the seed they happened at)."""
        head = {} if seed is None else {"seed": seed}
        return {**head, "type": self.type, "message": self.message, "traceback": self.traceback}


@dataclass(frozen=True)
class AttackOutcome:
    """What an attack job found: its metrics (against its nulls), which output rated it, and
    where its reconstruction grid is (``artifact``, relative to the run folder)."""

    metrics: Mapping[str, Any]
    null: str | None
    rated_by: tuple[str, ...]
    attacked_round: int
    target_clients: tuple[int, ...]
    diagnostics: Mapping[str, Any]
    test_accuracy_at_attack: float | None
    timing: Mapping[str, float] = field(default_factory=dict)
    unscored: str | None = None  # why nothing it returned could be scored (no ground truth)
    artifact: str | None = None

    @classmethod
    def of(cls, raw: Mapping[str, Any]) -> "AttackOutcome":
        return cls(
            _mapping(_need(raw, "metrics"), "metrics"), raw.get("null"), tuple(raw.get("rated_by", ())),
            _need(raw, "attacked_round"), tuple(_need(raw, "target_clients")),
            _mapping(_need(raw, "diagnostics"), "diagnostics"), _need(raw, "test_accuracy_at_attack"),
            dict(raw.get("timing") or {}), raw.get("unscored"), raw.get("artifact"),
        )


@dataclass(frozen=True)
class UtilityOutcome:
    """The honest federation under a defense column: test accuracy and the defenses' figures."""

    test_accuracy: float | None
    test_accuracy_by_round: tuple[float | None, ...]
    defense_figures: Mapping[str, Mapping[str, Any]]

    @classmethod
    def of(cls, raw: Mapping[str, Any]) -> "UtilityOutcome":
        return cls(_need(raw, "test_accuracy"), tuple(_need(raw, "test_accuracy_by_round")),
                   _mapping(_need(raw, "defense_figures"), "defense_figures"))


@dataclass(frozen=True)
class PrivacyAuditOutcome:
    """A DP column's canary run: how many canaries, what the server's view guessed, and each DP
    component's claim beside the bound those guesses prove (``privacy_audit.claims``)."""

    canaries: int
    confidence: float
    canary_client: int
    observed: Any
    guesses: tuple[Mapping[str, Any], ...]
    claims: Mapping[str, Mapping[str, Any]]

    @classmethod
    def of(cls, raw: Mapping[str, Any]) -> "PrivacyAuditOutcome":
        return cls(_need(raw, "canaries"), raw.get("confidence"), raw.get("canary_client"), raw.get("observed"),
                   tuple(_need(raw, "guesses")), _mapping(_need(raw, "claims"), "claims"))


Outcome = AttackOutcome | UtilityOutcome | PrivacyAuditOutcome
OUTCOMES: dict[str, Callable[[Mapping[str, Any]], Outcome]] = {
    "attack": AttackOutcome.of, "utility": UtilityOutcome.of, "privacy_audit": PrivacyAuditOutcome.of,
}


@dataclass(frozen=True)
class JobResult:
    """``status`` ok with the job kind's ``outcome``, or error with its ``error``."""

    status: str
    seconds: float
    outcome: Outcome | None = None
    error: JobError | None = None
    peak_rss_bytes: int | None = None  # the most resident memory of the process that ran it, up to its end

    @property
    def ok(self) -> bool:
        return self.status == OK

    @classmethod
    def of(cls, kind: str, raw: Any) -> "JobResult":
        """Parses a job's JSON result (``kind``: the job's kind); raises ``NotWhole``."""
        raw = _mapping(raw, "result")
        status, seconds = raw.get("status"), float(raw.get("seconds") or raw.get("simulation_seconds") or 0.0)
        peak = raw.get("peak_rss_bytes")
        peak = int(peak) if isinstance(peak, (int, float)) and not isinstance(peak, bool) else None
        if status == OK:
            if kind not in OUTCOMES:
                raise NotWhole(f"unknown job kind {kind!r}")
            return cls(OK, seconds, outcome=OUTCOMES[kind](raw), peak_rss_bytes=peak)
        if status == ERROR:
            return cls(ERROR, seconds, error=JobError.of(raw.get("error")), peak_rss_bytes=peak)
        raise NotWhole(f"status {status!r}")

    @property
    def attack(self) -> AttackOutcome:
        assert isinstance(self.outcome, AttackOutcome), self
        return self.outcome

    @property
    def utility(self) -> UtilityOutcome:
        assert isinstance(self.outcome, UtilityOutcome), self
        return self.outcome

    @property
    def privacy_audit(self) -> PrivacyAuditOutcome:
        assert isinstance(self.outcome, PrivacyAuditOutcome), self
        return self.outcome
