"""The ray executor on a local 2-CPU Ray cluster gives the local executor's metrics exactly."""

from __future__ import annotations

import pytest

from test_audit_runner import MATRIX, _metrics_by_cell
from test_audit_toys import run_toy

SMALL = MATRIX.replace('name = "*"', 'name = "linear_leakage"\n[[attack]]\nname = "malicious_aggregate"')


def test_ray_executor_matches_local(tmp_path):
    ray = pytest.importorskip("ray", reason="Ray is optional (pip install ray); the ray executor is untested without it")
    local = run_toy(tmp_path / "local", SMALL)
    # The executor starts a local cluster of workers x threads = 2 CPUs and shuts it down.
    distributed = run_toy(tmp_path / "ray", SMALL, executor="ray", workers=2)
    assert not ray.is_initialized()
    assert distributed.scorecard["manifest"]["executor"] == "ray"
    assert _metrics_by_cell(distributed.scorecard) == _metrics_by_cell(local.scorecard)
    assert cell_risks(distributed.scorecard)["digits-mlp/none/linear_leakage"] == "high"


def test_missing_ray_is_a_clear_error(tmp_path, monkeypatch):
    import sys

    from flaudit.core.errors import FlauditError

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(FlauditError, match="the ray executor needs Ray, which is not installed: pip install ray"):
        run_toy(tmp_path / "run", SMALL, executor="ray")
    assert not (tmp_path / "run").exists()  # nothing ran, nothing was written


def cell_risks(card: dict) -> dict:
    return {c["id"]: c["risk"] for c in card["cells"]}
