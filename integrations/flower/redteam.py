"""A red-team server for Flower's legacy API: the inconsistency attack under SecAgg+.

``IsolatingStrategy(inner, target_partition, lr_key)`` sends every node but the target
``lr = 0`` (the server chooses each node's config; SecAgg+ does not bind it to one), so the
aggregate SecAgg+ reveals is the target's update times its sample share; ``num_examples``
arrive unmasked, so the server divides the share out (``isolated[round]``: the target's model
after local training). Wrap it in ``LegacyRecordingStrategy`` and the recording shows what was
sent to whom; flaudit's ``inconsistency`` attack then audits the recorded rounds.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.common import FitIns, Parameters, parameters_to_ndarrays
from flwr.server.strategy import Strategy


class IsolatingStrategy(Strategy):
    def __init__(self, inner: Strategy, target_node: Any, lr_key: str = "lr") -> None:
        """``target_node(node_id) -> bool`` picks the node to isolate."""
        self.inner = inner
        self.target_node = target_node
        self.lr_key = lr_key
        self.sent: dict[int, list[np.ndarray]] = {}
        self.isolated: dict[int, list[np.ndarray]] = {}  # round -> the target's trained model

    def initialize_parameters(self, client_manager):
        return self.inner.initialize_parameters(client_manager)

    def configure_fit(self, server_round: int, parameters: Parameters, client_manager):
        pairs = self.inner.configure_fit(server_round, parameters, client_manager)
        self.sent[server_round] = parameters_to_ndarrays(parameters)
        crafted = []
        for proxy, fitins in pairs:
            config = dict(fitins.config)
            if not self.target_node(proxy.node_id):
                config[self.lr_key] = 0.0
            crafted.append((proxy, FitIns(fitins.parameters, config)))
        if sum(self.target_node(p.node_id) for p, _ in pairs) != 1:
            raise ValueError("IsolatingStrategy: exactly one sampled node must be the target")
        return crafted

    def aggregate_fit(self, server_round: int, results, failures):
        parameters, metrics = self.inner.aggregate_fit(server_round, results, failures)
        if parameters is not None:
            total = sum(res.num_examples for _, res in results)
            share = sum(res.num_examples for proxy, res in results if self.target_node(proxy.node_id)) / total
            before = self.sent[server_round]
            after = parameters_to_ndarrays(parameters)
            self.isolated[server_round] = [b + (a - b) / share for a, b in zip(after, before)]
        return parameters, metrics

    def configure_evaluate(self, server_round, parameters, client_manager):
        return self.inner.configure_evaluate(server_round, parameters, client_manager)

    def aggregate_evaluate(self, server_round, results, failures):
        return self.inner.aggregate_evaluate(server_round, results, failures)

    def evaluate(self, server_round, parameters):
        return self.inner.evaluate(server_round, parameters)

