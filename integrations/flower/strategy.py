"""``RecordingStrategy``: wraps any strategy of Flower's message API (``flwr.serverapp``) and
records each training round: the global arrays, what each node was sent (arrays and config),
each reply (arrays, ``num-examples``, metrics) and the aggregate the inner strategy returned.

Order with Flower's DP wrappers, which need a plain FedAvg inside: ``Recording(DP(FedAvg))``;
the recording then holds what the clients sent (before server-side clipping) and the noised
aggregate, which is what a server running that DP wrapper sees, and the epsilon its accountant
reports after each round (``settings.privacy_spent``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping

import flwr
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

from flaudit.integrations.flower.delegating import DelegatingStrategy
from flaudit.integrations.flower.recording import Arrays, PendingNode, RecordingWriter, TrainingKeys
from flaudit.integrations.flower.settings import privacy_spent, recorded_settings


def array_record_numpy(record: ArrayRecord) -> Arrays:
    return {key: array.numpy() for key, array in record.items()}


def named_record(records: Mapping[str, Any], key: str, what: str) -> Any:
    if key in records:
        return records[key]
    if len(records) == 1:
        return next(iter(records.values()))
    raise ValueError(f"RecordingStrategy: the message holds {len(records)} {what}s and none is named {key!r}")


class RecordingStrategy(DelegatingStrategy):
    def __init__(self, inner: Strategy, out_dir: str | Path, training_keys: TrainingKeys = TrainingKeys(),
                 training_defaults: Mapping[str, Any] | None = None, arrays_key: str = "arrays",
                 config_key: str = "config", weighted_by_key: str = "num-examples", client_app: Any = None) -> None:
        """``client_app``: the federation's ClientApp, where the server knows it (simulation):
        its DP mods are then recorded and audited."""
        self.inner = inner
        self.arrays_key, self.config_key, self.weighted_by_key = arrays_key, config_key, weighted_by_key
        self.writer = RecordingWriter(out_dir, "message", type(inner).__name__, flwr.__version__, training_keys,
                                      training_defaults, recorded_settings(inner, client_app))

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        messages = list(self.inner.configure_train(server_round, arrays, config, grid))
        nodes = []
        for message in messages:
            content = message.content
            sent = named_record(content.array_records, self.arrays_key, "ArrayRecord")
            configs = content.config_records
            sent_config = dict(named_record(configs, self.config_key, "ConfigRecord")) if configs else {}
            nodes.append(PendingNode(int(message.metadata.dst_node_id), sent_config, array_record_numpy(sent)))
        self.writer.configured(server_round, array_record_numpy(arrays), nodes)
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        for reply in replies:
            node = self.writer.pending_node(server_round, int(reply.metadata.src_node_id))
            if node is None or reply.has_error():
                continue
            content = reply.content
            if content.array_records:
                node.reply = array_record_numpy(named_record(content.array_records, self.arrays_key, "ArrayRecord"))
            metrics = {k: v for record in content.metric_records.values() for k, v in record.items()}
            node.metrics = metrics
            if self.weighted_by_key in metrics:
                node.num_examples = int(metrics[self.weighted_by_key])
        arrays, metrics = self.inner.aggregate_train(server_round, replies)
        self.writer.update_settings(privacy_spent=privacy_spent(self.inner))
        self.writer.aggregated(server_round, "per_client", None if arrays is None else array_record_numpy(arrays))
        return arrays, metrics

    def start(self, *args: Any, **kwargs: Any) -> Result:
        result = super().start(*args, **kwargs)
        self.writer.finish()
        return result
