"""What a curious client knows about its peers, shared by the client-side attacks.

A client's view carries no client ids but its own. Under full participation the round's
participants are the public roster (clients 0..num_clients-1), so the attacker names its
peers from it; with client sampling it cannot, and these attacks do not apply.
"""

from __future__ import annotations

from flaudit.auditor.attacks.base import AttackerKnowledge
from flaudit.core.errors import FlauditError
from flaudit.scenarios.scenario import ScenarioConfig
from flaudit.scenarios.views import PeerView


def needs_full_participation(attack: str, scenario: ScenarioConfig) -> str | None:
    """Why ``attack`` does not apply to ``scenario`` (client sampling), or None."""
    if scenario.sample_fraction < 1.0:
        return (
            f"{attack} names its peers from the client roster, which needs every client in every "
            f"round (scenario.sample_fraction = 1; it is {scenario.sample_fraction})"
        )
    return None


def peers(view: PeerView, knowledge: AttackerKnowledge) -> tuple[int, ...]:
    """The other participants of the attacked round: every client of the roster but the attacker."""
    if view.num_participants is not None and view.num_participants != knowledge.num_clients:
        raise FlauditError(
            f"{view.num_participants} of {knowledge.num_clients} clients took part in round "
            f"{view.round_index}: a client cannot name its peers under client sampling"
        )
    return tuple(c for c in range(knowledge.num_clients) if c != view.client_id)
