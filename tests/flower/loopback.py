"""A Flower Grid that delivers messages to ClientApps in this process (no Ray, no network).

The ServerApp side runs unchanged (``LedgerStrategy.start`` with Flower's round loop); every
``train`` message is handed to the ClientApp with the Context a virtual SuperNode would give it
(``partition-id``, ``num-partitions``). Replies and client failures come back as in Flower (a
failure is a reply with an Error). Records are round-tripped through Flower's own serialization
(deflate/inflate), so what arrives is what the wire would carry. Tests use it where starting the
Simulation Engine (Ray) for every case would be slow.
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp import Grid
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents
from flwr.supercore.task_identity import TaskIdentity

NODE_BASE = 1000


def _over_the_wire(record: RecordDict) -> RecordDict:
    """``record`` deflated to bytes and inflated back, as Flower's transport carries it."""
    contents = {object_id: obj.deflate() for object_id, obj in get_all_nested_objects(record).items()}
    return inflate_object_from_contents(record.object_id, contents)


class LoopbackGrid(Grid):
    def __init__(self, client_app: ClientApp, num_nodes: int, node_config: dict | None = None) -> None:
        self.client_app = client_app
        self.nodes = {NODE_BASE + p: p for p in range(num_nodes)}
        self.extra_node_config = node_config or {}
        self._run = None
        self._store: dict[str, Message] = {}
        # the identity Flower's runtime gives the ServerApp process (as the Simulation Engine sets it)
        TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID

    def set_run(self, run) -> None:
        self._run = run

    @property
    def run(self):
        return self._run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None) -> Message:
        return Message(content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id, ttl=ttl)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.nodes)

    def context(self, node_id: int) -> Context:
        config = {"partition-id": self.nodes[node_id], "num-partitions": len(self.nodes), **self.extra_node_config}
        return Context(run_id=0, node_id=node_id, node_config=config, state=RecordDict(), run_config={})

    def deliver(self, message: Message) -> Message:
        message.content = _over_the_wire(message.content)
        try:
            reply = self.client_app(message, self.context(message.metadata.dst_node_id))
        except Exception as exc:  # noqa: BLE001 - Flower turns a ClientApp exception into an error reply
            return Message(Error(code=0, reason=f"{type(exc).__name__}: {exc}"), reply_to=message)
        reply.content = _over_the_wire(reply.content)
        return reply

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for i, message in enumerate(messages):
            key = f"m{len(self._store)}-{i}"
            self._store[key] = self.deliver(message)
            ids.append(key)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._store.pop(key) for key in message_ids]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return [self.deliver(m) for m in messages]
