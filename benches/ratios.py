"""Ratios of a pytest-benchmark run, and the regression check CI runs on them.

Absolute times do not carry from one machine to another; the ratio of two times measured in the
same run mostly does. Every bench group therefore holds a *candidate* and what it is measured
against, each member naming its role in ``extra_info["role"]`` (benches/conftest.py):

* ``floor``: the physical floor of the work (``gW.clone()`` for a memory-bound op),
* ``reference``: what the candidate replaces (the pure-torch reference of a kernel),
* ``peer``: another project's implementation of the same work (breaching, Flower).

A ratio is candidate time / base time (median of the rounds), one per candidate and base of a
group, so a ratio that grows means the candidate got slower relative to its in-run base. The
check compares a run's ratios with the committed ``benches/baseline.json`` and fails when one
grew by more than its group's tolerance: ``ratio > baseline ratio * (1 + tolerance)``. A bench
declares its tolerance in the candidate's ``extra_info["tolerance"]`` (default
``DEFAULT_TOLERANCE``), next to the reason for it. Absolute times are printed, never gated.

Standard library only, so CI can call it without flaudit (or torch) installed::

    python benches/ratios.py check RUN.json [--baseline benches/baseline.json]
    python benches/ratios.py baseline RUN.json [--baseline benches/baseline.json] [--prune]

``RUN.json`` is what ``pytest --benchmark-json`` (or ``--benchmark-autosave``) writes. ``check``
exits 0 when no ratio regressed, 1 when one did, 2 for unusable input.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping

SCHEMA = "flaudit.bench-baseline/1"
DEFAULT_BASELINE = Path(__file__).with_name("baseline.json")
DEFAULT_TOLERANCE = 0.5  # 50 % slower relative to the in-run base: shared 2-core CI machines are noisy
BASE_ROLES = ("floor", "reference", "peer")
CANDIDATE = "candidate"
STATISTIC = "median"


class BenchInputError(Exception):
    """A run or baseline file that cannot be read or has not the expected form."""


@dataclass(frozen=True)
class Ratio:
    """Candidate time / base time of one bench group, with both times (seconds)."""

    group: str
    candidate: str
    base: str
    role: str  # the base's role: floor, reference or peer
    ratio: float
    candidate_seconds: float
    base_seconds: float
    tolerance: float

    @property
    def key(self) -> str:
        return f"{self.group} | {self.candidate} / {self.base}"

    @property
    def shown(self) -> str:
        """The ratio the way people read it: distance to a floor (lower is better), speed-up over
        a reference or peer (higher is better)."""
        if self.role == "floor":
            return f"{self.candidate} / {self.base} = {self.ratio:.2f}x"
        return f"{self.base} / {self.candidate} = {1 / self.ratio:.2f}x"


def label(bench: Mapping[str, Any]) -> str:
    return bench.get("extra_info", {}).get("label") or bench["name"]


def role(bench: Mapping[str, Any]) -> str:
    value = bench.get("extra_info", {}).get("role", CANDIDATE)
    return value if value in BASE_ROLES else CANDIDATE


def run_ratios(benchmarks: Iterable[Mapping[str, Any]]) -> list[Ratio]:
    """Every (candidate, base) ratio of every group, from pytest-benchmark's JSON entries."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for bench in benchmarks:
        groups.setdefault(bench.get("group") or "(no group)", []).append(bench)
    ratios = []
    for group, members in sorted(groups.items()):
        bases = [b for b in members if role(b) != CANDIDATE]
        for cand in (b for b in members if role(b) == CANDIDATE):
            c = cand["stats"][STATISTIC]
            tolerance = float(cand.get("extra_info", {}).get("tolerance", DEFAULT_TOLERANCE))
            for base in bases:
                b = base["stats"][STATISTIC]
                ratios.append(Ratio(group, label(cand), label(base), role(base), c / b, c, b, tolerance))
    return ratios


