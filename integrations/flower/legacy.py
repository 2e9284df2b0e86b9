"""``LegacyRecordingStrategy``: the recorder for Flower's legacy strategy API
(``flwr.server.strategy``), which SecAgg+ needs in flwr 1.42 (``LegacyContext`` +
``DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(...))``).

Under SecAgg+ the workflow hands the strategy every client's ``FitRes`` carrying the same
unmasked aggregate (the strategy's weighted mean of equal vectors is that aggregate), while each
``num_examples`` and the per-client metrics arrive in the clear: the round is recorded as
``aggregate_only`` with those. Without secure aggregation each client's parameters are recorded.
Legacy parameters are unnamed ndarray lists: arrays are stored as "0", "1", ... in the model's
state-dict order (the replay maps them by position).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import flwr
from flwr.common import FitIns, FitRes, Parameters, parameters_to_ndarrays
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import Strategy

from flaudit.integrations.flower.delegating import DelegatingLegacyStrategy
from flaudit.integrations.flower.recording import Arrays, PendingNode, RecordingWriter, TrainingKeys
from flaudit.integrations.flower.settings import privacy_spent, recorded_settings


def parameters_numpy(parameters: Parameters) -> Arrays:
    return {str(i): array for i, array in enumerate(parameters_to_ndarrays(parameters))}


def hides_updates(results: list[tuple[ClientProxy, FitRes]]) -> bool:
    """True when every result carries the one aggregate object (secure aggregation)."""
    return len(results) > 1 and all(res.parameters is results[0][1].parameters for _, res in results)


class LegacyRecordingStrategy(DelegatingLegacyStrategy):
    def __init__(self, inner: Strategy, out_dir: str | Path, num_rounds: int, training_keys: TrainingKeys = TrainingKeys(),
                 training_defaults: Mapping[str, Any] | None = None, client_app: Any = None) -> None:
        self.inner = inner
        self.num_rounds = num_rounds  # the legacy API has no end-of-run call: the last round finishes the recording
        self.writer = RecordingWriter(out_dir, "legacy", type(inner).__name__, flwr.__version__, training_keys,
                                      training_defaults, recorded_settings(inner, client_app))

    def configure_fit(self, server_round: int, parameters: Parameters, client_manager: ClientManager) -> list[tuple[ClientProxy, FitIns]]:
        pairs = self.inner.configure_fit(server_round, parameters, client_manager)
        nodes = [PendingNode(int(proxy.node_id), dict(fitins.config), parameters_numpy(fitins.parameters)) for proxy, fitins in pairs]
        self.writer.configured(server_round, parameters_numpy(parameters), nodes)
        return pairs

    def aggregate_fit(self, server_round: int, results: list[tuple[ClientProxy, FitRes]], failures: list) -> tuple[Parameters | None, dict]:
        hidden = hides_updates(results)
        for proxy, res in results:
            node = self.writer.pending_node(server_round, int(proxy.node_id))
            if node is None:
                continue
            node.num_examples, node.metrics = int(res.num_examples), dict(res.metrics)
            node.reply = None if hidden else parameters_numpy(res.parameters)
        parameters, metrics = self.inner.aggregate_fit(server_round, results, failures)
        self.writer.update_settings(privacy_spent=privacy_spent(self.inner))
        aggregate = None if parameters is None else parameters_numpy(parameters)
        self.writer.aggregated(server_round, "aggregate_only" if hidden else "per_client", aggregate)
        if server_round >= self.num_rounds:
            self.writer.finish()
        return parameters, metrics
