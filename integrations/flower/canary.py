"""``CanaryMod``: the Flower client mod that records the canary's batches for the replay.

A mod sees messages, never the data loader; it switches the batch recorder on for a training
round of the consenting client (``partition_id``) and writes what the train loop logged with
``log_batch`` to ``out_dir/canary/``. A top-level class, so Ray can pickle the ClientApp. Put it
before ``secaggplus_mod`` in the mod list: it then brackets the stage that trains.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from flaudit.integrations.flower import canary_log
from flaudit.integrations.flower.recording import write_canary

TRAIN = "train"  # flwr.app.MessageType.TRAIN


def server_round(message: Any) -> int:
    """The round a train message belongs to: the ``server-round`` the message API's strategies
    put in the config, else the group id the legacy workflows set."""
    for record in message.content.config_records.values():
        if "server-round" in record:
            return int(record["server-round"])
    return int(message.metadata.group_id)


class CanaryMod:
    def __init__(self, out_dir: str | Path, partition_id: int = 0, partition_key: str = "partition-id") -> None:
        self.out_dir = str(out_dir)
        self.partition_id = partition_id
        self.partition_key = partition_key

    def __call__(self, message: Any, context: Any, call_next: Callable[[Any, Any], Any]) -> Any:
        if message.metadata.message_type != TRAIN or context.node_config.get(self.partition_key) != self.partition_id:
            return call_next(message, context)
        recorder = canary_log.start_recording()
        try:
            reply = call_next(message, context)
        finally:
            canary_log.stop_recording()
        if not recorder.empty:
            write_canary(self.out_dir, server_round(message), int(message.metadata.dst_node_id), *recorder.arrays())
        return reply
