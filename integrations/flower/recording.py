"""The on-disk recording of a federation (format ``flaudit.flower-recording``, version 1).

A recording is a folder written while the federation runs; nothing in it needs Flower to read:

    recording.json                  the manifest (JSON Schema: schemas/recording.schema.json)
    rounds/0001/global.npz          the global arrays the server started round 1 with
    rounds/0001/sent-<node>.npz     arrays sent to one node, only where they differ from global
    rounds/0001/reply-<node>.npz    a node's reply arrays (absent where only the aggregate exists)
    rounds/0001/aggregate.npz       the arrays the strategy aggregated
    canary/0001-<node>.npz, .json   the canary's batches of round 1 (images, labels, batch number)

Arrays are numpy ``.npz`` files keyed by the model's state-dict names. The manifest lists, per
round, the config the server sent each node, each reply's ``num_examples`` and metrics, and the
sha256 of every file it names; it is rewritten (atomically) after every round, so a recording of
a run that was killed holds the finished rounds and says ``"finished": false``. The loader checks
the manifest against the schema, every file's presence and digest, and names what is wrong:
another format, a newer version, a truncated or missing file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Mapping

import numpy as np

from flaudit.core.errors import FlauditError

FORMAT = "flaudit.flower-recording"
VERSION = 1
MANIFEST = "recording.json"
CANARY_DIR = "canary"
MAX_INLINE_BYTES = 1024  # a config value of more bytes is recorded by digest

Arrays = dict[str, np.ndarray]
Aggregation = Literal["per_client", "aggregate_only"]


class RecordingError(FlauditError):
    """A recording folder that cannot be read: missing, foreign, truncated or corrupt."""


@dataclass(frozen=True)
class TrainingKeys:
    """Which keys of the config the server sends name the local-training hyperparameters."""

    lr: str = "lr"
    epochs: str = "local-epochs"
    batch_size: str = "batch-size"
    momentum: str = "momentum"
    weight_decay: str = "weight-decay"


@dataclass(frozen=True)
class NodeRound:
    """What the server sent one node in one round and what came back."""

    node_id: int
    config: dict[str, Any]
    sent: Arrays | None  # None: the round's global arrays
    reply: Arrays | None  # None: hidden by secure aggregation, or no reply
    num_examples: int | None
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CanaryRound:
    """A consenting client's own batches of one round, in training order."""

    node_id: int
    images: np.ndarray  # float32 [N, C, H, W]
    labels: np.ndarray  # int64 [N]
    batch: np.ndarray  # int64 [N]: the local step each sample was used in

    def __post_init__(self) -> None:
        if not (len(self.images) == len(self.labels) == len(self.batch)):
            raise RecordingError(
                f"canary batches of node {self.node_id}: {len(self.images)} images, "
                f"{len(self.labels)} labels, {len(self.batch)} batch numbers"
            )


@dataclass(frozen=True)
class RecordedRound:
    round: int  # Flower's server round, from 1
    aggregation: Aggregation
    global_arrays: Arrays
    aggregate: Arrays | None
    nodes: tuple[NodeRound, ...]
    canary: CanaryRound | None = None

    def node(self, node_id: int) -> NodeRound:
        for entry in self.nodes:
            if entry.node_id == node_id:
                return entry
        raise RecordingError(f"round {self.round}: node {node_id} took no part")


@dataclass(frozen=True)
class Recording:
    path: Path
    api: Literal["message", "legacy"]
    strategy: str
    flwr_version: str
    training_keys: TrainingKeys
    training_defaults: dict[str, Any]
    finished: bool
    rounds: tuple[RecordedRound, ...]
    settings: dict[str, Any] = field(default_factory=dict)  # the strategy's own settings (DP, ...)


# ---- writing ----------------------------------------------------------------------------------


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            write(stream)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _save_arrays(root: Path, relative: str, arrays: Mapping[str, np.ndarray]) -> dict[str, str]:
    path = root / relative
    _atomic_write(path, lambda stream: np.savez(stream, **{k: np.asarray(v) for k, v in arrays.items()}))
    return {"file": relative, "sha256": _sha256(path)}


def _save_json(path: Path, document: Any) -> None:
    text = json.dumps(document, indent=1, sort_keys=False).encode()
    _atomic_write(path, lambda stream: stream.write(text))


def jsonable(value: Any) -> Any:
    """A config or metric value as JSON (Flower's records hold scalars, strings, bytes, lists);
    bytes as hex, or past ``MAX_INLINE_BYTES`` as their sha256 and size."""
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, bytes):  # a large blob (a pickled architecture the server sent) by its digest only
        if len(value) > MAX_INLINE_BYTES:
            return {"bytes_sha256": hashlib.sha256(value).hexdigest(), "size": len(value)}
        return {"bytes_hex": value.hex()}
    if isinstance(value, np.generic):
        return value.item()
    return value


