"""benches/ratios.py, the benchmark regression check CI runs: ratios from a pytest-benchmark
run, the verdict against a baseline, exit codes, and the baseline it writes."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

_SPEC = importlib.util.spec_from_file_location("bench_ratios", Path(__file__).parents[1] / "benches" / "ratios.py")
ratios = sys.modules["bench_ratios"] = importlib.util.module_from_spec(_SPEC)  # dataclasses look it up
_SPEC.loader.exec_module(ratios)


def bench(name, group, role, median, tolerance=None):
    extra = {"role": role, "label": name} | ({"tolerance": tolerance} if tolerance is not None else {})
    return {"name": f"test_{name}", "fullname": f"b.py::test_{name}", "group": group,
            "extra_info": extra, "stats": {"median": median, "min": median}}


def run_file(tmp_path, op_seconds, name="run.json"):
    run = {"machine_info": {"flaudit": {"machine": "m", "threads": 2}}, "commit_info": {"id": "abc"},
           "benchmarks": [bench("op", "g", "candidate", op_seconds, 0.25), bench("clone", "g", "floor", 1.0),
                          bench("ref", "g", "reference", 4.0), bench("lonely", "h", "candidate", 1.0)]}
    path = tmp_path / name
    path.write_text(json.dumps(run))
    return path


def test_ratios_are_candidate_over_base_per_group(tmp_path):
    found = {r.key: r for r in ratios.run_ratios(ratios.load_run(run_file(tmp_path, 2.0))["benchmarks"])}
    assert set(found) == {"g | op / clone", "g | op / ref"}  # group h has no base: no ratio
    assert found["g | op / clone"].ratio == 2.0 and found["g | op / ref"].ratio == 0.5
    assert found["g | op / ref"].tolerance == 0.25
    assert found["g | op / ref"].shown == "ref / op = 2.00x"  # a reference reads as a speed-up


def test_check_passes_within_tolerance_and_fails_beyond(tmp_path, capsys):
    baseline = tmp_path / "baseline.json"
    assert ratios.main(["baseline", str(run_file(tmp_path, 2.0)), "--baseline", str(baseline)]) == 0
    written = json.loads(baseline.read_text())
    assert written["schema"] == ratios.SCHEMA and written["machine"]["threads"] == 2
    assert ratios.main(["check", str(run_file(tmp_path, 2.4)), "--baseline", str(baseline)]) == 0  # +20% < 25%
    assert ratios.main(["check", str(run_file(tmp_path, 2.6)), "--baseline", str(baseline)]) == 1  # +30%
    assert "REGRESSED op / clone" in capsys.readouterr().out


def test_baseline_keeps_ratios_not_measured_unless_pruned(tmp_path):
    baseline = tmp_path / "baseline.json"
    old = {"schema": ratios.SCHEMA, "ratios": {"gone | a / b": {"ratio": 1.0}}}
    baseline.write_text(json.dumps(old))
    ratios.main(["baseline", str(run_file(tmp_path, 2.0)), "--baseline", str(baseline)])
    assert "gone | a / b" in json.loads(baseline.read_text())["ratios"]
    ratios.main(["baseline", str(run_file(tmp_path, 2.0)), "--baseline", str(baseline), "--prune"])
    assert "gone | a / b" not in json.loads(baseline.read_text())["ratios"]


@pytest.mark.parametrize("content", [None, "not json", json.dumps({"benchmarks": "x"})])
def test_unusable_run_exits_2(tmp_path, capsys, content):
    path = tmp_path / "run.json"
    if content is not None:
        path.write_text(content)
    assert ratios.main(["check", str(path), "--baseline", str(tmp_path / "none.json")]) == 2
    assert capsys.readouterr().err.startswith("benches/ratios.py: benchmark run")
