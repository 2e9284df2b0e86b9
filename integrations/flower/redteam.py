"""Red-team servers for Flower: model crafting (RTF, Scale-MIA) on either API, and the
inconsistency attack under SecAgg+.

``CraftingStrategy(inner, crafter)`` (message API) and ``LegacyCraftingStrategy`` (legacy API,
SecAgg+) send every node the model a ``crafting.ModelCrafter`` crafts from the global arrays
with a flaudit malicious-server attack, and hand it the aggregate Flower returns (under SecAgg+
the server sees nothing else); a new architecture travels as ``crafting.ARCHITECTURE`` in the
config. A round whose crafted model diverged, or that no client trained, is the attack's
failure, and the federation keeps the round's global arrays. Wrap either in the recording
strategy, so the recording shows what was sent; ``redteam_scoring`` scores the rounds against
the canary's batches and the attack's nulls.

``IsolatingStrategy(inner, target_partition, lr_key)`` sends every node but the target
``lr = 0`` (the server chooses each node's config; SecAgg+ does not bind it to one), so the
aggregate SecAgg+ reveals is the target's update times its sample share; ``num_examples``
arrive unmasked, so the server divides the share out (``isolated[round]``: the target's model
after local training). Wrap it in ``LegacyRecordingStrategy`` and the recording shows what was
sent to whom; flaudit's ``inconsistency`` attack then audits the recorded rounds.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common import FitIns, Parameters, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.strategy import Strategy
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy as MessageStrategy

from flaudit.integrations.flower.delegating import DelegatingLegacyStrategy, DelegatingStrategy
from flaudit.integrations.flower.crafting import ARCHITECTURE, MODULE_KEY, ModelCrafter, architecture_blob
from flaudit.integrations.flower.legacy import parameters_numpy
from flaudit.integrations.flower.recording import TrainingKeys
from flaudit.integrations.flower.replay import spec_from_config
from flaudit.integrations.flower.strategy import array_record_numpy, named_record
from flaudit.scenarios.views import TrainingSpec


def state_arrays(model) -> list[np.ndarray]:
    return [value.detach().cpu().numpy() for value in model.state_dict().values()]


class _Crafting:
    """What both APIs' crafting strategies share: the crafter, the training spec the server
    sent, and the round's global arrays to fall back on."""

    def __init__(self, crafter: ModelCrafter, training_keys: TrainingKeys, training_defaults: Mapping[str, Any] | None) -> None:
        self.crafter = crafter
        self.training_keys, self.training_defaults = training_keys, dict(training_defaults or {})
        self.training: dict[int, TrainingSpec] = {}
        self.starting: dict[int, Any] = {}  # round -> its global arrays, kept where the attack fails

    def spec(self, config: Mapping[str, Any]) -> TrainingSpec:
        return spec_from_config(config, self.training_keys, self.training_defaults, self.crafter.knowledge.training)

    def architecture(self, model) -> bytes | None:
        return architecture_blob(model) if self.crafter.changes_architecture(model) else None


class CraftingStrategy(DelegatingStrategy, _Crafting):
    """Message API (``flwr.serverapp``): ``Recording(CraftingStrategy(FedAvg(...), crafter))``."""

    def __init__(self, inner: MessageStrategy, crafter: ModelCrafter, training_keys: TrainingKeys = TrainingKeys(),
                 training_defaults: Mapping[str, Any] | None = None, config_key: str = "config",
                 weighted_by_key: str = "num-examples") -> None:
        _Crafting.__init__(self, crafter, training_keys, training_defaults)
        self.inner, self.config_key, self.weighted_by_key = inner, config_key, weighted_by_key

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        crafted = self.crafter.craft(server_round, array_record_numpy(arrays))
        self.starting[server_round] = arrays
        messages = list(self.inner.configure_train(server_round, ArrayRecord(crafted.state_dict()), config, grid))
        blob = self.architecture(crafted)
        for message in messages if blob is not None else ():
            message.content[ARCHITECTURE] = ConfigRecord({MODULE_KEY: blob})
        if messages:
            sent = named_record(messages[0].content.config_records, self.config_key, "ConfigRecord")
            self.training[server_round] = self.spec(dict(sent))
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        arrays, metrics = self.inner.aggregate_train(server_round, replies)
        trained = [r for r in replies if not r.has_error()]
        counts = [{k: v for rec in r.content.metric_records.values() for k, v in rec.items()}.get(self.weighted_by_key, 0)
                  for r in trained]
        observed = self.crafter.observe(
            server_round, tuple(int(r.metadata.src_node_id) for r in trained), tuple(int(c) for c in counts),
            self.training.pop(server_round, self.crafter.knowledge.training), None if arrays is None else array_record_numpy(arrays),
        )
        starting = self.starting.pop(server_round)
        return (starting if observed.failure else arrays), metrics


class LegacyCraftingStrategy(DelegatingLegacyStrategy, _Crafting):
    """Legacy API (``flwr.server.strategy``), the one SecAgg+ runs with: the strategy sees only
    the secure aggregate (and the unmasked ``num_examples``), which is all the attack reads."""

    def __init__(self, inner: Strategy, crafter: ModelCrafter, training_keys: TrainingKeys = TrainingKeys(),
                 training_defaults: Mapping[str, Any] | None = None) -> None:
        _Crafting.__init__(self, crafter, training_keys, training_defaults)
        self.inner = inner

    def configure_fit(self, server_round: int, parameters: Parameters, client_manager):
        crafted = self.crafter.craft(server_round, parameters_numpy(parameters))
        self.starting[server_round] = parameters
        pairs = self.inner.configure_fit(server_round, ndarrays_to_parameters(state_arrays(crafted)), client_manager)
        blob = self.architecture(crafted)
        sent = []
        for proxy, fitins in pairs:
            config = dict(fitins.config)
            if blob is not None:
                config[ARCHITECTURE] = blob
            sent.append((proxy, FitIns(fitins.parameters, config)))
        if sent:
            self.training[server_round] = self.spec(sent[0][1].config)
        return sent

    def aggregate_fit(self, server_round: int, results, failures):
        parameters, metrics = self.inner.aggregate_fit(server_round, results, failures)
        observed = self.crafter.observe(
            server_round, tuple(int(proxy.node_id) for proxy, _ in results), tuple(int(res.num_examples) for _, res in results),
            self.training.pop(server_round, self.crafter.knowledge.training),
            None if parameters is None else parameters_numpy(parameters),
        )
        starting = self.starting.pop(server_round)
        return (starting if observed.failure else parameters), metrics


class IsolatingStrategy(DelegatingLegacyStrategy):
    def __init__(self, inner: Strategy, target_node: Any, lr_key: str = "lr") -> None:
        """``target_node(node_id) -> bool`` picks the node to isolate."""
        self.inner = inner
        self.target_node = target_node
        self.lr_key = lr_key
        self.sent: dict[int, list[np.ndarray]] = {}
        self.isolated: dict[int, list[np.ndarray]] = {}  # round -> the target's trained model

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
