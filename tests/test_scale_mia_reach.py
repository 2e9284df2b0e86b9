"""examples/scale-mia-reach/where_samples_sit.py: the per-step replay behind the README's why."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import torch

SCRIPT = Path(__file__).parents[1] / "examples" / "scale-mia-reach" / "where_samples_sit.py"
_SPEC = importlib.util.spec_from_file_location("where_samples_sit", SCRIPT)
where = sys.modules["where_samples_sit"] = importlib.util.module_from_spec(_SPEC)  # dataclasses look it up
_SPEC.loader.exec_module(where)


def test_a_visit_crossed_rows_when_its_active_bins_are_not_a_prefix():
    active = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0], [1, 0, 1, 0], [0, 1, 1, 1]], dtype=torch.bool)
    assert where.crossed(active).tolist() == [False, False, True, True]


def test_census_reads_lone_intervals_across_steps_and_the_intervals_a_crossed_visit_touches():
    census = where.Census()
    bins = lambda *rows: torch.tensor(rows, dtype=torch.bool)  # noqa: E731
    latents = torch.eye(4)
    census.add(where.Step(bins([1, 0, 0, 0], [1, 1, 1, 0], [1, 0, 1, 0], [0, 0, 0, 0]), latents), torch.tensor([10, 11, 12, 14]))
    census.add(where.Step(bins([1, 1, 1, 0]), latents[:1]), torch.tensor([13]))
    # intervals: 10 -> 0, 11 -> 2, 12 -> 1 (two bins on, crossed), 14 -> -1 (below every bin), 13 -> 2 (shared with 11)
    assert (census.visits, census.crossed, census.at_ends) == (5, 1, 2)
    assert census.lone() == {0: 10, 1: 12}
    assert census.touched == {0, 1, 2}  # 12's pattern 1010 changes between bins 0|1, 1|2, 2|3
    census.add(where.Step(bins([0, 1, 0, 1]), latents[:1]), torch.tensor([15]))
    assert 3 in census.touched  # the last interval is bin 3 alone: 15's pattern ends on


def test_the_replay_of_few_local_steps_finds_the_isolation_bound():
    """Two clients of 32 images, two steps each (~20 s: the autoencoder trains): no crossed
    visit, lone intervals about the isolation bound, and the attack's solve of each within 1% of
    the latent its sample had there. The script sets the audit's thread count itself."""
    out = subprocess.run([sys.executable, str(SCRIPT), "--scenario", "n32"], capture_output=True, text=True, check=True).stdout
    census, solves = out.strip().splitlines()[-2:]
    assert census.startswith("n32 seed 0: 64 visits, 0 crossed rows"), census
    lone = int(census.split("; ")[1].split(" lone")[0])
    bound = int(census.split("isolation bound ")[1].split(" of")[0])
    error = float(solves.split("latent by ")[1].split("%")[0])  # the untouched lone intervals' (all of them here)
    assert lone >= 0.9 * bound and error < 1.0, out
