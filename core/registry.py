"""Name -> factory registries, so a config string picks a dataset, model, defense or attack."""

from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass
from typing import Any, Callable, Generic, Iterator, Mapping, TypeVar

from flaudit.core.errors import ConfigError, UnknownNameError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    obj: T
    summary: str


class Registry(Generic[T]):
    """A named collection filled by the ``register`` decorator at import time."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, summary: str = "") -> Callable[[T], T]:
        def add(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            doc = summary or (getattr(obj, "__doc__", None) or "").strip().splitlines()[0:1]
            text = doc if isinstance(doc, str) else (doc[0] if doc else "")
            self._entries[name] = Entry(name, obj, text)
            return obj

        return add

    def register_class(self, name: str, summary: str = "") -> Callable[[T], T]:
        """Like ``register``, for classes that also carry their registered ``name``."""

        def add(cls: T) -> T:
            cls.name = name
            return self.register(name, summary)(cls)

        return add

    def get(self, name: str) -> T:
        try:
            return self._entries[name].obj
        except KeyError:
            close = difflib.get_close_matches(name, self._entries, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}.{hint} Available: {', '.join(self.names())}"
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entries(self) -> Iterator[Entry[T]]:
        for name in self.names():
            yield self._entries[name]


def check_options(kind: str, name: str, builder: Callable[..., Any], options: Mapping[str, Any],
                  positional: int) -> None:
    """Rejects keyword options a registered builder does not take (after its ``positional``
    leading arguments), naming the option and listing the accepted ones."""
    accepted = list(inspect.signature(builder).parameters)[positional:]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigError(
            f"{kind} {name!r} has no option {unknown[0]!r}; it takes: {', '.join(accepted) or 'none'}"
        )
