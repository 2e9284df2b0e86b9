"""Fixtures shared by several test files."""

import pytest
import torch

from flaudit.core import native
from flaudit.scenarios.scenario import ScenarioConfig, build_world

SECAGG_ISAS = ("sse2", "avx2", "avx512")


@pytest.fixture(scope="module")
def small_world():
    """Two IID digits clients, 4 rounds: enough for defenses to be composed and trained on."""
    return build_world(ScenarioConfig(clients=2, rounds=4, partition="iid", batch_size=32, seed=3, lr=0.1))


@pytest.fixture(params=SECAGG_ISAS)
def isa(request, monkeypatch):
    """Runs the secagg/ChaCha20 CPU kernels with the vector width of ``request.param``
    (skipped when the extension is not built or the CPU lacks that instruction set)."""
    if not native.extension_available():
        pytest.skip("flaudit._C not built")
    monkeypatch.setenv("FLAUDIT_SECAGG_ISA", request.param)
    try:
        torch.ops.flaudit.chacha20(torch.zeros(32, dtype=torch.uint8), torch.zeros(12, dtype=torch.uint8), 0, 1)
    except ValueError as exc:
        pytest.skip(str(exc))
    return request.param
