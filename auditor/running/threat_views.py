"""Which view of an attacked round each threat model gets, and how the runner obtains it
(DESIGN.md, threat-model table): one row per threat model in ``THREAT_VIEWS``.

A scenario kind declares the view types its rounds produce (``ScenarioKind.views``); an
attack whose threat model needs a view the kind does not produce is not applicable there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from flaudit.auditor.attacks.base import ThreatModel
from flaudit.core.errors import FlauditError
from flaudit.scenarios.kinds import scenario_kind
from flaudit.scenarios.views import LogitView, PeerView, ServerView


def _server_view(record: Any, attacker_client: int | None) -> ServerView:
    """The model the server sent and what the aggregation protocol shows it."""
    return record.server_view


def _peer_view(record: Any, attacker_client: int | None) -> PeerView:
    """A participating client's: consecutive global models and its own update; the attacker is
    ``attacker_client`` (default: the lowest-numbered participant of the attacked round)."""
    participants = record.server_view.participants
    client = participants[0] if attacker_client is None else attacker_client
    if client not in participants:
        raise FlauditError(
            f"audit.attacker_client={client} did not take part in round {record.round_index} "
            f"(participants: {list(participants)})"
        )
    return record.peer_view(client)


def _logit_view(record: Any, attacker_client: int | None) -> LogitView:
    """Every client's logits on the public set, and the consensus."""
    return record.logit_view


@dataclass(frozen=True)
class ThreatView:
    view_type: type  # what the threat model observes of a round
    obtain: Callable[[Any, int | None], Any]  # (round record, attacker client) -> that view


THREAT_VIEWS: dict[ThreatModel, ThreatView] = {
    ThreatModel.HONEST_SERVER: ThreatView(ServerView, _server_view),
    ThreatModel.MALICIOUS_SERVER: ThreatView(ServerView, _server_view),
    ThreatModel.CURIOUS_CLIENT: ThreatView(PeerView, _peer_view),
    ThreatModel.LOGIT_SERVER: ThreatView(LogitView, _logit_view),
}


def view_of(threat_model: ThreatModel, record: Any, attacker_client: int | None) -> Any:
    """The view of ``record`` an attack of ``threat_model`` gets."""
    return THREAT_VIEWS[threat_model].obtain(record, attacker_client)


def kind_mismatch(threat_model: ThreatModel, kind: str) -> str | None:
    """Why a scenario of ``kind`` shows ``threat_model`` nothing (e.g. a FedMD round has no
    updates, a FedAvg round no logits), or None when its rounds produce that view."""
    wanted, produced = THREAT_VIEWS[threat_model].view_type, scenario_kind(kind).views
    if wanted in produced:
        return None
    shown = ", ".join(sorted(v.__name__ for v in produced))
    return f"kind={kind!r} scenarios do not produce the {threat_model.value}'s view ({wanted.__name__}); they produce {shown}"
