"""``flaudit run --plan``'s estimate (calibrated from a run folder's finished jobs) and the
progress report (one line per finished job when stderr is not a terminal)."""

from __future__ import annotations

import io

from flaudit.auditor.running.estimate import Calibration, makespan, plan_text
from flaudit.auditor.running.plan import build_plan
from flaudit.auditor.running.progress import Progress
from flaudit.auditor.running.results import JobError, JobResult
from test_audit_toys import run_toy, toy_catalog, toy_config

ALL_ATTACKS = """
[[attack]]
name = "*"
"""


def test_makespan_schedules_longest_first():
    assert makespan([4.0, 3.0, 2.0, 1.0], 2) == 5.0
    assert makespan([5.0, 1.0], 8) == 5.0 and makespan([], 4) == 0.0


def test_plan_is_calibrated_from_a_finished_run(tmp_path):
    empty = Calibration.from_run(tmp_path / "nothing")
    plan = build_plan(toy_config(ALL_ATTACKS), toy_catalog())
    uncalibrated = plan_text(plan, empty, 3, tmp_path)
    assert "uncalibrated unit(s)" in uncalibrated and "--workers 3" in uncalibrated
    run_toy(tmp_path, ALL_ATTACKS)
    calibration = Calibration.from_run(tmp_path)
    assert len(calibration.seconds) >= 2
    text = plan_text(plan, calibration, None, tmp_path)
    assert f"jobs: {len(plan.jobs)} in" in text
    rows = {line.split()[0]: line for line in text.splitlines() if line.split()}
    assert "?" not in rows["linear_leakage"] and "?" not in rows["utility"]
    assert "?" in rows["crashes"]  # it never finished a job: nothing to calibrate from
    assert "--executor ray --workers 4" in text
    peak_mb = float(rows["linear_leakage"].split()[4])  # the job's process held torch and the world at least
    assert 50 < peak_mb < 20000 and "max_memory_gb bounds each job" in text


def test_progress_prints_one_line_per_job_off_a_terminal():
    class Job:
        cell_id = "s/none/ig"

    stream = io.StringIO()
    with Progress(3, 1, True, stream) as progress:
        progress.finished(Job(), JobResult("ok", 1.5))
        progress.finished(Job(), JobResult("error", 0.5, error=JobError("ValueError", "bad")))
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2 and lines[0].startswith("[2/3] s/none/ig: ok in 1.5 s") and "failed 1" in lines[1]
    silent = io.StringIO()
    with Progress(1, 0, False, silent) as progress:
        progress.finished(Job(), JobResult("ok", 0.0))
    assert silent.getvalue() == ""
