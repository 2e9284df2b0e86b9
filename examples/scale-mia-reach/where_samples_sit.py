"""Where each client's samples sit in Scale-MIA's bins while the client trains: the README's why.

    .venv/bin/python examples/scale-mia-reach/where_samples_sit.py --scenario n400 --seed 0     # ~20 s

Runs the attacked round of a federation of ``audit.toml`` (one round, Scale-MIA's crafted
model) with a forward hook on every client's imprint layer that records, at each local step,
which of the K cumulative bins each sample activated and the latent it read. Scale-MIA solves
the round's aggregate, so an interval is *lone* when exactly one sample of the round reached it
(at any step, any client): the attack can read that sample there. Prints:

- visits, and those that *crossed* rows: active bins that are not a prefix of them (the bins
  moved past each other while clients trained), so that latent enters the bias-gradient
  differences of every interval where its pattern changes, not only its own; and those at the
  ends (below every bin, or in the first or the last interval), where many samples pile up;
- the lone intervals, and how many of them no crossed visit touched;
- the isolation bound: the samples a perfect binning of the sent model leaves alone;
- of the lone intervals the solve found non-empty, how far its solve is from the latent their
  sample had there (median relative error, over the untouched and the touched ones: what the
  readout's training and the crossed visits added), and how far that latent is from the sent
  model's (the encoder's drift).

A diagnostic that reads the clients' data (ground truth), never an attack. ``--freeze`` keeps
the encoder, the readout or both fixed while clients train, to show which part does what.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from flaudit.auditor.attacks.base import AttackerKnowledge
from flaudit.auditor.attacks.scale_mia import ScaleMia, ScaleMiaParams, adapter_for, interval_of, interval_owners, solve_round
from flaudit.auditor.attacks.toolkit.imprint import isolation_bound
from flaudit.auditor.attacks.toolkit.preparation import Preparations
from flaudit.auditor.running.config import load_audit, load_scenario
from flaudit.auditor.running.jobs import SEED_STREAM, SIMULATION_STEP, seed_everything
from flaudit.defenses.base import compose
from flaudit.scenarios.fedavg import FedAvgSimulation
from flaudit.scenarios.scenario import build_world, derive_seed

CONFIG = Path(__file__).with_name("audit.toml")
FROZEN = {"encoder": ("encoder",), "readout": ("readout",), "both": ("encoder", "readout")}  # --freeze: LatentLayers fields


@dataclass
class Step:
    active: torch.Tensor  # [B, K]: the bins each sample of the batch activated
    latents: torch.Tensor  # [B, D]: what the imprint layer read


@dataclass
class StepRecorder:
    """A TrainingWrapper that records every client's local steps at the imprint layer."""

    image_shape: tuple[int, int, int]
    steps: dict[int, list[Step]] = field(default_factory=dict)

    def wrap(self, client_id: int, round_index: int, model: nn.Module, optimizer: torch.optim.Optimizer,
             loader: DataLoader) -> tuple[nn.Module, torch.optim.Optimizer, DataLoader]:
        steps = self.steps.setdefault(client_id, [])
        adapter_for(model).layers(model, self.image_shape).imprint.register_forward_hook(
            lambda module, inputs, out: steps.append(Step((out > 0).cpu(), inputs[0].detach().cpu())))
        return model, optimizer, loader

    def unwrap(self, client_id: int, model: nn.Module) -> nn.Module:
        return model


@dataclass
class Freeze:
    """A TrainingWrapper that keeps parts of the crafted model (``LatentLayers`` fields) fixed
    while a client trains: SGD skips a parameter without a gradient, momentum and decay too."""

    image_shape: tuple[int, int, int]
    parts: tuple[str, ...]

    def wrap(self, client_id: int, round_index: int, model: nn.Module, optimizer: torch.optim.Optimizer,
             loader: DataLoader) -> tuple[nn.Module, torch.optim.Optimizer, DataLoader]:
        layers = adapter_for(model).layers(model, self.image_shape)
        for part in self.parts:
            module = getattr(layers, part)
            for parameter in module.parameters() if module is not None else ():
                parameter.requires_grad_(False)
        return model, optimizer, loader

    def unwrap(self, client_id: int, model: nn.Module) -> nn.Module:
        return model


def crossed(active: torch.Tensor) -> torch.Tensor:
    """Per visit ``[B, K]``: whether its active bins are not a prefix (bins 0 .. n-1 on, the rest off)."""
    prefix = torch.arange(active.shape[1])[None, :] < active.sum(1, keepdim=True)
    return (active != prefix).any(1)


