"""Name -> factory registries, so a config string picks a dataset, model, defense or attack.

A pluggable registry also takes the user's own components, so an audit of *their* federation
needs no change to flaudit: a name ``"package.module:attr"`` imports ``attr`` from that module,
and installed packages may declare entry points in the registry's group (``flaudit.models``,
``flaudit.datasets``, ``flaudit.attacks``, ``flaudit.defenses``), listed with the built-ins.
Both are checked by the registry's ``accept`` before use, so a wrong object is one config
error naming the plugin, not a failure deep inside a job.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
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
    plugin: bool = False  # the user's (import path or entry point), not flaudit's


PLUGIN_SEPARATOR = ":"  # "package.module:attr" names a plugin by import path


def _summary(obj: Any, summary: str) -> str:
    """The given summary, else the object's own ``summary`` string, else its docstring's first line."""
    if not summary and isinstance(getattr(obj, "summary", None), str):
        summary = obj.summary
    lines = (getattr(obj, "__doc__", None) or "").strip().splitlines()
    return summary or (lines[0] if lines else "")


class Registry(Generic[T]):
    """A named collection filled by the ``register`` decorator at import time.

    ``builtins`` are the modules whose import registers the built-in entries: they are imported
    on first use, so a registry and the modules that fill it never import each other.
    ``plugins`` (an entry-point group) makes it pluggable: import paths and that group's entry
    points resolve too. ``accept(name, obj)`` checks a plugin and returns what to register (or
    raises ConfigError); ``names_classes`` sets a registered class's ``name`` to its key.
    """

    def __init__(self, kind: str, builtins: tuple[str, ...] = (), plugins: str | None = None,
                 accept: Callable[[str, Any], T] | None = None, names_classes: bool = False) -> None:
        self.kind = kind
        self.plugins = plugins
        self._builtins = builtins
        self._accept = accept
        self._names_classes = names_classes
        self._entries: dict[str, Entry[T]] = {}
        self._loaded = False

    def register(self, name: str, summary: str = "", plugin: bool = False) -> Callable[[T], T]:
        def add(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            if self._names_classes:
                obj.name = name
            self._entries[name] = Entry(name, obj, _summary(obj, summary), plugin)
            return obj

        return add

    def get(self, name: str) -> T:
        if not isinstance(name, str):
            raise ConfigError(f"a {self.kind} name must be a string, got {name!r}")
        self._load()
        if name not in self._entries and self.plugins and PLUGIN_SEPARATOR in name:
            self._add_plugin(name, _import_object(self.kind, name))
        try:
            return self._entries[name].obj
        except KeyError:
            close = difflib.get_close_matches(name, self._entries, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            plugin = " (or a plugin, \"package.module:attr\")" if self.plugins else ""
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}.{hint} Available{plugin}: {', '.join(self.names())}"
            ) from None

    def is_plugin(self, name: str) -> bool:
        """True for a user's component: its failures are input errors naming the plugin."""
        self.get(name)
        return self._entries[name].plugin

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries

    def names(self) -> list[str]:
        self._load()
        return sorted(self._entries)

    def _add_plugin(self, name: str, obj: Any, plugin: bool = True) -> None:
        """``plugin``: the user's; False for an entry point flaudit itself declares."""
        accepted = self._accept(name, obj) if self._accept else obj
        self.register(name, _summary(obj, ""), plugin=plugin)(accepted)

    def _load(self) -> None:
        """Imports the built-in modules and registers the installed entry points, once."""
        if self._loaded:
            return
        self._loaded = True
        for module in self._builtins:
            importlib.import_module(module)
        if self.plugins is None:
            return
        for point in importlib.metadata.entry_points(group=self.plugins):
            if point.name in self._entries:
                continue  # the same distribution seen twice on the path (an editable install)
            try:
                obj = point.load()
            except Exception as exc:  # a broken plugin is the user's input, named in one line
                raise ConfigError(
                    f"{self.kind} plugin {point.name!r} (entry point {point.value!r} in group "
                    f"{self.plugins!r}) failed to load: {type(exc).__name__}: {exc}"
                ) from None
            self._add_plugin(point.name, obj, plugin=getattr(point.dist, "name", None) != "flaudit")

    def entries(self) -> Iterator[Entry[T]]:
        for name in self.names():
            yield self._entries[name]


def callable_plugin(kind: str) -> Callable[[str, Any], Any]:
    """``accept`` for registries of factories (models, datasets): the plugin must be callable."""

    def accept(name: str, obj: Any) -> Any:
        if not callable(obj):
            raise ConfigError(f"{kind} plugin {name!r} is {obj!r}, not a callable factory")
        return obj

    return accept


def subclass_plugin(kind: str, base: type) -> Callable[[str, Any], Any]:
    """``accept`` for registries of classes (attacks, defenses): a subclass of ``base``."""

    def accept(name: str, obj: Any) -> Any:
        if not (isinstance(obj, type) and issubclass(obj, base)):
            raise ConfigError(f"{kind} plugin {name!r} is {obj!r}, not a subclass of {base.__module__}.{base.__qualname__}")
        return obj

    return accept


def _import_object(kind: str, path: str) -> Any:
    """The object a ``"package.module:attr"`` path names; any failure is one ConfigError."""
    module_name, _, attr = path.partition(PLUGIN_SEPARATOR)
    if not module_name or not attr:
        raise ConfigError(f"{kind} {path!r}: a plugin is named \"package.module:attr\"")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or whatever the user's module raises on import
        raise ConfigError(f"{kind} plugin {path!r}: cannot import {module_name!r}: {type(exc).__name__}: {exc}") from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"{kind} plugin {path!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


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
