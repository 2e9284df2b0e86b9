"""One-gradient cosine matching through the shared weights (``OneStepMatching``) against the
general path that simulates every restart's update: same losses and image gradients, on the
registry's models and on layers the general path handles by construction (a layer called
twice, an in-place activation), with and without weight decay, hard and soft labels."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from flaudit.auditor.attacks.toolkit.local_update import piecewise_distance, simulate_update, simulate_updates
from flaudit.auditor.attacks.toolkit.one_step_matching import OneStepMatching
from flaudit.scenarios.models import build_model
from flaudit.scenarios.updates import ParamLayout
from flaudit.scenarios.views import TrainingSpec


class SharedLayer(nn.Module):
    """A conv applied twice, an in-place ReLU and a layer the forward pass skips: the hooks
    must see every call and the output before the activation overwrites it, and weight decay
    must leave the skipped layer alone (torch's SGD does)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.head = nn.Linear(3 * 8 * 8, 5, bias=False)
        self.spare = nn.Linear(5, 5)

    def forward(self, x):
        x = torch.relu_(self.conv(x))
        return self.head(torch.relu(self.conv(x)).flatten(1))


def _setting(name: str, weight_decay: float, soft: bool):
    torch.manual_seed(0)
    shape = (1, 8, 8) if name == "mlp" else (3, 8, 8)
    model = (SharedLayer() if name == "shared" else build_model(name, shape, 5)).double()
    training = TrainingSpec(epochs=1, batch_size=4, lr=0.1, momentum=0.9, weight_decay=weight_decay)
    labels = torch.arange(4) % 5
    if soft:
        labels = torch.softmax(torch.randn(4, 5, dtype=torch.float64), 1)
    layout = ParamLayout.of(model)
    observed = simulate_update(model, layout, training, torch.rand(4, *shape, dtype=torch.float64), labels, create_graph=False)
    return model, layout, training, labels, observed, shape


def _general(model, layout, training, labels, observed, images):
    candidate = simulate_updates(model, layout, training, images, labels)
    pieces = list(observed.split([s.numel() for s in layout.shapes]))
    return piecewise_distance(candidate, pieces, "cosine")


def _matcher(model, layout, training, labels, observed):
    pieces = observed.split([s.numel() for s in layout.shapes])
    by_name = {name: piece.reshape(shape) for name, piece, shape in zip(layout.names, pieces, layout.shapes)}
    return OneStepMatching.of(model, training, labels, by_name, "cosine")


@pytest.mark.parametrize("name, weight_decay, soft", [
    ("cnn", 0.0, False), ("cnn", 5e-3, True), ("mlp", 0.0, False), ("lenet", 5e-3, False), ("shared", 5e-3, True),
])
def test_same_losses_and_image_gradients_as_the_simulated_updates(name, weight_decay, soft):
    model, layout, training, labels, observed, shape = _setting(name, weight_decay, soft)
    matcher = _matcher(model, layout, training, labels, observed)
    assert matcher is not None
    images = torch.rand(3, 4, *shape, dtype=torch.float64, requires_grad=True)
    fast, general = matcher(images), _general(model, layout, training, labels, observed, images)
    torch.testing.assert_close(fast, general, rtol=1e-9, atol=1e-12)
    assert float(general.detach().min()) > 1e-7  # random images do not match: the comparison is not 0 == 0
    (fast_grad,) = torch.autograd.grad(fast.sum(), images)
    (general_grad,) = torch.autograd.grad(general.sum(), images)
    torch.testing.assert_close(fast_grad, general_grad, rtol=1e-7, atol=1e-12)
    assert all(not module.training for module in model.modules()) or model.training  # modes restored


def test_a_restart_holding_the_clients_images_scores_zero():
    """The matched update's own images are at distance 0; others are not (it reads the update)."""
    model, layout, training, labels, _, shape = _setting("cnn", 0.0, False)
    secret = torch.rand(4, *shape, dtype=torch.float64)
    observed = simulate_update(model, layout, training, secret, labels, create_graph=False)
    losses = _matcher(model, layout, training, labels, observed)(torch.stack([secret, torch.rand_like(secret)])).detach()
    assert float(losses[0]) == pytest.approx(0.0, abs=1e-10)
    assert float(losses[1]) > 1e-3


@pytest.mark.parametrize("case", ["batchnorm", "two_epochs", "more_images_than_a_batch", "l2"])
def test_other_settings_take_the_general_path(case):
    model, layout, training, labels, observed, _ = _setting("cnn", 0.0, False)
    distance = "l2" if case == "l2" else "cosine"
    if case == "batchnorm":
        model = build_model("resnet18", (3, 32, 32), 5).double()
        layout = ParamLayout.of(model)
        observed = torch.zeros(layout.numel, dtype=torch.float64)
    if case == "two_epochs":
        training = TrainingSpec(epochs=2, batch_size=4, lr=0.1, momentum=0.0, weight_decay=0.0)
    if case == "more_images_than_a_batch":
        training = TrainingSpec(epochs=1, batch_size=2, lr=0.1, momentum=0.0, weight_decay=0.0)
    pieces = observed.split([s.numel() for s in layout.shapes])
    by_name = {name: piece.reshape(shape) for name, piece, shape in zip(layout.names, pieces, layout.shapes)}
    assert OneStepMatching.of(model, training, labels, by_name, distance) is None


def test_ig_takes_the_shared_weight_path_on_one_gradient_only():
    """IG's objective passes all restarts at once on one gradient, and simulates the restarts'
    updates (a few per pass) on a multi-step one."""
    from flaudit.auditor.attacks.toolkit.local_update import restarts_per_pass
    from flaudit.auditor.attacks.toolkit.update_inversion import update_objective

    model, layout, training, labels, observed, _ = _setting("cnn", 0.0, False)
    assert update_objective(observed, model, layout, training, labels, distance="cosine", tv_weight=0.0).per_pass is None
    two_steps = TrainingSpec(epochs=2, batch_size=4, lr=0.1, momentum=0.0, weight_decay=0.0)
    objective = update_objective(observed, model, layout, two_steps, labels, distance="cosine", tv_weight=0.0)
    assert objective.per_pass == restarts_per_pass(model)