@dataclass
class Census:
    """The round's visits as the aggregate holds them."""

    visits: int = 0
    crossed: int = 0
    at_ends: int = 0  # visits below every bin, or in the first or last interval
    batches: list[torch.Tensor] = field(default_factory=list)  # each step's sample ids
    intervals: list[torch.Tensor] = field(default_factory=list)  # and their intervals
    latent: dict[int, torch.Tensor] = field(default_factory=dict)  # interval -> the latent of its last visit
    touched: set[int] = field(default_factory=set)  # intervals a crossed visit's pattern changes at

    def add(self, step: Step, batch: torch.Tensor) -> None:
        cross = crossed(step.active)
        intervals = interval_of(step.active.float())
        self.visits += len(batch)
        self.crossed += int(cross.sum())
        self.at_ends += int(((intervals <= 0) | (intervals >= step.active.shape[1] - 1)).sum())
        self.batches.append(batch)
        self.intervals.append(intervals)
        self.latent.update(zip(intervals.tolist(), step.latents))
        padded = torch.cat([step.active[cross], step.active.new_zeros(int(cross.sum()), 1)], 1)  # interval K-1: bin K-1 alone
        for pattern in padded:
            self.touched.update((pattern[:-1] != pattern[1:]).nonzero().flatten().tolist())  # interval k: bins k, k+1

    def lone(self) -> dict[int, int]:
        """Interval -> its one sample, for the intervals a single sample of the round reached."""
        owners = interval_owners(self.batches, self.intervals)
        return {k: next(iter(samples)) for k, samples in sorted(owners.items()) if len(samples) == 1}


def relative(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Each row's distance from ``b``'s, relative to ``b``'s norm."""
    return (a - b).norm(dim=1) / b.norm(dim=1).clamp(min=1e-12)


def median(values: torch.Tensor) -> float:
    return float(values.median()) if len(values) else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default="n400", help="a [[scenario]] label of audit.toml")
    parser.add_argument("--seed", type=int, default=0, help="one of the scenario's seeds")
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--freeze", choices=sorted(FROZEN), help="keep these layers fixed while clients train")
    args = parser.parse_args()
    scenario = load_scenario(args.config, [f"seed={args.seed}"], label=args.scenario)
    torch.set_num_threads(load_audit(args.config).options.threads)  # as the audit's unit: the same floats,
    seed_everything(derive_seed(scenario.seed, SEED_STREAM, SIMULATION_STEP))  # the same draws, so the same round
    world = build_world(scenario)
    knowledge = AttackerKnowledge.of(world, Preparations())
    params = ScaleMiaParams()
    hooks = compose([], world)
    hooks.server_model = server = ScaleMia(params).prepare(knowledge)
    recorder = StepRecorder(knowledge.image_shape)
    hooks.training_wrappers.append(recorder)
    if args.freeze:
        hooks.training_wrappers.append(Freeze(knowledge.image_shape, FROZEN[args.freeze]))
    record = FedAvgSimulation(world, hooks).run_round(0)
    census = Census()
    for client, trace in sorted(record.ground_truth.items()):
        for step, batch in zip(recorder.steps[client], trace.batches, strict=True):
            census.add(step, batch)
    lone = census.lone()
    view = record.server_view
    sent = server.sent_for(view.model)
    solved, _, _ = solve_round(view, knowledge.image_shape, sent.crafting, params, sent.latent_scale)
    where = {k: i for i, k in enumerate(solved.where.tolist())}
    read = [k for k in lone if k in where]  # the lone intervals the solve found non-empty
    samples = sum(view.num_samples)
    label = f"{args.scenario} seed {args.seed}{f' ({args.freeze} frozen)' if args.freeze else ''}"
    print(f"{label}: {census.visits} visits, {census.crossed} crossed rows, {census.at_ends} at the ends; "
          f"{len(lone)} lone intervals, {len(set(lone) - census.touched)} untouched by a crossed visit; "
          f"isolation bound {isolation_bound(samples, solved.intervals) * samples:.0f} of {samples} samples")
    if not read:
        print("the solve found none of the lone intervals non-empty")
        return
    layers = adapter_for(view.model).layers(view.model, knowledge.image_shape)
    with torch.no_grad():
        sent_latents = layers.encoder(world.data.train.images[[lone[k] for k in read]]).flatten(1).cpu()
    visited = torch.stack([census.latent[k] for k in read])
    errors = relative(solved.latents[[where[k] for k in read]].cpu(), visited)
    touched = torch.tensor([k in census.touched for k in read], dtype=torch.bool)
    print(f"solved {len(read)} of them: off the visit's latent by {median(errors[~touched]):.1%} (median of the "
          f"{int((~touched).sum())} untouched; the touched ones {median(errors[touched]):.1%}), "
          f"the encoder's drift {median(relative(visited, sent_latents)):.1%}")


if __name__ == "__main__":
    main()
