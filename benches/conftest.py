"""Shared pytest-benchmark machinery of flaudit's benches: roles and ratios, saved history per
machine, a fixed thread count, and a test-only switch that slows a kernel on purpose.

Ratios, not absolute times, are what carry from one machine to another, so every benchmark
group holds the candidate and its bases measured in the same run. A benchmark declares its role
in ``benchmark.extra_info["role"]`` (``floor``, ``reference``, ``peer`` or ``candidate``, the
default; see benches/ratios.py) and may declare the candidate's regression tolerance in
``extra_info["tolerance"]``. The summary prints, per group, each member's median and each ratio,
next to the same numbers of the latest saved run of this machine that measured them, and a
table of the peer comparisons.

* History: with ``--benchmark-autosave`` (``make bench``) runs are saved under
  ``.benchmarks/<machine>/`` (host, CPU model, core count, GPU), unless ``--benchmark-storage``
  names another place; the machine info of each run records the machine and thread count.
* Threads: torch runs with ``--bench-threads`` (default 1, what the committed baseline was
  measured with), so a ratio compares single-threaded work on both sides and does not depend on
  the machine's core count, nor on other jobs: on a shared 2-core machine two threads that wait
  for each other made a local training step 6x slower than one thread. 0 keeps torch's default.
* ``--bench-slow-kernel NAME=FACTOR``: every call of ``torch.ops.flaudit.NAME`` runs the op
  FACTOR times. Test-only, to show that ``make bench-check`` catches a slower kernel; such a
  run is never saved into the history.
"""

from __future__ import annotations

import platform
import re
from pathlib import Path

import pytest
import torch

from flaudit.auditor.running.manifest import device_info
from ratios import Ratio, machine_summary, run_ratios

DEFAULT_STORAGE = "file://./.benchmarks"  # pytest-benchmark's default --benchmark-storage
DEFAULT_THREADS = 1


def pytest_addoption(parser):
    group = parser.getgroup("flaudit benches")
    group.addoption("--bench-threads", type=int, default=DEFAULT_THREADS,
                    help=f"torch threads for the benches (default {DEFAULT_THREADS}; 0: torch's default)")
    group.addoption("--bench-slow-kernel", action="append", default=[], metavar="NAME=FACTOR",
                    help="test-only: run torch.ops.flaudit.NAME FACTOR times per call (never saved)")


# ---- machine, threads, slowed kernels -------------------------------------------------------


def _gpu() -> str | None:
    gpus = device_info()["gpus"]
    return gpus[0] if gpus else None


def machine_name() -> str:
    """Names the machine a run's absolute times belong to: host, CPU model, cores, GPU."""
    device = device_info()
    parts = [platform.node(), device["cpu"], f"{device['cpu_count']}cpu", *device["gpus"][:1]]
    return re.sub(r"[^A-Za-z0-9.]+", "-", "-".join(p for p in parts if p)).strip("-")


def _parse_slowdowns(values: list[str]) -> dict[str, int]:
    slowed = {}
    for value in values:
        name, sep, factor = value.partition("=")
        if not sep or not factor.isdigit() or int(factor) < 2:
            raise pytest.UsageError(f"--bench-slow-kernel {value!r}: expected NAME=FACTOR with FACTOR >= 2")
        slowed[name] = int(factor)
    return slowed


def _slow_down(name: str, factor: int) -> None:
    """Replaces ``torch.ops.flaudit.<name>`` by a function running the op ``factor`` times."""
    from flaudit.core import native

    if not native.extension_available() or not hasattr(torch.ops.flaudit, name):
        raise pytest.UsageError(f"--bench-slow-kernel: torch.ops.flaudit.{name} is not a built kernel")
    op = getattr(torch.ops.flaudit, name)

    def slowed(*args, **kwargs):
        for _ in range(factor - 1):
            op(*args, **kwargs)
        return op(*args, **kwargs)

    setattr(torch.ops.flaudit, name, slowed)


def pytest_configure(config):
    # Runs before pytest-benchmark's own (trylast) configure, which reads these options.
    config.flaudit_machine = machine_name()
    if config.getoption("benchmark_storage") == DEFAULT_STORAGE:
        config.option.benchmark_storage = f"{DEFAULT_STORAGE}/{config.flaudit_machine}"
    threads = config.getoption("bench_threads")
    if threads:
        torch.set_num_threads(threads)
    config.flaudit_slowed = _parse_slowdowns(config.getoption("bench_slow_kernel"))
    for name, factor in config.flaudit_slowed.items():
        _slow_down(name, factor)
    if config.flaudit_slowed:
        config.option.benchmark_autosave = None
        config.option.benchmark_save = None


