"""Plain-JSON forms of config values (dataclasses, paths, tuples, tensors' scalars)."""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import math
from pathlib import Path
from typing import Any, Mapping


def to_json(value: Any) -> Any:
    """``value`` as JSON-ready data; non-finite floats become None (JSON has no inf/NaN)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value) if isinstance(value, (set, frozenset)) else value
        return [to_json(v) for v in items]
    if isinstance(value, enum.Enum):
        return to_json(value.value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if hasattr(value, "item"):  # numpy / torch scalars
        return to_json(value.item())
    return repr(value)


def digest(value: Any, length: int = 16) -> str:
    """A stable hex digest of ``value``'s JSON form (key order does not matter)."""
    text = json.dumps(to_json(value), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:length]
