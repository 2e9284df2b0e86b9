"""Jobs, not units: a job past its time limit or memory bound, or whose worker is killed, fails
alone (with what happened and its elapsed time) and the run goes on; every finished job is saved
at once; workers die with the parent."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from flaudit.auditor.attacks.base import Attack, ThreatModel
from flaudit.auditor.running.store import CELLS
from test_audit_toys import ATTACK_CLASSES, DEFENSE_CLASSES, ONE_SAMPLE_CLIENTS, cell, toy_catalog, toy_config

ONE_SEED = "[audit]\nthreads = 1\n{audit}\n[[attack]]\nname = \"linear_leakage\"\n"


@dataclass(frozen=True)
class StallParams:
    pidfile: str = ""
    seconds: float = 600.0
    grow_mb: int = 0  # allocate (and touch) this many MB per 50 ms while stalling


class Stalls(Attack):
    """Writes its pid, then sleeps (or grows its memory) for ``seconds``: a runaway job."""

    name = "stalls"
    threat_model = ThreatModel.HONEST_SERVER
    Params = StallParams

    def prior_null(self, view, context):
        return None

    def reconstruct(self, view, knowledge):
        if self.params.pidfile:
            Path(self.params.pidfile).write_text(str(os.getpid()))
        hoard, end = [], time.monotonic() + self.params.seconds
        while time.monotonic() < end:
            if self.params.grow_mb:
                hoard.append(bytearray(os.urandom(1)) * (self.params.grow_mb << 20))
            time.sleep(0.05)
        raise AssertionError("a stalled job was not stopped")


def catalog():
    return toy_catalog(attacks=(*ATTACK_CLASSES, Stalls), defenses=DEFENSE_CLASSES)


def run_one_seed(out: Path, extra: str, resume: bool = False):
    """The toy audit at seed 0 only, with the ``stalls`` attack registered."""
    from flaudit.auditor.running.runner import RunOptions, run_audit

    config = toy_config(extra, base=ONE_SAMPLE_CLIENTS.replace("seeds = [0, 1]", "seeds = [0]"))
    return run_audit(config, RunOptions(out, progress=False, resume=resume), catalog())


def _stalls(**params) -> str:
    lines = "".join(f"{k} = {json.dumps(v)}\n" for k, v in params.items())
    return f'[[attack]]\nname = "stalls"\n{lines}'


def _errors(card, cell_id):
    return [(e["type"], e["message"]) for e in cell(card, cell_id)["errors"]]


def test_a_job_past_its_time_limit_fails_alone_and_the_run_goes_on(tmp_path):
    extra = ONE_SEED.format(audit="job_timeout_s = 60") + _stalls() + "timeout_s = 1.5\n"
    run = run_one_seed(tmp_path, extra)
    card = run.scorecard
    [(kind, message)] = _errors(card, "digits-mlp/none/stalls")[:1]
    assert kind == "JobTimeout" and "time limit of 1.5 s" in message and "stopped after" in message
    assert cell(card, "digits-mlp/none/stalls")["runs"][0]["seconds"] >= 1.5
    assert cell(card, "digits-mlp/none/linear_leakage")["status"] == "ok"  # the unit's other jobs ran
    assert all(u["status"] == "ok" for u in card["utility"])


def test_a_job_past_the_memory_bound_is_stopped_naming_what_it_needed(tmp_path):
    extra = ONE_SEED.format(audit="max_memory_gb = 1.0") + _stalls(grow_mb=64, seconds=60)
    card = run_one_seed(tmp_path, extra).scorecard
    [(kind, message)] = _errors(card, "digits-mlp/none/stalls")[:1]
    assert kind == "MemoryLimitExceeded" and "1.00 GB per-job memory bound" in message and "GB resident" in message
    assert cell(card, "digits-mlp/none/linear_leakage")["status"] == "ok"


def _kill_when_written(pidfile: Path, killed: list) -> threading.Thread:
    def kill():
        for _ in range(1200):
            if pidfile.exists() and pidfile.read_text():
                pid = int(pidfile.read_text())
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
            time.sleep(0.05)

    thread = threading.Thread(target=kill, daemon=True)
    thread.start()
    return thread


def test_a_killed_worker_fails_only_its_own_job_and_resume_reruns_it(tmp_path):
    pidfile, killed = tmp_path / "victim.pid", []
    def extra(limit: str = "") -> str:
        return ONE_SEED.format(audit="") + _stalls(pidfile=str(pidfile)) + limit + '[[attack]]\nname = "auxiliary_mean"\n'

    thread = _kill_when_written(pidfile, killed)
    card = run_one_seed(tmp_path / "run", extra()).scorecard
    thread.join()
    errors = [(c["id"], e["type"]) for c in card["cells"] for e in c["errors"]]
    assert killed and errors == [("digits-mlp/none/stalls", "WorkerDied")], errors
    assert "killed by signal 9" in cell(card, "digits-mlp/none/stalls")["errors"][0]["message"]
    # every other job finished, each saved in its own file
    assert sum(c["status"] == "ok" for c in card["cells"]) == len(card["cells"]) - 1 - card["summary"]["not_applicable"]
    stored = [json.loads(p.read_text())["result"]["status"] for p in (tmp_path / "run" / CELLS).glob("*.json")]
    assert stored.count("error") == 1 and stored.count("ok") == len(stored) - 1
    pidfile.unlink()
    resumed = run_one_seed(tmp_path / "run", extra("timeout_s = 0.5\n"), resume=True)  # a limit is not in the key
    assert resumed.resumed_jobs == len(stored) - 1
    assert _errors(resumed.scorecard, "digits-mlp/none/stalls")[0][0] == "JobTimeout"  # the failed job ran again


PARENT = """
import sys
sys.path.insert(0, {tests!r})
if __name__ == "__main__":
    from pathlib import Path
    from test_run_supervisor import ONE_SEED, _stalls, run_one_seed
    run_one_seed(Path({out!r}), ONE_SEED.format(audit="") + _stalls(pidfile={pidfile!r}))