def pytest_report_header(config):
    slowed = ", ".join(f"{n} x{f}" for n, f in config.flaudit_slowed.items())
    return [f"flaudit benches: machine {config.flaudit_machine}, {torch.get_num_threads()} torch threads"
            + (f", SLOWED ON PURPOSE: {slowed} (not saved)" if slowed else "")]


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["flaudit"] = {
        "machine": config.flaudit_machine,
        "threads": torch.get_num_threads(),
        "gpu": _gpu(),
        "slowed": config.flaudit_slowed,
    }


# ---- history ---------------------------------------------------------------------------------


def pytest_sessionstart(session):
    """Loads this machine's saved runs before this run adds its own."""
    config = session.config
    bench_session = getattr(config, "_benchmarksession", None)
    storage = getattr(bench_session, "storage", None)
    history = []
    if storage is not None and hasattr(storage, "path"):  # file storage (not elasticsearch)
        history = [(Path(path).stem.split("_")[0], run) for path, run in storage.load()]
    config.flaudit_history = [
        (number, run) for number, run in history if machine_summary(run).get("machine") == config.flaudit_machine
    ]


class History:
    """The latest saved run of this machine that measured a benchmark, per benchmark."""

    def __init__(self, runs: list[tuple[str, dict]]) -> None:
        self.latest: dict[str, tuple[str, dict]] = {}
        for number, run in runs:  # oldest first: later runs overwrite
            for bench in run.get("benchmarks", []):
                self.latest[bench["fullname"]] = (number, bench)
        self.ratios: dict[str, tuple[str, Ratio]] = {}
        for number, run in runs:
            for ratio in run_ratios(run.get("benchmarks", [])):
                self.ratios[ratio.key] = (number, ratio)

    def change(self, bench: dict) -> str:
        if bench["fullname"] not in self.latest:
            return ""
        number, old = self.latest[bench["fullname"]]
        return f" (run {number}: {old['stats']['median'] * 1e3:.2f} ms, {bench['stats']['median'] / old['stats']['median'] - 1:+.0%})"

    def ratio(self, ratio: Ratio) -> str:
        if ratio.key not in self.ratios:
            return ""
        number, old = self.ratios[ratio.key]
        return f" (run {number}: {old.shown.rsplit(' = ', 1)[1]})"


# ---- summary ---------------------------------------------------------------------------------


def _summary_lines(benchmarks: list[dict], history: History) -> list[str]:
    ratios_by_group: dict[str, list[Ratio]] = {}
    for ratio in run_ratios(benchmarks):
        ratios_by_group.setdefault(ratio.group, []).append(ratio)
    lines = []
    for group in sorted(ratios_by_group):
        lines.append(f"{group}:")
        for bench in sorted((b for b in benchmarks if (b["group"] or "(no group)") == group),
                            key=lambda b: b["extra_info"].get("role", "candidate") != "candidate"):
            role = bench["extra_info"].get("role", "candidate")
            name = bench["extra_info"].get("label") or bench["name"]
            lines.append(f"  {name} ({role}) median {bench['stats']['median'] * 1e3:.2f} ms{history.change(bench)}")
        for ratio in ratios_by_group[group]:
            lines.append(f"  {ratio.shown}{history.ratio(ratio)}")
    return lines


def _peer_lines(benchmarks: list[dict]) -> list[str]:
    peers = [r for r in run_ratios(benchmarks) if r.role == "peer"]
    if not peers:
        return []
    lines = [f"{'ours':>12} {'peer':>12} {'peer / ours':>12}  group (ours vs peer)"]
    for r in peers:
        lines.append(f"{r.candidate_seconds * 1e3:9.2f} ms {r.base_seconds * 1e3:9.2f} ms {1 / r.ratio:11.1f}x  "
                     f"{r.group} ({r.candidate} vs {r.base})")
    return lines


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    session = getattr(config, "_benchmarksession", None)
    benchmarks = [b.as_dict(include_data=False) for b in getattr(session, "benchmarks", []) if b]  # falsy: no stats
    if not benchmarks:
        return
    history = History(getattr(config, "flaudit_history", []))
    write = terminalreporter.write_line
    terminalreporter.write_sep("-", "benchmark ratios (medians; floor: lower is better, reference and peer: "
                                    "higher is better; in brackets: this machine's latest saved run)")
    for line in _summary_lines(benchmarks, history):
        write(line)
    peers = _peer_lines(benchmarks)
    if peers:
        terminalreporter.write_sep("-", "peer comparisons (same run, medians)")
        for line in peers:
            write(line)