def read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        document = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise BenchInputError(f"{what} {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BenchInputError(f"{what} {path} cannot be read: {exc}") from None
    except json.JSONDecodeError as exc:
        raise BenchInputError(f"{what} {path} is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise BenchInputError(f"{what} {path} is not a JSON object")
    return document


def load_run(path: Path) -> dict[str, Any]:
    """A pytest-benchmark JSON file (``--benchmark-json`` or a saved run)."""
    run = read_json(path, "benchmark run")
    benchmarks = run.get("benchmarks")
    if not isinstance(benchmarks, list) or not all(
        isinstance(b, dict) and isinstance(b.get("stats"), dict) and STATISTIC in b["stats"] and "name" in b
        for b in benchmarks
    ):
        raise BenchInputError(f"benchmark run {path} has no pytest-benchmark 'benchmarks' list")
    return run


def load_baseline(path: Path) -> dict[str, Any]:
    baseline = read_json(path, "baseline")
    if baseline.get("schema") != SCHEMA or not isinstance(baseline.get("ratios"), dict):
        raise BenchInputError(f"baseline {path} is not a {SCHEMA} file (rewrite it with `make bench-baseline`)")
    return baseline


def machine_summary(run: Mapping[str, Any]) -> dict[str, Any]:
    """What the ratios were measured on (conftest.py adds the ``flaudit`` entry)."""
    info = run.get("machine_info", {})
    return {"cpu": info.get("cpu", {}).get("brand_raw"), **info.get("flaudit", {})}


# ---- check ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    ratio: Ratio
    baseline: float | None  # None: a new ratio, not in the baseline

    @property
    def limit(self) -> float | None:
        return None if self.baseline is None else self.baseline * (1 + self.ratio.tolerance)

    @property
    def status(self) -> str:
        if self.baseline is None:
            return "new"
        if self.ratio.ratio > self.limit:
            return "REGRESSED"
        if self.ratio.ratio * (1 + self.ratio.tolerance) < self.baseline:
            return "faster"
        return "ok"


def check(run: Mapping[str, Any], baseline: Mapping[str, Any]) -> tuple[list[Verdict], list[str]]:
    """Verdicts for the run's ratios, and the baseline keys this run did not measure."""
    known = baseline["ratios"]
    ratios = run_ratios(run["benchmarks"])
    verdicts = [Verdict(r, known[r.key]["ratio"] if r.key in known else None) for r in ratios]
    measured = {r.key for r in ratios}
    return verdicts, sorted(k for k in known if k not in measured)


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms" if seconds < 10 else f"{seconds:.1f} s"


def render_check(verdicts: list[Verdict], not_run: list[str], run: Mapping[str, Any], baseline: Mapping[str, Any]) -> str:
    lines = [
        "bench-check: ratio = candidate time / in-run base time (lower is better); REGRESSED when "
        "ratio > baseline * (1 + tolerance). Times are shown, never gated.",
        f"  run on      {json.dumps(machine_summary(run), sort_keys=True)}",
        f"  baseline on {json.dumps(baseline.get('machine', {}), sort_keys=True)} ({baseline.get('written', '?')})",
    ]
    threads = (machine_summary(run).get("threads"), baseline.get("machine", {}).get("threads"))
    if None not in threads and threads[0] != threads[1]:
        lines.append(f"  warning: run with {threads[0]} threads, baseline with {threads[1]}: ratios of "
                     "multi-threaded kernels against single-threaded bases shift with the thread count")
    group = None
    for v in verdicts:
        r = v.ratio
        if r.group != group:
            group = r.group
            lines.append(f"{group}:")
        base = "      -" if v.baseline is None else f"{v.baseline:7.3f}"
        limit = "      -" if v.limit is None else f"{v.limit:7.3f}"
        lines.append(
            f"  {v.status:9} {r.candidate} / {r.base} ({r.role}): ratio {r.ratio:7.3f}  baseline {base}  "
            f"limit {limit} (tol {r.tolerance:.0%})  times {_ms(r.candidate_seconds)} / {_ms(r.base_seconds)}"
        )
    if not_run:
        lines.append(f"not measured in this run ({len(not_run)} baseline ratios): " + "; ".join(not_run))
    regressed = [v for v in verdicts if v.status == "REGRESSED"]
    counts = {s: sum(v.status == s for v in verdicts) for s in ("ok", "faster", "new", "REGRESSED")}
    lines.append("bench-check: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    if regressed:
        lines.append("bench-check: FAILED, regressed: " + "; ".join(v.ratio.key for v in regressed))
    return "\n".join(lines)


# ---- baseline -------------------------------------------------------------------------------


def new_baseline(run: Mapping[str, Any], old: Mapping[str, Any] | None, prune: bool) -> tuple[dict[str, Any], int]:
    """The run's ratios over the old baseline's (kept unless ``prune``); returns (baseline, kept)."""
    ratios = {r.key: asdict(r) for r in run_ratios(run["benchmarks"])}
    kept = {} if prune or old is None else {k: v for k, v in old["ratios"].items() if k not in ratios}
    document = {
        "schema": SCHEMA,
        "statistic": STATISTIC,
        "written": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "commit": run.get("commit_info", {}).get("id"),
        "machine": machine_summary(run),
        "ratios": dict(sorted({**kept, **ratios}.items())),
    }
    return document, len(kept)


def write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


# ---- command line ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benches/ratios.py", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    check_cmd = commands.add_parser("check", help="compare a run's ratios with the baseline; exit 1 on a regression")
    write_cmd = commands.add_parser("baseline", help="write the run's ratios into the baseline")
    for cmd in (check_cmd, write_cmd):
        cmd.add_argument("run", type=Path, help="pytest-benchmark JSON of the run")
        cmd.add_argument("--baseline", type=Path, default=DEFAULT_BASELINE)
    write_cmd.add_argument("--prune", action="store_true", help="drop baseline ratios this run did not measure")
    args = parser.parse_args(argv)
    try:
        run = load_run(args.run)
        if not run_ratios(run["benchmarks"]):
            raise BenchInputError(f"benchmark run {args.run} holds no group with a candidate and a base")
        if args.command == "check":
            baseline = load_baseline(args.baseline)
            verdicts, not_run = check(run, baseline)
            print(render_check(verdicts, not_run, run, baseline))
            return 1 if any(v.status == "REGRESSED" for v in verdicts) else 0
        old = load_baseline(args.baseline) if args.baseline.exists() else None
        document, kept = new_baseline(run, old, args.prune)
        write_atomic(args.baseline, json.dumps(document, indent=1) + "\n")
        print(f"wrote {args.baseline}: {len(document['ratios']) - kept} ratios from {args.run}"
              + (f", {kept} kept from the previous baseline (not measured in this run)" if kept else ""))
        return 0
    except BenchInputError as exc:
        print(f"benches/ratios.py: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