"""


def test_workers_die_with_the_parent(tmp_path):
    pidfile = tmp_path / "worker.pid"
    script = tmp_path / "parent.py"
    script.write_text(PARENT.format(tests=str(Path(__file__).parent), out=str(tmp_path / "run"), pidfile=str(pidfile)))
    parent = subprocess.Popen([sys.executable, str(script)], env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        for _ in range(2400):
            if (pidfile.exists() and pidfile.read_text()) or parent.poll() is not None:
                break
            time.sleep(0.05)
        assert parent.poll() is None, "the audit ended before its job started"
        worker = int(pidfile.read_text())
        parent.kill()
        parent.wait()
        for _ in range(200):  # the kernel (PDEATHSIG via the forkserver) or the watchdog ends it
            if not Path(f"/proc/{worker}").exists() or Path(f"/proc/{worker}/stat").read_text().split()[2] == "Z":
                break
            time.sleep(0.05)
        else:
            os.kill(worker, signal.SIGKILL)
            pytest.fail("the worker outlived its parent by 10 s")
    finally:
        parent.kill()



KILLED_CHILD_WITH_A_BAR = """
import multiprocessing, sys, time

def child(ready):
    from {module} import {bar}
    {bar}(range(3), desc="step").close()
    ready.set()
    time.sleep(60)

if __name__ == "__main__":
    context = multiprocessing.get_context("forkserver")
    ready = context.Event()
    process = context.Process(target=child, args=(ready,))
    process.start()
    ready.wait(60)
    process.kill()
    process.join()
"""


@pytest.mark.parametrize("module, bar, leaks", [("tqdm", "tqdm", True), ("flaudit.core.progress", "step_bar", False)])
def test_a_job_child_stopped_mid_bar_leaves_no_semaphore(tmp_path, module, bar, leaks):
    """tqdm's default lock is a multiprocessing semaphore per process; a child killed for its
    time or memory left it behind ("leaked semaphore objects" at the run's end). flaudit's bars
    take a thread lock (the plain tqdm case shows the test sees the leak)."""
    script = tmp_path / "child.py"
    script.write_text(KILLED_CHILD_WITH_A_BAR.format(module=module, bar=bar))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert ("leaked semaphore" in done.stderr) == leaks, done.stderr
