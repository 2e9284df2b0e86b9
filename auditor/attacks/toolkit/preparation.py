"""What an attack builds before it observes anything, built once and shared by every cell that
would build the same: Scale-MIA's autoencoder, GGL's generator, the peer attack's prior, RTF's
calibration, PLI's server model and prior. Every defense column of a (scenario, seed) hands
the attacker the same data, so without this each column would train the same model again.

A ``Preparation`` names its builder, its key (JSON-able: everything the result depends on,
tensors by ``tensor_digest``, models by ``model_digest``), the build and a ``Codec`` that
writes the result as tensors and numbers. ``Preparations.get`` returns it from memory, from
its ``PreparationStore`` (the run folder's ``prepared/``, so workers and ``--resume`` share
it) or builds it (then stores it). The build and the decoding run with torch's global RNG
seeded from the key and restored after, so a result is a function of its key alone and the
caller's random stream is the same whether it was built, loaded or remembered; and the value
returned is always the decoded one, so a stored result behaves exactly as a fresh one.
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Generic, Iterable, Protocol, TypeVar

import torch
from torch import nn

from flaudit.core.jsonable import digest, to_json

T = TypeVar("T")
State = dict[str, Any]  # tensors, numbers, strings and lists/dicts of them (torch.load(weights_only=True))
DIGEST_CHARS = 32


@dataclass(frozen=True)
class Codec(Generic[T]):
    """How a prepared value is written (``encode``) and read back (``decode``) as a ``State``."""

    encode: Callable[[T], State]
    decode: Callable[[State], T]


def module_codec(make: Callable[[], nn.Module]) -> Codec[nn.Module]:
    """A trained model by its state dict; decoded into ``make()``, frozen in eval mode (a
    prepared model is used, never trained further)."""

    def decode(state: State) -> nn.Module:
        module = make()
        module.load_state_dict(state)
        return module.eval().requires_grad_(False)

    return Codec(lambda module: dict(module.state_dict()), decode)


TENSOR: Codec[torch.Tensor] = Codec(lambda tensor: {"tensor": tensor}, lambda state: state["tensor"])


@dataclass(frozen=True)
class Preparation(Generic[T]):
    name: str  # the builder, e.g. "ggl.generator"
    key: Any  # JSON-able: everything the result depends on
    build: Callable[[], T]
    codec: Codec[T]

    @property
    def digest(self) -> str:
        """The key's digest; torch's thread count is part of it (it changes float rounding)."""
        return digest([self.name, to_json(self.key), torch.get_num_threads()], DIGEST_CHARS)

    @property
    def seed(self) -> int:
        return int(self.digest[:15], 16)


class PreparationStore(Protocol):
    """Where prepared states outlive a process, by digest."""

    def lock(self, key: str) -> ContextManager[None]: ...

    def load(self, key: str) -> State | None: ...

    def save(self, key: str, state: State) -> None: ...


@dataclass(eq=False)
class Preparations:
    """The attacker's prepared values of one process, backed by ``store`` when there is one.
    A build must not call ``get`` (one lock at a time: no two workers can wait on each other)."""

    store: PreparationStore | None = None
    _memo: dict[str, Any] = field(default_factory=dict)

    def get(self, preparation: Preparation[T]) -> T:
        key = preparation.digest
        if key not in self._memo:
            with self.store.lock(key) if self.store else contextlib.nullcontext():
                state = self.store.load(key) if self.store else None
                if state is None:
                    state = preparation.codec.encode(_seeded(preparation.seed, preparation.build))
                    if self.store:
                        self.store.save(key, state)
            self._memo[key] = _seeded(preparation.seed, lambda: preparation.codec.decode(state))
        return self._memo[key]


IN_PROCESS = Preparations()  # what an attack shares when no run folder backs it (tests, the Python API)


def _seeded(seed: int, work: Callable[[], T]) -> T:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return work()


def tensor_digest(tensors: Iterable[torch.Tensor | None]) -> str:
    """A fingerprint of tensors' dtypes, shapes and values (a key's data part)."""
    h = hashlib.sha256()
    for tensor in tensors:
        if tensor is None:
            h.update(b"none")
            continue
        h.update(str((tensor.dtype, tuple(tensor.shape))).encode())
        h.update(tensor.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def model_digest(model: nn.Module) -> str:
    """A fingerprint of a model's architecture and state (parameters and buffers)."""
    state = model.state_dict()
    return digest([repr(model), list(state), tensor_digest(state.values())], DIGEST_CHARS)
