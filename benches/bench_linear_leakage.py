"""Phase 2 of the linear-leakage attacks (Scale-MIA, Robbing the Fed): the time from the
aggregated update to the recovered images, for a round of 512 images (4 clients x 128, one
local step each, photo_patches 32x32, K=512) on the device the scenario names. Scale-MIA's
time includes decoding every kept latent; the autoencoder is barely trained here, which
changes what is recovered, not how long it takes.

Each group holds the attack with the compiled ``bin_solve`` (candidate) and with the pure-torch
``bin_solve_reference`` (reference); benches/conftest.py prints "reference / candidate".

    .venv/bin/python -m pytest benches/bench_linear_leakage.py
"""

from __future__ import annotations

import pytest
import torch

import flaudit.auditor.attacks.toolkit.imprint as imprint_module
from flaudit.auditor.attacks.base import AttackerKnowledge
from flaudit.auditor.attacks.rtf import RobbingTheFed
from flaudit.auditor.attacks.scale_mia import ScaleMia, ScaleMiaParams
from flaudit.auditor.ops.bin_solve import bin_solve_reference
from flaudit.core import native
from flaudit.scenarios.fedavg import FedAvgSimulation
from flaudit.scenarios.hooks import FLHooks
from flaudit.scenarios.scenario import ScenarioConfig, build_world

IMAGES = 512
CLIENTS = 4
AUX = 500
# Both members run the same attack and differ only in the solver (a small share of phase 2, so
# the ratio is near 1): a tight tolerance, since their work is the same single-threaded mix.
TOLERANCE = 0.3
ATTACKS = {"scale_mia": lambda: ScaleMia(ScaleMiaParams(ae_epochs=1)), "rtf": RobbingTheFed}


@pytest.fixture(scope="module", params=sorted(ATTACKS))
def attacked_round(request):
    per_client = IMAGES // CLIENTS
    config = ScenarioConfig(
        dataset="photo_patches", model="cnn", clients=CLIENTS, partition="iid", rounds=1,
        batch_size=per_client, auxiliary_samples=AUX, max_samples=AUX + IMAGES, seed=0,
        device="auto",
    )
    world = build_world(config)
    attack = ATTACKS[request.param]()
    knowledge = AttackerKnowledge.of(world)
    hook = attack.prepare(knowledge)
    records = []
    FedAvgSimulation(world, FLHooks(server_model=hook)).run([records.append], progress=False)
    return request.param, attack, records[-1].server_view, knowledge


@pytest.mark.parametrize("solver", ["kernel", "reference"])
def test_phase_two(benchmark, attacked_round, solver, monkeypatch):
    name, attack, view, knowledge = attacked_round
    if solver == "kernel" and not native.extension_available():
        pytest.skip("flaudit._C not built")
    if solver == "reference":
        monkeypatch.setattr(imprint_module, "bin_solve", bin_solve_reference)
    benchmark.group = f"{name} phase 2, {IMAGES} images, {knowledge.device.type}"
    benchmark.extra_info.update(role="candidate" if solver == "kernel" else "reference", label=solver, tolerance=TOLERANCE)

    def target():
        output = attack.reconstruct(view, knowledge)
        if knowledge.device.type == "cuda":
            torch.cuda.synchronize()
        return output

    output = benchmark.pedantic(target, rounds=10, warmup_rounds=1, iterations=1)
    assert len(output.images) > 0.2 * IMAGES  # a real round: about exp(-511/512) of 512 isolated