def same_arrays(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@dataclass
class PendingNode:
    node_id: int
    config: dict[str, Any]
    sent: Arrays
    reply: Arrays | None = None
    num_examples: int | None = None
    metrics: dict[str, Any] = field(default_factory=dict)


class RecordingWriter:
    """Writes one recording; the strategy wrappers call it once per configured and aggregated
    round. Refuses a folder that already holds a recording (one run, one recording)."""

    def __init__(self, out_dir: str | Path, api: str, strategy: str, flwr_version: str,
                 training_keys: TrainingKeys = TrainingKeys(), training_defaults: Mapping[str, Any] | None = None,
                 settings: Mapping[str, Any] | None = None) -> None:
        self.root = Path(out_dir)
        if (self.root / MANIFEST).exists():
            raise RecordingError(f"{self.root} already holds a recording; record each run into a new folder")
        self.root.mkdir(parents=True, exist_ok=True)
        self.manifest: dict[str, Any] = {
            "format": FORMAT, "version": VERSION, "api": api, "strategy": strategy, "flwr_version": flwr_version,
            "training_keys": dataclasses.asdict(training_keys),
            "training_defaults": {k: jsonable(v) for k, v in (training_defaults or {}).items()},
            "settings": {k: jsonable(v) for k, v in (settings or {}).items()},
            "finished": False, "rounds": [],
        }
        self.pending: dict[int, tuple[Arrays, dict[int, PendingNode]]] = {}
        self._flush()

    def _flush(self) -> None:
        _save_json(self.root / MANIFEST, self.manifest)

    def configured(self, server_round: int, global_arrays: Arrays, nodes: list[PendingNode]) -> None:
        self.pending[server_round] = (global_arrays, {n.node_id: n for n in nodes})

    def pending_node(self, server_round: int, node_id: int) -> PendingNode | None:
        return self.pending.get(server_round, ({}, {}))[1].get(node_id)

    def aggregated(self, server_round: int, aggregation: Aggregation, aggregate: Arrays | None) -> None:
        """Writes round ``server_round``'s files and adds it to the manifest."""
        global_arrays, nodes = self.pending.pop(server_round)
        folder = f"rounds/{server_round:04d}"
        entry: dict[str, Any] = {
            "round": server_round, "aggregation": aggregation,
            "global": _save_arrays(self.root, f"{folder}/global.npz", global_arrays),
            "aggregate": None if aggregate is None else _save_arrays(self.root, f"{folder}/aggregate.npz", aggregate),
            "nodes": [],
        }
        for node in sorted(nodes.values(), key=lambda n: n.node_id):
            differs = not same_arrays(node.sent, global_arrays)
            entry["nodes"].append({
                "node_id": node.node_id,
                "config": {k: jsonable(v) for k, v in node.config.items()},
                "sent": _save_arrays(self.root, f"{folder}/sent-{node.node_id}.npz", node.sent) if differs else None,
                "reply": None if node.reply is None
                else _save_arrays(self.root, f"{folder}/reply-{node.node_id}.npz", node.reply),
                "num_examples": node.num_examples,
                "metrics": {k: jsonable(v) for k, v in node.metrics.items()},
            })
        self.manifest["rounds"].append(entry)
        self._flush()

    def update_settings(self, **settings: Any) -> None:
        """Adds to the recorded settings (written with the next round or ``finish``)."""
        self.manifest["settings"].update({k: jsonable(v) for k, v in settings.items()})

    def finish(self) -> None:
        self.manifest["finished"] = True
        self._flush()


def write_canary(out_dir: str | Path, server_round: int, node_id: int, images: np.ndarray, labels: np.ndarray,
                 batch: np.ndarray) -> Path:
    """The canary's batches of one round, beside the recording (or in a folder merged into it)."""
    root = Path(out_dir)
    stem = f"{CANARY_DIR}/{server_round:04d}-{node_id}"
    saved = _save_arrays(root, f"{stem}.npz", {"images": images, "labels": labels, "batch": batch})
    sidecar = {"format": FORMAT, "version": VERSION, "kind": "canary", "round": server_round, "node_id": node_id,
               "samples": int(len(labels)), "batches": int(batch.max() + 1) if len(batch) else 0, **saved}
    path = root / f"{stem}.json"
    _save_json(path, sidecar)
    return path


# ---- reading ----------------------------------------------------------------------------------


def schema() -> dict[str, Any]:
    text = resources.files("flaudit.integrations.flower").joinpath("schemas/recording.schema.json").read_text()
    return json.loads(text)


def _validate(document: Any, definition: str | None, where: str) -> None:
    import jsonschema

    full = schema()
    target = full if definition is None else {"$defs": full["$defs"], "$ref": f"#/$defs/{definition}"}
    errors = sorted(jsonschema.Draft202012Validator(target).iter_errors(document), key=lambda e: list(e.path))
    if errors:
        first = errors[0]
        at = "/".join(str(p) for p in first.absolute_path) or "(top level)"
        raise RecordingError(f"{where} does not match the recording schema at {at}: {first.message}")


def _read_json(path: Path, what: str) -> Any:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise RecordingError(f"{path}: {what} is missing") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise RecordingError(f"{path}: {what} is not JSON (truncated?): {exc}") from None


def _check_identity(document: Any, where: str) -> None:
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        found = document.get("format") if isinstance(document, dict) else type(document).__name__
        raise RecordingError(f"{where} is not a flaudit Flower recording (format {found!r}, expected {FORMAT!r})")
    if document.get("version") != VERSION:
        raise RecordingError(
            f"{where} is version {document.get('version')!r} of {FORMAT}; this flaudit reads version {VERSION}"
        )


def _load_arrays(root: Path, entry: Mapping[str, str]) -> Arrays:
    path = root / entry["file"]
    if not path.is_file():
        raise RecordingError(f"{path} is missing (the recording is incomplete)")
    if _sha256(path) != entry["sha256"]:
        raise RecordingError(f"{path} does not match its sha256 in {MANIFEST} (truncated or modified)")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except Exception as exc:  # noqa: BLE001 - any unreadable array file is the same user problem
        raise RecordingError(f"{path} is not a readable .npz file: {exc}") from None


def _load_canaries(root: Path) -> dict[int, CanaryRound]:
    canaries: dict[int, CanaryRound] = {}
    for sidecar in sorted((root / CANARY_DIR).glob("*.json")):
        document = _read_json(sidecar, "a canary record")
        _check_identity(document, str(sidecar))
        _validate(document, "canary", str(sidecar))
        if document["round"] in canaries:
            raise RecordingError(f"{sidecar}: a second canary for round {document['round']}; one canary per recording")
        arrays = _load_arrays(root, document)
        canaries[document["round"]] = CanaryRound(
            document["node_id"], arrays["images"].astype(np.float32), arrays["labels"].astype(np.int64),
            arrays["batch"].astype(np.int64),
        )
    return canaries


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The checked manifest of the recording in folder ``path``, without its arrays."""
    root = Path(path)
    if not root.is_dir():
        raise RecordingError(f"recording folder {root} does not exist")
    manifest = _read_json(root / MANIFEST, f"the manifest {MANIFEST}")
    _check_identity(manifest, str(root / MANIFEST))
    _validate(manifest, None, str(root / MANIFEST))
    return manifest


def load_recording(path: str | Path) -> Recording:
    """Reads and checks the recording in folder ``path`` (RecordingError names what is wrong)."""
    root = Path(path)
    manifest = read_manifest(root)
    if not manifest["rounds"]:
        raise RecordingError(f"{root} holds no finished round (the run stopped before its first aggregation)")
    canaries = _load_canaries(root)
    rounds = []
    for entry in manifest["rounds"]:
        nodes = tuple(
            NodeRound(
                n["node_id"], n["config"], None if n["sent"] is None else _load_arrays(root, n["sent"]),
                None if n["reply"] is None else _load_arrays(root, n["reply"]), n["num_examples"], n["metrics"],
            )
            for n in entry["nodes"]
        )
        canary = canaries.get(entry["round"])
        if canary is not None and canary.node_id not in {n.node_id for n in nodes}:
            raise RecordingError(f"round {entry['round']}: the canary (node {canary.node_id}) is not among its nodes")
        rounds.append(RecordedRound(
            entry["round"], entry["aggregation"], _load_arrays(root, entry["global"]),
            None if entry["aggregate"] is None else _load_arrays(root, entry["aggregate"]), nodes, canary,
        ))
    numbers = [r.round for r in rounds]
    if numbers != sorted(set(numbers)):
        raise RecordingError(f"{root / MANIFEST}: rounds {numbers} are not distinct and in order")
    return Recording(
        root, manifest["api"], manifest["strategy"], manifest["flwr_version"], TrainingKeys(**manifest["training_keys"]),
        manifest["training_defaults"], manifest["finished"], tuple(rounds), manifest["settings"],
    )
