"""One client's local training: E epochs of mini-batch SGD, as a real FedAvg client does it.

The loader yields ``(images, labels, sample_indices)`` so the batch order can be recorded as
ground truth, and the model/optimizer/loader pass through the defense wrappers (Opacus needs
all three).
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from flaudit.scenarios.hooks import TrainingWrapper
from flaudit.scenarios.views import ClientTrace, TrainingSpec


def make_loader(
    images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor, batch_size: int, seed: int
) -> DataLoader:
    dataset = TensorDataset(images, labels, indices)
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=generator)


def train_client(
    client_id: int,
    round_index: int,
    global_model: nn.Module,
    loader: DataLoader,
    spec: TrainingSpec,
    wrappers: list[TrainingWrapper],
) -> tuple[nn.Module, ClientTrace]:
    """Trains a copy of ``global_model`` locally; returns it and the batches it saw."""
    model = copy.deepcopy(global_model)
    model.train()
    optimizer = torch.optim.SGD(
        model.parameters(), lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay
    )
    for wrapper in wrappers:
        model, optimizer, loader = wrapper.wrap(client_id, round_index, model, optimizer, loader)
    loss_fn = nn.CrossEntropyLoss()
    device = next(global_model.parameters()).device
    batches: list[torch.Tensor] = []
    for _ in range(spec.epochs):
        for images, labels, indices in loader:
            if len(indices) == 0:  # Poisson sampling (DP-SGD) can draw an empty batch
                continue
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(images.to(device)), labels.to(device))
            loss.backward()
            optimizer.step()
            batches.append(indices.clone())
    for wrapper in reversed(wrappers):
        model = wrapper.unwrap(client_id, model)
    seen = torch.cat(batches).unique() if batches else torch.empty(0, dtype=torch.long)
    return model, ClientTrace(client_id, seen, tuple(batches))


@torch.no_grad()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 512) -> float:
    """Top-1 accuracy of ``model`` on a labelled set, in eval mode."""
    if len(labels) == 0:
        return float("nan")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    for start in range(0, len(labels), batch_size):
        logits = model(images[start : start + batch_size].to(device))
        correct += int((logits.argmax(1).cpu() == labels[start : start + batch_size]).sum())
    model.train(was_training)
    return correct / len(labels)
