"""The shared base of the honest-but-curious server's attacks on one client's upload (label
inference, DLG, iDLG, Inverting Gradients, DLF): which upload they read.

They need each client's own update, so secure aggregation makes them not applicable (the
base class's ``not_applicable`` says so from ``needs_individual_updates``).
"""

from __future__ import annotations

from typing import ClassVar

from flaudit.auditor.attacks.base import Attack, ThreatModel
from flaudit.core.errors import FlauditError
from flaudit.scenarios.views import ClientUpload, ServerView


class HonestServerAttack(Attack):
    """An attack on one participant's upload; ``Params`` must have ``target_client``."""

    threat_model: ClassVar[ThreatModel] = ThreatModel.HONEST_SERVER
    needs_individual_updates: ClassVar[bool] = True

    def target(self, view: ServerView) -> ClientUpload:
        """The upload of ``params.target_client`` (default: the round's first participant)."""
        if view.uploads is None:
            raise FlauditError(f"{self.name} needs each client's update; this round shows the server only the aggregate")
        wanted = self.params.target_client
        for upload in view.uploads:
            if wanted is None or upload.client_id == wanted:
                return upload
        raise FlauditError(
            f"attack.{self.name}.target_client={wanted} did not take part in round {view.round_index} "
            f"(participants: {list(view.participants)})"
        )
