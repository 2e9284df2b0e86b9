"""``LocalGrid``: a Flower ``Grid`` that delivers every message to a real ``ClientApp`` in this
process, node by node. The ServerApp, strategies, mods and client code are Flower's own; only
the transport (SuperLink, SuperNodes, Ray) is left out, so a federation runs in seconds in a
test and leaves no process behind. ``run_local`` runs a ServerApp on it.
"""

from __future__ import annotations

import copy
import uuid
from typing import Any, Iterable, Mapping

from flwr.app import Context, Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

RUN_ID = 1


class LocalGrid(Grid):
    def __init__(self, client_app: Any, num_nodes: int, run_config: Mapping[str, Any] | None = None) -> None:
        self.client_app = client_app
        self.node_ids = [1000 + i for i in range(num_nodes)]  # Flower's node ids are opaque integers
        run_config = dict(run_config or {})
        self.contexts = {
            node_id: Context(RUN_ID, node_id, {"partition-id": i, "num-partitions": num_nodes}, RecordDict(), run_config)
            for i, node_id in enumerate(self.node_ids)
        }
        self.replies: dict[str, Message] = {}
        self._run = Run.create_empty(RUN_ID)

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.node_ids)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = uuid.uuid4().hex
            message.metadata.__dict__["_run_id"] = RUN_ID
            # Each node gets its own copy, as over the wire: strategies send several nodes one
            # RecordDict, and mods (secaggplus_mod) consume keys of what they receive.
            delivered = copy.deepcopy(message)
            reply = copy.deepcopy(self.client_app(delivered, self.contexts[message.metadata.dst_node_id]))
            reply.metadata.__dict__["_message_id"] = uuid.uuid4().hex
            self.replies[message.metadata.message_id] = reply
            ids.append(message.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self.replies.pop(i) for i in list(message_ids) if i in self.replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))


def run_local(server_app: Any, client_app: Any, num_nodes: int, run_config: Mapping[str, Any] | None = None) -> None:
    """Runs ``server_app`` against ``num_nodes`` in-process nodes of ``client_app``."""
    grid = LocalGrid(client_app, num_nodes, run_config)
    saved = TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = RUN_ID, SUPERLINK_NODE_ID, 0  # who sends messages
    try:
        server_app(grid, Context(RUN_ID, SUPERLINK_NODE_ID, {}, RecordDict(), dict(run_config or {})))
    finally:
        TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved
