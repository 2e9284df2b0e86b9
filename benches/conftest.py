"""Shared pytest-benchmark helpers for flaudit's benches.

Ratios, not absolute times, are what carry from one machine to another, so every benchmark
group holds the candidate and its baselines measured in the same run, and the summary hook
below prints each member's median as a ratio to the group's baselines. A benchmark declares its
role with ``benchmark.extra_info["role"]``:

* ``"floor"``: the memory-traffic (or other physical) floor, e.g. ``gW.clone()``;
* ``"reference"``: the implementation being replaced, e.g. the pure-torch reference;
* ``"candidate"`` (the default): what is being measured.

For each group it prints ``candidate / floor = 1.2x`` (how far from the floor, lower is better)
and ``reference / candidate = 3.1x`` (speed-up over the reference, higher is better).
"""

from __future__ import annotations

from collections import defaultdict

ROLES = ("floor", "reference", "candidate")


def _label(bench) -> str:
    return bench.extra_info.get("label") or bench.name


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    session = getattr(config, "_benchmarksession", None)
    benchmarks = [b for b in getattr(session, "benchmarks", []) if b]  # falsy: no stats (disabled)
    if not benchmarks:
        return
    groups: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for bench in benchmarks:
        role = bench.extra_info.get("role", "candidate")
        groups[bench.group or "(no group)"][role if role in ROLES else "candidate"].append(bench)

    lines = []
    for group in sorted(groups):
        members = groups[group]
        if not (members["floor"] or members["reference"]):
            continue
        lines.append(f"{group}:")
        for cand in members["candidate"]:
            c = cand.stats.median
            parts = [f"{_label(cand)} median {c * 1e3:.2f} ms"]
            parts += [f"{_label(cand)} / {_label(f)} = {c / f.stats.median:.2f}x" for f in members["floor"]]
            parts += [f"{_label(r)} / {_label(cand)} = {r.stats.median / c:.2f}x" for r in members["reference"]]
            lines.append("  " + ", ".join(parts))
        for base in members["floor"] + members["reference"]:
            lines.append(f"  ({_label(base)} median {base.stats.median * 1e3:.2f} ms)")
    if lines:
        terminalreporter.write_sep("-", "benchmark ratios (medians; floor: lower is better, reference: higher is better)")
        for line in lines:
            terminalreporter.write_line(line)
