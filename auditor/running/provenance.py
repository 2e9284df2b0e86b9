"""Tamper evidence for a run folder: SHA-256 of what went in (the config as written, the data
each scenario read, the code) and of what came out (every stored job result and artifact),
recorded in the manifest so that ``flaudit verify`` can re-check a scorecard against its folder.

The data digest is of the tensors the scenario actually trains and tests on (embedded datasets
have no files), plus each file under ``data_root`` for on-disk datasets up to ``MAX_DATA_FILES``.
The code digest covers every file of the installed flaudit package (sources, schemas, the
compiled extension), so an edited install shows even when git does not track it.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any, Iterable

import torch

from flaudit.auditor.running.config import AuditConfig, default_audit_text
from flaudit.scenarios.kinds import scenario_kind

CONFIG_COPY = "config.toml"  # the config as written, beside the scorecard
DOCUMENT_COPY = "config.json"  # ... when it was handed over as a document, not a file
EMBEDDED = "<embedded default>"
ROOMS = ("core", "scenarios", "defenses", "auditor")
CODE_SUFFIXES = (".py", ".json", ".toml", ".so")
MAX_DATA_FILES = 5000  # beyond this, only the content digest identifies on-disk data
CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while block := stream.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def config_copy(config: AuditConfig) -> tuple[str, bytes]:
    """The config exactly as written and the name its copy gets: the file's bytes or the embedded
    default's text (TOML); a config handed over as a document (the API) as JSON."""
    if config.source == EMBEDDED:
        return CONFIG_COPY, default_audit_text().encode()
    if Path(config.source).is_file():
        return CONFIG_COPY, Path(config.source).read_bytes()
    return DOCUMENT_COPY, json.dumps(config.document, sort_keys=True, indent=1, default=str).encode()


def read_config_copy(name: str, data: bytes) -> dict[str, Any]:
    """The document a copy written by ``config_copy`` holds."""
    return json.loads(data) if name == DOCUMENT_COPY else tomllib.loads(data.decode())


def _tensor_digest(tensors: Iterable[torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(str((tuple(tensor.shape), str(tensor.dtype))).encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _data_files(root: Path) -> dict[str, Any]:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    if len(files) > MAX_DATA_FILES:
        return {"skipped": f"{len(files)} files under {root} (more than {MAX_DATA_FILES}); the content digest identifies the data"}
    return {str(p.relative_to(root)): sha256_file(p) for p in files}


def data_identity(config: AuditConfig) -> dict[str, Any]:
    """Per scenario and seed: the dataset's name and the digest of its train and test tensors;
    per scenario with a ``data_root``: each file's digest."""
    identity = {}
    for spec in config.scenarios:
        entry: dict[str, Any] = {"dataset": spec.config.dataset, "seeds": {}}
        kind = scenario_kind(spec.config.kind)
        for seed in spec.seeds:
            data = kind.build_world(spec.config.replace(seed=seed)).data
            entry["seeds"][str(seed)] = _tensor_digest((data.train.images, data.train.labels, data.test.images, data.test.labels))
        if spec.config.data_root is not None and Path(spec.config.data_root).is_dir():
            entry["data_files"] = _data_files(Path(spec.config.data_root))
        identity[spec.label] = entry
    return identity


def code_identity() -> dict[str, Any]:
    """The digest of every file of the installed flaudit package, path by path."""
    digest, count = hashlib.sha256(), 0
    roots = [("flaudit", resources.files("flaudit"))] + [(room, resources.files(f"flaudit.{room}")) for room in ROOMS]
    seen = set()
    for name, root in roots:
        base = Path(str(root))
        for path in sorted(base.rglob("*")):
            resolved = path.resolve()
            if path.suffix not in CODE_SUFFIXES or "__pycache__" in path.parts or resolved in seen or not path.is_file():
                continue
            seen.add(resolved)
            digest.update(f"{name}/{path.relative_to(base)}\0".encode())
            digest.update(sha256_file(path).encode())
            count += 1
    return {"package_sha256": digest.hexdigest(), "files": count}


def outputs(out: Path, folders: Iterable[str]) -> dict[str, str]:
    """Digest of every stored job result and artifact under ``out``, by relative path."""
    return {
        str(path.relative_to(out)): sha256_file(path)
        for folder in folders for path in sorted((out / folder).glob("*")) if path.is_file() and not path.name.startswith(".")
    }
