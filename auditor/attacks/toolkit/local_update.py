"""A FedAvg client's local training, simulated differentiably: the core of every attack that
matches a dummy dataset's update to an observed one (DLG, iDLG, Inverting Gradients, DLF, and
the generator and peer attacks built on them).

``simulate_update`` replays what ``scenarios.client.train_client`` does (E epochs of
mini-batch SGD with momentum and weight decay, mean cross-entropy, BatchNorm in train mode)
with ``torch.func.functional_call``, so the result stays a function of the dummy images and
(soft) labels and the attacker can differentiate through every local step. The real client
shuffles its data each epoch with a seed the server does not know; the simulation uses a
fixed, documented batch order instead (or the caller's own per-epoch orders). A single
gradient is the special case E=1, N <= B: the update is then ``-lr * gradient``.

Memory: past ``GRAPH_STEPS`` local steps the simulation keeps no step's graph; its backward
pass recomputes the steps (``_Replay``), so a client of 480 images at B=1 costs O(log T)
parameter copies instead of 480 steps' graphs (24 GB for the study's CNN at 32x32).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.func import functional_call, vmap

from flaudit.core.errors import ConfigError
from flaudit.scenarios.updates import ParamLayout
from flaudit.scenarios.views import TrainingSpec


def simulate_update(
    model: nn.Module,
    layout: ParamLayout,
    training: TrainingSpec,
    images: Tensor,
    labels: Tensor,
    *,
    create_graph: bool = True,
    order: Tensor | None = None,
) -> Tensor:
    """The flat update (layout order, trained - start) a client holding ``images`` with
    ``labels`` would upload after ``training.epochs`` epochs of ``ceil(N / B)`` SGD steps.

    ``images``: ``[N, C, H, W]`` (every epoch sees the same images) or ``[E, N, C, H, W]`` (one
    copy per epoch, DLF's parametrisation). ``labels``: class ids ``[N]`` or probabilities
    ``[N, num_classes]``. Batch order: epoch e's k-th batch holds samples
    ``order[e, k*B:(k+1)*B]``; by default ``order[e] = 0..N-1`` in every epoch (the last batch
    of an epoch is the short one, as in the real loader). Parameter entries are differentiable
    w.r.t. images and soft labels (with ``create_graph``); BatchNorm running statistics are
    updated exactly as the real client's are, without gradient (they are detached statistics
    in the real client too).
    """
    return torch.cat(_simulate(model, layout, training, images, labels, 0, create_graph, order))


def simulate_updates(
    model: nn.Module, layout: ParamLayout, training: TrainingSpec, images: Tensor, labels: Tensor, *,
    order: Tensor | None = None,
) -> list[Tensor]:
    """``simulate_update`` of R dummy datasets at once (an attack's restarts): ``images``
    ``[R, N, C, H, W]`` (or ``[R, E, N, C, H, W]``), the same ``labels`` and ``order`` for all.
    Returns the update per layout entry, ``[R, numel]`` each (``torch.cat(pieces, 1)`` is
    ``[R, P]``, each row its restart's ``simulate_update``; ``piecewise_distance`` reads the
    pieces without that copy). One pass: the model runs under ``torch.func.vmap`` with
    per-restart parameters and BatchNorm statistics, so the per-operation cost that dominates
    small models is paid once (``restarts_per_pass``)."""
    if images.shape[0] == 1:
        return [piece[None] for piece in _simulate(model, layout, training, images[0], labels, 0, True, order)]
    return _simulate(model, layout, training, images, labels, images.shape[0], True, order)


def restarts_per_pass(model: nn.Module) -> int:
    """How many restarts of ``model`` one ``simulate_updates`` pass should simulate: as many as
    fit in ``RESTART_PASS_BYTES`` of parameters (at least one)."""
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    return max(1, RESTART_PASS_BYTES // max(size, 1))


def _simulate(
    model: nn.Module, layout: ParamLayout, training: TrainingSpec, images: Tensor, labels: Tensor, restarts: int,
    create_graph: bool, order: Tensor | None,
) -> list[Tensor]:
    """The update's pieces (layout order) of ``simulate_update`` (``restarts`` 0) or
    ``simulate_updates`` (``restarts`` R >= 2: every tensor of the simulation has a leading
    restart dimension)."""
    epochs, lead = training.epochs, 1 if restarts else 0
    n, per_epoch = images.shape[-4] if images.dim() >= 4 else 0, images.dim() - lead == 5
    if images.dim() - lead not in (4, 5) or n == 0 or (per_epoch and images.shape[lead] != epochs):
        r = "R, " if restarts else ""
        raise ConfigError(
            f"simulate_update: images must be [{r}N, C, H, W] or [{r}epochs={epochs}, N, C, H, W] with N >= 1, "
            f"got {tuple(images.shape)}"
        )
    if labels.shape[0] != n or labels.dim() not in (1, 2):
        raise ConfigError(f"simulate_update: {n} images but labels of shape {tuple(labels.shape)}")
    if order is not None and tuple(order.shape) != (epochs, n):
        raise ConfigError(f"simulate_update: order must be [{epochs}, {n}], got {tuple(order.shape)}")

    start = {name: _batched(p.detach(), restarts) for name, p in model.named_parameters()}
    buffers = {name: _batched(b.detach(), restarts).clone() for name, b in model.named_buffers()}
    batch = training.batch_size
    in_order = [slice(first, first + batch) for first in range(0, n, batch)]  # views, not gathers
    steps = tuple((e, b) for e in range(epochs) for b in (in_order if order is None else order[e].split(batch)))
    run = _Run(model, training, steps, images, labels, per_epoch, restarts)
    # a graph w.r.t. the images or soft labels only: the start parameters are constants
    create_graph = create_graph and (images.requires_grad or labels.requires_grad)
    replay = create_graph and len(steps) > GRAPH_STEPS
    with train_mode(model):
        if replay:
            params = dict(zip(start, _Replay.apply(images, labels, run, start, buffers)))
        else:
            params = run.forward(_State.initial(start, create_graph), buffers, create_graph).params
    start_buffers = dict(model.named_buffers())
    pieces = [
        params[name] - start[name] if is_param else (buffers[name] - start_buffers[name]).float()
        for name, is_param in zip(layout.names, layout.is_parameter)
    ]
    shape = (restarts, -1) if restarts else (-1,)
    return [p.reshape(shape) for p in pieces]


@contextlib.contextmanager
def train_mode(model: nn.Module) -> Iterator[None]:
    """``model`` in train mode (as the client trains it: BatchNorm on batch statistics, dropout
    on) for the block; the modules that were in eval mode go back to it."""
    evaluating = [module for module in model.modules() if not module.training]
    for module in evaluating:
        module.train(True)
    try:
        yield
    finally:
        for module in evaluating:
            module.train(False)


def _batched(tensor: Tensor, restarts: int) -> Tensor:
    """``tensor`` for every restart (a view: the simulation never writes into it)."""
    return tensor.expand(restarts, *tensor.shape) if restarts else tensor


GRAPH_STEPS = 4  # up to this many local steps the graph of every step is kept (no recomputation)
# Parameters of the restarts one batched pass simulates: past the CPU's caches a batch of
# restarts costs more than the restarts one by one (benches/bench_inverting_gradients.py: the
# digits CNN's 0.6 MB batch four at a time, the 32x32 CNN's 8.5 MB run alone).
RESTART_PASS_BYTES = 4 * 2**20
REPLAY_BYTES = 256 * 2**20  # states (parameters + momentum) one replayed stretch may store; longer ones are bisected


@dataclass(frozen=True)
class _State:
    """Parameters and momentum buffers between two local steps (``velocity`` lacks a name
    until the step that first moves it, as in torch's SGD)."""

    params: dict[str, Tensor]
    velocity: dict[str, Tensor]

    @staticmethod
    def initial(start: dict[str, Tensor], create_graph: bool) -> "_State":
        return _State({name: p.detach().requires_grad_(create_graph) for name, p in start.items()}, {})


Batch = slice | Tensor  # one local step's samples: a range in the default order, indices in another


@dataclass(frozen=True)
class _Run:
    """The simulated local training as a sequence of steps (epoch, batch indices) over images
    ``[N, ...]`` (or one copy per epoch, ``[E, N, ...]``, with ``per_epoch``) and labels."""

    model: nn.Module
    training: TrainingSpec
    steps: tuple[tuple[int, Batch], ...]
    images: Tensor
    labels: Tensor
    per_epoch: bool
    restarts: int = 0  # R >= 2: images, parameters and buffers have a leading restart dimension

    def _at(self, epoch: int, batch: Batch) -> tuple:
        """The index of epoch ``epoch``'s samples ``batch`` in the images (per restart when batched)."""
        return (slice(None),) * bool(self.restarts) + (epoch,) * self.per_epoch + (batch,)

    def batch_of(self, images: Tensor, epoch: int, batch: Batch) -> Tensor:
        return images[self._at(epoch, batch)]

    def add_batch(self, total: Tensor, epoch: int, batch: Batch, values: Tensor) -> None:
        """``batch_of(total, ...) += values``, in place (a batch never repeats a sample)."""
        total[self._at(epoch, batch)] += values

    def loss(self, params: dict[str, Tensor], buffers: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        """Mean cross-entropy of the batch; batched, the sum over restarts of each one's mean
        (its gradient w.r.t. a restart's parameters is that restart's alone)."""
        if not self.restarts:
            return F.cross_entropy(functional_call(self.model, (params, buffers), (x,)), y)
        logits = vmap(lambda p, b, images: functional_call(self.model, (p, b), (images,)), randomness="different")(
            params, buffers, x
        )
        targets = y.expand(self.restarts, *y.shape).flatten(0, 1)
        return F.cross_entropy(logits.flatten(0, 1), targets, reduction="sum") / y.shape[0]

    def step(self, state: _State, x: Tensor, y: Tensor, buffers: dict[str, Tensor], create_graph: bool) -> _State:
        params = state.params if create_graph else {k: p.detach().requires_grad_() for k, p in state.params.items()}
        velocity = dict(state.velocity)
        return _State(sgd_step(params, self.loss(params, buffers, x, y), velocity, self.training, create_graph), velocity)

    def forward(
        self, state: _State, buffers: dict[str, Tensor], create_graph: bool, first: int = 0, last: int | None = None
    ) -> _State:
        """The state after steps ``first..last-1`` from ``state`` (with or without their graph)."""
        images, labels = (self.images, self.labels) if create_graph else (self.images.detach(), self.labels.detach())
        for epoch, batch in self.steps[first:last]:
            state = self.step(state, self.batch_of(images, epoch, batch), labels[batch], buffers, create_graph)
        return state


class _Replay(torch.autograd.Function):
    """The simulated training without its graph: the forward pass keeps no step's graph; the
    backward pass recomputes the states by bisection (O(log T) states held, plus one stretch of
    S = REPLAY_BYTES / state size steps) and back-propagates through one rebuilt step at a
    time, so peak memory does not grow with the number of local steps T (O(log T) states),
    for about 1 + log2(T / S) / 2 extra gradient-free steps per step."""

    @staticmethod
    def forward(ctx, images, labels, run: _Run, start: dict[str, Tensor], buffers: dict[str, Tensor]):
        scratch = {name: b.clone() for name, b in buffers.items()}  # train-mode BatchNorm never reads them
        with torch.enable_grad():
            final = run.forward(_State.initial(start, False), buffers, False)  # updates ``buffers`` as the client's
        ctx.replay = _Backward(run, start, scratch, ctx.needs_input_grad[0], ctx.needs_input_grad[1])
        return tuple(final.params[name].detach() for name in start)

    @staticmethod
    @once_differentiable
    def backward(ctx, *grad_params):
        return (*ctx.replay(grad_params), None, None, None)


class _Backward:
    """The backward pass of ``_Replay``: accumulates the gradients of the images and (soft)
    labels while it walks the steps from the last to the first."""

    def __init__(self, run: _Run, start: dict[str, Tensor], scratch: dict[str, Tensor], images: bool, labels: bool):
        self.run, self.start, self.scratch = run, start, scratch
        self.want_images, self.want_labels = images, labels and run.labels.is_floating_point()
        state_bytes = 2 * sum(p.numel() * p.element_size() for p in start.values())
        self.stretch = max(2, REPLAY_BYTES // max(state_bytes, 1))

    def __call__(self, grad_params: tuple[Tensor | None, ...]) -> tuple[Tensor | None, Tensor | None]:
        run = self.run
        self.grad_images = torch.zeros_like(run.images) if self.want_images else None
        self.grad_labels = torch.zeros_like(run.labels) if self.want_labels else None
        adjoint = {name: torch.zeros_like(p) if g is None else g for (name, p), g in zip(self.start.items(), grad_params)}
        with torch.enable_grad():
            self.walk(0, len(run.steps), _State.initial(self.start, False), _State(adjoint, {}))
        return self.grad_images, self.grad_labels

    def walk(self, first: int, last: int, state: _State, adjoint: _State) -> _State:
        """Back-propagates ``adjoint`` (the gradient w.r.t. the state after step ``last - 1``)
        through steps ``first..last-1`` from ``state``; returns the adjoint of ``state``."""
        if last - first > self.stretch:
            middle = (first + last) // 2
            halfway = self.run.forward(state, self.scratch, False, first, middle)
            adjoint = self.walk(middle, last, halfway, adjoint)
            return self.walk(first, middle, state, adjoint)
        states = [state]
        for index in range(first, last - 1):
            states.append(self.run.forward(states[-1], self.scratch, False, index, index + 1))
        for index in reversed(range(first, last)):
            adjoint = self.step_backward(index, states[index - first], adjoint)
        return adjoint

    def step_backward(self, index: int, state: _State, adjoint: _State) -> _State:
        """The vector-Jacobian product of step ``index`` rebuilt from ``state``."""
        run, (epoch, batch) = self.run, self.run.steps[index]
        params = {name: p.detach().requires_grad_() for name, p in state.params.items()}
        velocity = {name: v.detach().requires_grad_() for name, v in state.velocity.items()}
        x = run.batch_of(run.images, epoch, batch).detach().requires_grad_(self.want_images)
        y = run.labels[batch].detach().requires_grad_(self.want_labels)
        after = run.step(_State(params, velocity), x, y, self.scratch, True)
        outputs, cotangents = [], []
        for name, p in after.params.items():
            outputs.append(p), cotangents.append(adjoint.params[name])
        for name, v in after.velocity.items():
            if name in adjoint.velocity:
                outputs.append(v), cotangents.append(adjoint.velocity[name])
        inputs = [*params.values(), *velocity.values()] + [t for t in (x, y) if t.requires_grad]
        grads = torch.autograd.grad(outputs, inputs, cotangents, allow_unused=True)
        grads = [torch.zeros_like(t) if g is None else g for t, g in zip(inputs, grads)]
        names = list(params)
        new_params = dict(zip(names, grads[: len(names)]))
        new_velocity = dict(zip(velocity, grads[len(names): len(names) + len(velocity)]))
        rest = iter(grads[len(names) + len(velocity):])
        if self.want_images:
            run.add_batch(self.grad_images, epoch, batch, next(rest))
        if self.want_labels:
            self.grad_labels[batch] += next(rest)
        return _State(new_params, new_velocity)


def sgd_step(
    params: dict[str, Tensor], loss: Tensor, velocity: dict[str, Tensor], training: TrainingSpec, create_graph: bool
) -> dict[str, Tensor]:
    """One step of torch's SGD (heavy-ball momentum, no dampening, coupled weight decay),
    written out so the new parameters stay a function of the batch. Updates ``velocity``."""
    grads = torch.autograd.grad(loss, list(params.values()), create_graph=create_graph, allow_unused=True)
    stepped = {}
    for (name, p), g in zip(params.items(), grads):
        if g is None:  # not used in the forward pass: torch's SGD skips it
            stepped[name] = p
            continue
        # torch.add(x, y, alpha=a) as torch's SGD writes it, so the rounding matches the client's
        if training.weight_decay:
            g = torch.add(g, p, alpha=training.weight_decay)
        if training.momentum:
            g = g if name not in velocity else torch.add(training.momentum * velocity[name], g)
            velocity[name] = g
        new = torch.add(p, g, alpha=-training.lr)
        stepped[name] = new if create_graph else new.detach().requires_grad_()
    if not create_graph:
        velocity.update({k: v.detach() for k, v in velocity.items()})
    return stepped


def _l2(candidate: Tensor, observed: Tensor) -> Tensor:
    return (candidate - observed).square().sum(-1)


def _l1(candidate: Tensor, observed: Tensor) -> Tensor:
    return (candidate - observed).abs().sum(-1)


def _cosine(candidate: Tensor, observed: Tensor) -> Tensor:
    return 1 - (candidate * observed).sum(-1) / (candidate.norm(dim=-1) * observed.norm(dim=-1)).clamp(min=1e-30)


Distance = Literal["l2", "l1", "cosine"]
DISTANCES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "l2": _l2,  # DLG, iDLG: squared Euclidean distance
    "l1": _l1,
    "cosine": _cosine,  # Inverting Gradients, DLF: direction only, insensitive to step count and lr
}


def gradient_distance(candidate: Tensor, observed: Tensor, kind: str = "cosine", mask: Tensor | None = None) -> Tensor:
    """Distance ``kind`` (a key of ``DISTANCES``) between two flat updates, over the entries
    ``mask`` selects (all by default; a bool mask or its 0/1 float copy, which saves a
    conversion per call)."""
    if kind not in DISTANCES:
        raise ConfigError(f"unknown gradient distance {kind!r}; choose one of {sorted(DISTANCES)}")
    if candidate.shape != observed.shape:
        raise ConfigError(f"gradient_distance: shapes differ, {tuple(candidate.shape)} vs {tuple(observed.shape)}")
    if mask is not None:  # zeroed entries add nothing to any distance; cheaper than indexing
        candidate, observed = candidate * mask, observed * mask
    return DISTANCES[kind](candidate, observed)


def piecewise_distance(candidate: list[Tensor], observed: list[Tensor], kind: str = "cosine") -> Tensor:
    """``gradient_distance`` of the concatenated pieces ``[R, n_i]`` and ``[n_i]`` (one distance
    per row), without concatenating them: each piece is read once, nothing update-sized is
    written beyond what the backward pass needs."""
    if kind not in DISTANCES:
        raise ConfigError(f"unknown gradient distance {kind!r}; choose one of {sorted(DISTANCES)}")
    if kind != "cosine":
        return sum(DISTANCES[kind](c, o) for c, o in zip(candidate, observed))
    dot = sum(c @ o for c, o in zip(candidate, observed))
    norm = torch.stack([torch.linalg.vector_norm(c, dim=-1) for c in candidate]).square().sum(0).sqrt()
    observed_norm = torch.stack([torch.linalg.vector_norm(o) for o in observed]).square().sum().sqrt()
    return 1 - dot / (norm * observed_norm).clamp(min=1e-30)


def parameter_mask(layout: ParamLayout) -> Tensor:
    """Bool mask over a flat update: True at parameter entries, False at BatchNorm statistics
    (which the simulation reproduces but cannot differentiate)."""
    return torch.cat([torch.full((shape.numel(),), is_param) for shape, is_param in zip(layout.shapes, layout.is_parameter)])
