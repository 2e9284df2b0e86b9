"""The Cocktail Party Attack: its pieces (whitening, unmixing, sign/scale from the bias update)
on synthetic mixtures, the attack end to end through FedAvg on the MLP (pixels) and the CNN
(embeddings + feature inversion), and its errors.

The slow tests (``-m slow -s``) print the must-show table: single gradient vs realistic
multi-step updates on the MLP, and CPA + feature inversion on the CNN; they save each row's
grid (every target over its matched reconstruction, seed 0) to ``$FLAUDIT_GRID_DIR``
(default ``out/grids``).
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from flaudit.auditor.attacks.registry import ATTACKS
from flaudit.auditor.attacks.base import AttackerKnowledge
from flaudit.auditor.attacks.cpa import CocktailPartyAttack, CpaParams, FirstLinearInput, rescale, to_unit_range
from flaudit.auditor.attacks.toolkit.unmixing import UnmixingSettings, sign_violation, unmix, whiten
from flaudit.auditor.results.grids import grid_png
from flaudit.auditor.metrics.scoring import score
from flaudit.core.errors import ConfigError, FlauditError
from flaudit.scenarios.fedavg import FedAvgSimulation
from flaudit.scenarios.scenario import ScenarioConfig, build_world


@dataclasses.dataclass
class Attacked:
    metrics: dict
    ssim_share: float  # share of the targets matched at SSIM >= 0.5
    diagnostics: dict
    seconds: float
    grid: bytes  # every target over its matched reconstruction


def one_client(dataset: str, model: str, samples: int, **changes) -> ScenarioConfig:
    """One client holding exactly ``samples`` images (the train split is capped at that)."""
    base = dict(dataset=dataset, model=model, clients=1, partition="iid", rounds=1, max_samples=samples, seed=0)
    return ScenarioConfig(**{**base, **changes})


def attack(config: ScenarioConfig, params: CpaParams = CpaParams()) -> Attacked:
    world = build_world(config)
    record = FedAvgSimulation(world).run_round(0)
    began = time.perf_counter()
    output = CocktailPartyAttack(params).reconstruct(record.server_view, AttackerKnowledge.of(world))
    seconds = time.perf_counter() - began
    scored = score(output, world.data.train, record.ground_truth, 20.0)
    matching = scored.matching
    share = float((matching.ssim >= 0.5).sum()) / scored.metrics["n_targets"]
    grid = grid_png(scored.targets[matching.target_idx], scored.reconstructions[matching.recon_idx])
    return Attacked(scored.metrics, share, output.diagnostics, seconds, grid)


# ---- pieces -------------------------------------------------------------------------------------


def test_whitening_gives_orthonormal_signals_in_the_rows_span():
    g = torch.Generator().manual_seed(0)
    rows = torch.randn(40, 5, generator=g, dtype=torch.float64) @ torch.randn(5, 300, generator=g, dtype=torch.float64)
    whitened = whiten(rows, 8)
    assert whitened.signals.shape == (5, 300)  # rank 5 caps the 8 asked for
    d = rows.shape[1]
    torch.testing.assert_close(whitened.signals @ whitened.signals.t() / d, torch.eye(5, dtype=torch.float64))
    centred = rows - rows.mean(1, keepdim=True)
    torch.testing.assert_close(whitened.projection @ centred, whitened.signals)
    torch.testing.assert_close(whitened.projection @ rows, whitened.signals + whitened.offset[:, None])
    with pytest.raises(FlauditError, match="update is zero"):
        whiten(torch.zeros(4, 10), 2)


def test_unmixing_separates_sparse_sources():
    """Six independent Laplacian sources mixed into 30 rows: each is found again (|corr| > 0.95)
    with a light independence penalty (the default's is tuned for correlated natural images)."""
    g = torch.Generator().manual_seed(1)
    uniform = torch.rand(6, 4000, generator=g, dtype=torch.float64)
    sources = -torch.sign(uniform - 0.5) * torch.log1p(-2 * (uniform - 0.5).abs())
    rows = torch.randn(30, 6, generator=g, dtype=torch.float64) @ sources
    whitened = whiten(rows, 6)
    settings = UnmixingSettings(300, 0.03, 1.0, 0.0, 0.0, 0.005, 2.0)
    found = unmix(whitened, settings) @ whitened.signals
    centred = sources - sources.mean(1, keepdim=True)
    corr = (nn.functional.normalize(found, dim=1) @ nn.functional.normalize(centred, dim=1).t()).abs()
    assert float(corr.max(0).values.min()) > 0.95, corr.max(0).values


def test_bias_update_resolves_sign_and_scale():
    """Rows that unmix up to a signed scale and a permutation give the inputs exactly once
    divided by what they make of the bias update (the coefficient sums)."""
    g = torch.Generator().manual_seed(2)
    inputs = torch.rand(5, 64, generator=g, dtype=torch.float64)
    coefficients = torch.randn(20, 5, generator=g, dtype=torch.float64)
    weight, bias = coefficients @ inputs, coefficients.sum(1)
    signed_scale = torch.tensor([2.0, -0.5, 3.0, -7.0, 0.1], dtype=torch.float64)
    order = torch.tensor([3, 0, 4, 1, 2])
    rows = signed_scale[:, None] * torch.linalg.pinv(coefficients)[order]
    torch.testing.assert_close(rescale(rows @ weight, rows, bias), inputs[order])


def test_sign_violation_is_zero_for_one_signed_rows():
    rows = torch.tensor([[0.0, 1.0, 2.0], [-1.0, -3.0, 0.0], [3.0, -4.0, 0.0]])
    torch.testing.assert_close(sign_violation(rows), torch.tensor([0.0, 0.0, 0.6]))


def test_unit_range_keeps_plausible_images_and_stretches_the_rest():
    images = torch.stack([torch.full((1, 2, 2), 0.5), torch.tensor([[[-3.0, 1.0], [5.0, 1.0]]])])
    images[0, 0, 0, 0] = 1.05
    out = to_unit_range(images)
    assert out[0, 0, 0, 0] == 1.0 and out[0, 0, 1, 1] == 0.5
    torch.testing.assert_close(out[1].flatten(), torch.tensor([0.0, 0.5, 1.0, 0.5]))


def test_first_linear_input_tells_pixels_from_embeddings():
    from flaudit.scenarios.models import build_model

    mlp = FirstLinearInput(build_model("mlp", (3, 8, 8), 10))
    cnn = FirstLinearInput(build_model("cnn", (3, 8, 8), 10))
    assert mlp.name == "features.1" and mlp.sees_pixels((3, 8, 8), torch.device("cpu"))
    assert cnn.name == "classifier.0" and not cnn.sees_pixels((3, 8, 8), torch.device("cpu"))
    assert cnn(torch.rand(2, 3, 8, 8)).shape == (2, 64 * 2 * 2)


# ---- end to end ---------------------------------------------------------------------------------


def test_mlp_single_gradient_recovers_most_of_the_batch():
    """photo_patches 32x32 colour, one client of 16 images, one step of B=16: the images come
    back in their own pixel units (signs and scales resolved from the bias update)."""
    result = attack(one_client("photo_patches", "mlp", 16, batch_size=16))
    assert result.diagnostics["components"] == 16 and result.metrics["n_reconstructed"] == 16
    assert result.ssim_share >= 0.75, result
    assert result.metrics["psnr_mean"] >= 20.0 and result.metrics["recovery_rate"] >= 0.5, result.metrics


def test_mlp_multi_step_update_is_still_a_mixture_of_all_images():
    """Two epochs of B=8 (four momentum steps): the MLP's first layer still sees fixed pixels,
    so its update mixes all 16 images and CPA unmixes them all."""
    result = attack(one_client("photo_patches", "mlp", 16, batch_size=8, local_epochs=2))
    assert result.diagnostics["components"] == 16
    assert result.ssim_share >= 0.6 and result.metrics["psnr_mean"] >= 20.0, result


def test_cnn_embeddings_and_feature_inversion():
    """The CNN: CPA unmixes the 8 embeddings its fc512 saw and feature inversion finds images
    whose embeddings point there; far better than the random start, far from exact."""
    result = attack(one_client("photo_patches", "cnn", 8, batch_size=8))
    assert result.diagnostics["layer_inputs"] == 64 * 8 * 8 and result.diagnostics["components"] == 8
    assert result.diagnostics["mean_embedding_cosine"] >= 0.99
    assert result.metrics["ssim_mean"] >= 0.35 and result.metrics["psnr_mean"] >= 15.0, result.metrics


# ---- errors and registry ------------------------------------------------------------------------


class UnusedHead(nn.Module):
    """Registers a linear layer that its forward never calls."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


@pytest.fixture(scope="module")
def digits_round():
    world = build_world(one_client("digits", "mlp", 16, batch_size=16, clients=2))
    return world, FedAvgSimulation(world).run_round(0)


def test_clear_errors(digits_round):
    world, record = digits_round
    view, knowledge = record.server_view, AttackerKnowledge.of(world)
    convolutional = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten())
    with pytest.raises(FlauditError, match=r"cpa needs a fully-connected layer \(nn.Linear\).*Sequential has none"):
        CocktailPartyAttack().reconstruct(dataclasses.replace(view, model=convolutional), knowledge)
    unused_head = UnusedHead()
    with pytest.raises(FlauditError, match="first fully-connected layer 'head'; the upload lacks them"):
        CocktailPartyAttack().reconstruct(dataclasses.replace(view, model=unused_head), knowledge)
    with pytest.raises(FlauditError, match="never reaches its first linear layer 'head'"):
        FirstLinearInput(unused_head)(torch.rand(2, 1, 8, 8))
    with pytest.raises(FlauditError, match="cpa needs each client's update; this round shows the server only the aggregate"):
        CocktailPartyAttack().reconstruct(dataclasses.replace(view, uploads=None), knowledge)
    with pytest.raises(FlauditError, match=r"attack.cpa.target_client=7 did not take part in round 0"):
        CocktailPartyAttack(CpaParams(target_client=7)).reconstruct(view, knowledge)
    with pytest.raises(ConfigError, match="attack.cpa"):
        CocktailPartyAttack.from_table({"iteration": 3})


def test_registered_with_a_full_profile_and_targets_one_client(digits_round):
    world, record = digits_round
    assert ATTACKS.get("cpa") is CocktailPartyAttack
    full = CocktailPartyAttack.from_table(CocktailPartyAttack.profiles["full"])
    assert full.params.iterations == 25000 and full.params.lr == 0.001
    second = record.server_view.participants[1]
    output = CocktailPartyAttack(CpaParams(target_client=second, iterations=5)).reconstruct(
        record.server_view, AttackerKnowledge.of(world)
    )
    assert output.target_clients == (second,)
    assert output.images.shape[1:] == (1, 8, 8) and 0 <= float(output.images.min()) <= float(output.images.max()) <= 1


# ---- slow: the must-show table ------------------------------------------------------------------

HEADER = f"{'setting':<56} {'seeds':>5} {'comps':>5} {'SSIM>=.5':>8} {'>=20dB':>8} {'PSNR':>6} {'SSIM':>6} {'secs':>5}"


def row(
    label: str, config: ScenarioConfig, params: CpaParams = CpaParams(), seeds: tuple[int, ...] = (0, 1, 2)
) -> tuple[str, float]:
    """The attack's scores on ``config`` at each seed (data, split, model init), averaged, as a
    table line, and the mean share recovered at SSIM >= 0.5; the first seed's grid is saved."""
    results = [attack(config.replace(seed=seed), params) for seed in seeds]
    folder = Path(os.environ.get("FLAUDIT_GRID_DIR", "out/grids"))
    folder.mkdir(parents=True, exist_ok=True)
    name = re.sub("[^a-z0-9]+", "_", f"cpa {config.dataset} {config.model} {label}".lower())
    (folder / f"{name}.png").write_bytes(results[0].grid)

    def mean(values: list[float]) -> float:
        return sum(values) / len(values)

    columns = [
        [r.diagnostics["components"] for r in results],
        [r.ssim_share for r in results],
        [r.metrics["recovery_rate"] for r in results],
        [r.metrics["psnr_mean"] for r in results],
        [r.metrics["ssim_mean"] for r in results],
        [r.seconds for r in results],
    ]
    formats = [(5, 0), (8, 3), (8, 3), (6, 2), (6, 3), (5, 1)]  # (width, decimals) per column
    values = " ".join(f"{mean(c):>{w}.{d}f}" for c, (w, d) in zip(columns, formats))
    return f"{label:<56} {len(seeds):>5} {values}", mean(columns[1])


@pytest.mark.slow
def test_must_show_mlp_single_gradient_vs_multi_step():
    """MLP (hidden 256) on photo_patches 32x32 colour: one batch vs realistic local training."""

    def patches(n: int, **changes) -> ScenarioConfig:
        return one_client("photo_patches", "mlp", n, **changes)

    multi, study = patches(32, batch_size=8, local_epochs=5), patches(200, batch_size=50, local_epochs=5)
    rows = [
        row("E=1 B=32, 32 images (single gradient)", patches(32, batch_size=32)),
        row("E=1 B=32, 32 images, 1000 iterations", patches(32, batch_size=32), CpaParams(iterations=1000), (0,)),
        row("E=5 B=8, 32 images (20 momentum steps)", multi),
        row("E=5 B=8, 32 images, components=B=8 (the study's way)", multi, CpaParams(max_components=8)),
        row("E=5 B=50, 200 images (the study's B=50)", study, seeds=(0,)),
        row("E=5 B=50, 200 images, weight decay 5e-4", study.replace(weight_decay=5e-4), seeds=(0,)),
    ]
    print("\nCPA on the MLP, photo_patches 32x32x3, one client\n" + HEADER + "\n" + "\n".join(r[0] for r in rows))
    single, _, multi_step, study_way, _, _ = (share for _, share in rows)
    assert single >= 0.5 and multi_step >= 0.5 and study_way <= 0.1


@pytest.mark.slow
def test_must_show_cnn_feature_inversion():
    """The study's CNN (conv32-conv64-fc512): CPA on fc512's update, then feature inversion."""

    def patches(n: int, **changes) -> ScenarioConfig:
        return one_client("photo_patches", "cnn", n, **changes)

    def digits(n: int, **changes) -> ScenarioConfig:
        return one_client("digits", "cnn", n, image_size=16, **changes)

    longer = CpaParams(iterations=1000, inversion_iterations=1000)
    rows = [
        row("photo_patches 32x32, E=1 B=8, 8 images", patches(8, batch_size=8)),
        row("photo_patches 32x32, E=1 B=8, 8 images, 1000+1000 it.", patches(8, batch_size=8), longer, (0,)),
        row("photo_patches 32x32, E=1 B=32, 32 images", patches(32, batch_size=32)),
        row("photo_patches 32x32, E=5 B=8, 32 images", patches(32, batch_size=8, local_epochs=5)),
        row("digits 16x16, E=1 B=8, 8 images", digits(8, batch_size=8)),
        row("digits 16x16, E=5 B=8, 32 images", digits(32, batch_size=8, local_epochs=5)),
    ]
    print("\nCPA + feature inversion on the CNN, one client\n" + HEADER + "\n" + "\n".join(r[0] for r in rows))
    single_patches, _, _, multi_patches, single_digits, _ = (share for _, share in rows)
    assert single_patches >= 0.4 and single_digits >= 0.6 and multi_patches <= 0.1
