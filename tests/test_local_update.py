"""The differentiable client simulation against the real client (scenarios/client.py), and the
distances and priors the gradient-matching attacks share."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from flaudit.auditor.attacks.toolkit.image_priors import total_variation
from flaudit.auditor.attacks.toolkit import local_update
from flaudit.auditor.attacks.toolkit.local_update import gradient_distance, parameter_mask, piecewise_distance, simulate_update
from flaudit.scenarios.client import train_client
from flaudit.core.errors import ConfigError
from flaudit.scenarios.models import build_model
from flaudit.scenarios.updates import ParamLayout
from flaudit.scenarios.views import TrainingSpec


def real_update(model, spec: TrainingSpec, images, labels, order=None):
    """What train_client uploads when its loader yields the batches in ``order`` (no shuffle)."""
    layout = ParamLayout.of(model)
    index = torch.arange(len(labels)) if order is None else order
    loader = DataLoader(TensorDataset(images[index], labels[index], index), batch_size=spec.batch_size)
    trained, _ = train_client(0, 0, model, loader, spec, [])
    return layout.flatten(trained) - layout.flatten(model)


def batch(n: int, shape=(1, 8, 8), classes: int = 10, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, *shape, generator=g), torch.randint(classes, (n,), generator=g)


@pytest.mark.parametrize(
    "name, shape, spec",
    [
        ("cnn", (1, 8, 8), TrainingSpec(epochs=2, batch_size=4, lr=0.05, momentum=0.9, weight_decay=5e-4)),
        ("lenet", (1, 16, 16), TrainingSpec(epochs=3, batch_size=5, lr=0.1, momentum=0.0, weight_decay=0.0)),
        ("resnet18", (3, 16, 16), TrainingSpec(epochs=2, batch_size=4, lr=0.01, momentum=0.9, weight_decay=1e-4)),
    ],
)
def test_simulation_equals_the_real_client(name, shape, spec):
    """E epochs of momentum SGD with a short last batch; ResNet-18 adds BatchNorm (batch
    statistics and running-statistic buffers)."""
    torch.manual_seed(0)
    model = build_model(name, shape, 10)
    images, labels = batch(10, shape)
    layout = ParamLayout.of(model)
    expected = real_update(model, spec, images, labels)
    simulated = simulate_update(model, layout, spec, images, labels, create_graph=False)
    torch.testing.assert_close(simulated, expected, rtol=1e-4, atol=1e-5)
    assert (simulated - expected).abs().max() <= 1e-5
    if name == "resnet18":
        assert not bool(parameter_mask(layout).all()) and bool((simulated[~parameter_mask(layout)] != 0).any())


def test_per_epoch_order_and_images():
    """Per-epoch orders reproduce a client that saw the batches in that order; an [E, N, ...]
    stack of identical copies gives the same update as the plain batch."""
    torch.manual_seed(1)
    model = build_model("cnn", (1, 8, 8), 10)
    layout = ParamLayout.of(model)
    spec = TrainingSpec(epochs=1, batch_size=3, lr=0.05, momentum=0.9, weight_decay=0.0)
    images, labels = batch(7)
    order = torch.randperm(7, generator=torch.Generator().manual_seed(3))
    expected = real_update(model, spec, images, labels, order)
    simulated = simulate_update(model, layout, spec, images, labels, create_graph=False, order=order[None])
    torch.testing.assert_close(simulated, expected, rtol=1e-4, atol=1e-5)
    two = TrainingSpec(epochs=2, batch_size=3, lr=0.05, momentum=0.9, weight_decay=0.0)
    stacked = simulate_update(model, layout, two, images.expand(2, *images.shape), labels, create_graph=False)
    torch.testing.assert_close(stacked, simulate_update(model, layout, two, images, labels, create_graph=False))


def test_single_step_is_minus_lr_times_the_gradient_and_differentiable():
    """E=1, N <= B: the update is -lr * gradient (momentum plays no part); soft one-hot labels
    give the same update as class ids, and the update has a gradient w.r.t. images and labels."""
    torch.manual_seed(2)
    model = build_model("cnn", (1, 8, 8), 10)
    layout = ParamLayout.of(model)
    spec = TrainingSpec(epochs=1, batch_size=8, lr=0.1, momentum=0.9, weight_decay=0.0)
    images, labels = batch(4)
    loss = torch.nn.functional.cross_entropy(model(images), labels)
    gradient = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(model.parameters()))])
    update = simulate_update(model, layout, spec, images, labels, create_graph=False)
    torch.testing.assert_close(update, -spec.lr * gradient)
    x = images.clone().requires_grad_()
    soft = torch.nn.functional.one_hot(labels, 10).float().requires_grad_()
    differentiable = simulate_update(model, layout, spec, x, soft)
    torch.testing.assert_close(differentiable.detach(), update)
    gx, gy = torch.autograd.grad(gradient_distance(differentiable, update.flip(0)), (x, soft))
    assert gx.abs().sum() > 0 and gy.abs().sum() > 0


def test_distances_and_total_variation():
    a, b = torch.tensor([1.0, 0.0, 2.0]), torch.tensor([2.0, 0.0, 4.0])
    assert gradient_distance(a, b, "l2") == pytest.approx(5.0)
    assert gradient_distance(a, b, "l1") == pytest.approx(3.0)
    assert gradient_distance(a, b, "cosine") == pytest.approx(0.0, abs=1e-6)
    mask = torch.tensor([True, False, False])
    assert gradient_distance(a, b, "l2", mask) == pytest.approx(1.0)
    assert total_variation(torch.ones(2, 1, 4, 4)).tolist() == [0.0, 0.0]
    stripes = torch.tensor([0.0, 1.0]).repeat(4, 2).view(1, 1, 4, 4)
    assert total_variation(stripes).tolist() == pytest.approx([1.0])  # columns alternate, rows do not
    with pytest.raises(ConfigError, match="unknown gradient distance 'l3'"):
        gradient_distance(a, b, "l3")
    batch, halves = torch.stack([a, 2 * b, -a]), [2, len(a) - 2]
    for kind in ("l2", "l1", "cosine"):  # by pieces, one distance per row: as on the whole vectors
        pieces = piecewise_distance(list(batch.split(halves, 1)), list(b.split(halves)), kind)
        torch.testing.assert_close(pieces, torch.stack([gradient_distance(row, b, kind) for row in batch]))


def test_clear_errors():
    model = build_model("cnn", (1, 8, 8), 10)
    layout = ParamLayout.of(model)
    spec = TrainingSpec(epochs=2, batch_size=4, lr=0.1, momentum=0.0, weight_decay=0.0)
    images, labels = batch(4)
    with pytest.raises(ConfigError, match="labels of shape"):
        simulate_update(model, layout, spec, images, labels[:3])
    with pytest.raises(ConfigError, match=r"images must be"):
        simulate_update(model, layout, spec, images.expand(3, *images.shape), labels)
    with pytest.raises(ConfigError, match="order must be"):
        simulate_update(model, layout, spec, images, labels, order=torch.arange(4)[None])


@pytest.mark.parametrize("name, shape", [("cnn", (1, 8, 8)), ("resnet18", (3, 8, 8))])
def test_replayed_training_has_the_full_graphs_gradient(name, shape, monkeypatch):
    """Past GRAPH_STEPS local steps the backward pass recomputes the states (bisecting when a
    stretch exceeds the replay budget) instead of keeping every step's graph: same update,
    same gradients w.r.t. per-epoch images and soft labels."""
    torch.manual_seed(4)
    model = build_model(name, shape, 10)
    layout = ParamLayout.of(model)
    spec = TrainingSpec(epochs=2, batch_size=3, lr=0.05, momentum=0.9, weight_decay=5e-4)
    images = torch.rand(2, 6, *shape, requires_grad=True)
    soft = torch.randn(6, 10).softmax(1).requires_grad_()
    weights = torch.randn(sum(s.numel() for s in layout.shapes))
    results = []
    for graph_steps, replay_bytes in ((10**6, local_update.REPLAY_BYTES), (2, 1)):  # 1 byte: bisect to 2 steps
        monkeypatch.setattr(local_update, "GRAPH_STEPS", graph_steps)
        monkeypatch.setattr(local_update, "REPLAY_BYTES", replay_bytes)
        update = simulate_update(model, layout, spec, images, soft)
        results.append((update.detach(), torch.autograd.grad((update * weights).sum() + update.square().sum(), (images, soft))))
    (full, full_grads), (replayed, replayed_grads) = results
    torch.testing.assert_close(replayed, full)
    for a, b in zip(full_grads, replayed_grads):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-7)
        assert a.abs().sum() > 0


@pytest.mark.parametrize("name, shape, epochs, graph_steps, dtype", [
    ("cnn", (1, 8, 8), 1, 4, torch.float32), ("cnn", (1, 8, 8), 2, 1, torch.float32),
    ("resnet18", (3, 16, 16), 2, 4, torch.float64),  # float32 rounding grows chaotically through its BatchNorms
])
def test_restarts_in_one_pass_are_each_restarts_simulation(name, shape, epochs, graph_steps, dtype, monkeypatch):
    """``simulate_updates`` (vmap over restarts, per-restart BatchNorm statistics; also
    replayed, and with per-epoch images) gives each restart the update and image gradient of its
    own ``simulate_update``."""
    monkeypatch.setattr(local_update, "GRAPH_STEPS", graph_steps)
    torch.manual_seed(5)
    model = build_model(name, shape, 10).to(dtype)
    layout = ParamLayout.of(model)
    spec = TrainingSpec(epochs=epochs, batch_size=4, lr=0.01, momentum=0.9, weight_decay=5e-4)
    images = torch.rand(3, *((epochs,) if epochs > 1 else ()), 8, *shape, dtype=dtype, requires_grad=True)
    labels = torch.randint(10, (8,))
    weights = torch.randn(sum(s.numel() for s in layout.shapes), dtype=dtype)
    batched = torch.cat(local_update.simulate_updates(model, layout, spec, images, labels), 1)
    (batched_grad,) = torch.autograd.grad((batched @ weights).sum(), images)
    for r in range(3):
        own = images.detach()[r].clone().requires_grad_()
        update = simulate_update(model, layout, spec, own, labels)
        (grad,) = torch.autograd.grad(update @ weights, own)
        torch.testing.assert_close(batched[r].detach(), update.detach(), rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(batched_grad[r], grad, rtol=1e-3, atol=1e-6 * float(grad.abs().max()))


PEAK_RSS = """
import resource, sys, torch
from flaudit.auditor.attacks.toolkit.local_update import gradient_distance, simulate_update
from flaudit.scenarios.models import build_model
from flaudit.scenarios.updates import ParamLayout
from flaudit.scenarios.views import TrainingSpec
torch.manual_seed(0)
n = int(sys.argv[1])
model = build_model("cnn", (3, 16, 16), 10)
layout = ParamLayout.of(model)
spec = TrainingSpec(epochs=1, batch_size=1, lr=0.05, momentum=0.9, weight_decay=0.0)
images, labels = torch.rand(n, 3, 16, 16), torch.randint(10, (n,))
observed = simulate_update(model, layout, spec, images, labels, create_graph=False)
x = torch.rand_like(images).requires_grad_()
gradient_distance(simulate_update(model, layout, spec, x, labels), observed).backward()
assert x.grad.abs().sum() > 0
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_local_steps():
    """An IG objective's forward and backward pass through 12 and 96 local steps (B=1) peak at
    about the same RSS: kept graphs would add ~13 MB a step here (over 1 GB at 96)."""
    import subprocess
    import sys

    def peak_mb(steps: int) -> float:
        out = subprocess.run([sys.executable, "-c", PEAK_RSS, str(steps)], capture_output=True, text=True, check=True)
        return int(out.stdout.split()[-1]) / 1024

    few, many = peak_mb(12), peak_mb(96)
    print(f'peak RSS: 12 steps {few:.0f} MB, 96 steps {many:.0f} MB')
    assert many - few < 120, (few, many)
