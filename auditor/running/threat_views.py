"""Which view of an attacked round each threat model gets (DESIGN.md, threat-model table).

A registry keyed by ``ThreatModel``: a new scenario kind that produces another view (e.g. the
logit-sharing server's) registers its source here, and attacks of that threat model become
applicable with no change to the runner.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from flaudit.auditor.attacks.base import ThreatModel
from flaudit.core.errors import FlauditError
from flaudit.scenarios.fedavg import RoundRecord
from flaudit.scenarios.kinds import scenario_kind
from flaudit.scenarios.views import LogitView, PeerView, ServerView


class ViewSource(Protocol):
    unavailable: str | None  # why no scenario produces this view yet; None when it is produced

    def view(self, record: RoundRecord, attacker_client: int | None) -> Any: ...


@dataclass(frozen=True)
class ServerViewSource:
    """The server sees the model it sent and what the aggregation protocol shows it."""

    unavailable: str | None = None

    def view(self, record: RoundRecord, attacker_client: int | None) -> Any:
        return record.server_view


@dataclass(frozen=True)
class PeerViewSource:
    """A participating client: consecutive global models and its own update. The attacker is
    ``attacker_client`` (default: the lowest-numbered participant of the attacked round)."""

    unavailable: str | None = None

    def view(self, record: RoundRecord, attacker_client: int | None) -> Any:
        participants = record.server_view.participants
        client = participants[0] if attacker_client is None else attacker_client
        if client not in participants:
            raise FlauditError(
                f"audit.attacker_client={client} did not take part in round {record.round_index} "
                f"(participants: {list(participants)})"
            )
        return record.peer_view(client)


@dataclass(frozen=True)
class LogitViewSource:
    """The logit-sharing server: every client's logits on the public set, and the consensus."""

    unavailable: str | None = None

    def view(self, record: Any, attacker_client: int | None) -> Any:
        return record.logit_view


@dataclass(frozen=True)
class UnavailableView:
    unavailable: str

    def view(self, record: RoundRecord, attacker_client: int | None) -> Any:
        raise FlauditError(self.unavailable)


VIEW_SOURCES: dict[ThreatModel, ViewSource] = {
    ThreatModel.HONEST_SERVER: ServerViewSource(),
    ThreatModel.MALICIOUS_SERVER: ServerViewSource(),
    ThreatModel.CURIOUS_CLIENT: PeerViewSource(),
    ThreatModel.LOGIT_SERVER: LogitViewSource(),
}
VIEW_TYPES: dict[ThreatModel, type] = {  # what each threat model observes of a round
    ThreatModel.HONEST_SERVER: ServerView,
    ThreatModel.MALICIOUS_SERVER: ServerView,
    ThreatModel.CURIOUS_CLIENT: PeerView,
    ThreatModel.LOGIT_SERVER: LogitView,
}


def register_view_source(threat_model: ThreatModel, source: ViewSource) -> None:
    """Makes ``threat_model``'s attacks applicable, fed by ``source``."""
    VIEW_SOURCES[threat_model] = source


def kind_mismatch(threat_model: ThreatModel, kind: str) -> str | None:
    """Why a scenario of ``kind`` shows ``threat_model`` nothing (e.g. a FedMD round has no
    updates, a FedAvg round no logits), or None when its rounds produce that view."""
    wanted, produced = VIEW_TYPES.get(threat_model), scenario_kind(kind).views
    if wanted is None or wanted in produced:
        return None
    shown = ", ".join(sorted(v.__name__ for v in produced))
    return f"kind={kind!r} scenarios do not produce the {threat_model.value}'s view ({wanted.__name__}); they produce {shown}"


def view_source(threat_model: ThreatModel) -> ViewSource:
    try:
        return VIEW_SOURCES[threat_model]
    except KeyError:
        return UnavailableView(f"no view source is registered for the {threat_model} threat model")
