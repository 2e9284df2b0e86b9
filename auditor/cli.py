"""The ``flaudit`` command line: ``list`` the registries, ``simulate`` a federation, ``run`` an
audit, ``gate`` a candidate scorecard against a baseline, re-render a ``report``, ``reproduce``
a paper's tables.

Exit status: 0 success; 1 ``gate`` found regressions (or ``run --strict`` had failed cells);
1 ``verify`` found a scorecard that differs from its run folder; 2 unusable input (config,
names, data, scorecards, paths, and for ``gate`` a scorecard that does not verify), with one
line naming the problem; 3 an unexpected internal error: one line, the traceback goes to a log
file it names."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Sequence

from flaudit.core.errors import FlauditError
from flaudit.core.tables import one_line


def _registries() -> dict[str, object]:
    from flaudit.auditor.attacks.registry import ATTACKS
    from flaudit.defenses.registry import DEFENSES
    from flaudit.scenarios.datasets import DATASETS
    from flaudit.scenarios.kinds import SCENARIO_KINDS
    from flaudit.scenarios.models import MODELS
    from flaudit.scenarios.partition import PARTITIONS

    from flaudit.auditor.reproduce.registry import REPRODUCTIONS

    return {
        "scenario kinds": SCENARIO_KINDS, "datasets": DATASETS, "partitions": PARTITIONS, "models": MODELS,
        "defenses": DEFENSES, "attacks": ATTACKS, "reproductions": REPRODUCTIONS,
    }


def cmd_list(args: argparse.Namespace) -> int:
    registries = _registries()
    if args.json:
        print(json.dumps({k: {e.name: e.summary for e in r.entries()} for k, r in registries.items()},
                         indent=2))
        return 0
    for kind, registry in registries.items():
        print(f"{kind}:")
        entries = list(registry.entries())
        if not entries:
            print("  (none registered yet)")
        width = max((len(e.name) for e in entries), default=0)
        for entry in entries:
            print(f"  {entry.name:<{width}}  {entry.summary}")
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from flaudit.auditor.running.config import load_scenario
    from flaudit.scenarios.kinds import simulate

    overrides = list(args.set)
    if args.data_root is not None:
        overrides.append(f"data_root={json.dumps(str(args.data_root))}")
    config = load_scenario(args.config, overrides, args.scenario, args.profile)
    result = simulate(config, progress=not args.no_progress, describe=not args.json)
    if args.json:
        print(json.dumps({"scenario": _scenario_json(config), **result.to_json()}, indent=2))
    else:
        print(f"final test accuracy: {result.final_test_accuracy:.4f} after {len(result.rounds)} rounds")
    return 0


def _scenario_json(config) -> dict:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(config).items()}


def cmd_run(args: argparse.Namespace) -> int:
    from flaudit.auditor.running.config import load_audit
    from flaudit.auditor.results.outputs import REPORT, SUMMARY
    from flaudit.auditor.running.runner import RunOptions, run_audit
    from flaudit.auditor.results.scorecard import SCORECARD

    config = load_audit(args.config, args.profile)
    if args.plan:
        return _print_plan(config, args)
    options = RunOptions(args.out, args.executor, args.address, args.workers, args.resume, not args.no_progress)
    run = run_audit(config, options)
    card = run.scorecard
    if not run.plan.attacks:
        print("flaudit: no attack is registered yet, so this audit measured utility only", file=sys.stderr)
    if run.resumed_jobs:
        print(f"flaudit: resumed {run.resumed_jobs} finished job(s) from {args.out}", file=sys.stderr)
    print((args.out / SUMMARY).read_text(), end="")
    print(f"\nscorecard: {args.out / SCORECARD}\nreport:    {args.out / REPORT}", file=sys.stderr)
    failed = card["summary"]["error"] + sum(u["status"] == "error" for u in card["utility"])
    if failed:
        print(f"flaudit: warning: {failed} cell(s) failed; their errors are in the scorecard and the report",
              file=sys.stderr)
    return 1 if failed and args.strict else 0


def _print_plan(config, args: argparse.Namespace) -> int:
    """``run --plan``: the matrix, its jobs and the estimated time; runs and writes nothing."""
    from flaudit.auditor.running import catalog
    from flaudit.auditor.running.estimate import Calibration, plan_text
    from flaudit.auditor.running.plan import build_plan

    plan = build_plan(config, catalog.registered())
    print(plan_text(plan, Calibration.from_run(args.out), args.workers, args.out))
    return 0


def cmd_gate(args: argparse.Namespace) -> int:
    from flaudit.auditor.results import gate, scorecard
    from flaudit.auditor.running.config import load_gate

    baseline, candidate = scorecard.load(args.baseline), scorecard.load(args.candidate)
    gate.check_versions(baseline, candidate)
    tolerances = load_gate(args.config) if args.config else gate.tolerances_of(baseline)
    result = gate.compare(baseline, candidate, tolerances)
    if not args.allow_unverified:
        for path in (args.baseline, args.candidate):
            _refuse_unverified(path)
    junit = args.junit or scorecard.scorecard_path(args.candidate).parent / "gate-junit.xml"
    if junit.is_dir():
        raise FlauditError(f"--junit {junit} is a folder; give a file path, e.g. {junit / 'gate-junit.xml'}")
    try:
        gate.write_junit(result, junit)
    except OSError as exc:
        raise FlauditError(f"cannot write --junit {junit}: {exc.strerror or exc}") from None
    scored = sum(c.status != "not_applicable" for c in result.cells)
    if result.passed:
        print(f"flaudit gate: pass: no leakage regression in {scored} applicable cell(s) "
              f"(tolerances: {gate.describe_tolerances(tolerances)}); JUnit: {junit}")
        return 0
    offending = len({f.cell_id for f in result.findings})
    print(f"flaudit gate: FAIL: {offending} of {len(result.cells)} cell(s) leak more than the baseline "
          f"(tolerances: {gate.describe_tolerances(tolerances)}); JUnit: {junit}")
    print(gate.render_table(result))
    return 1


def cmd_verify(args: argparse.Namespace) -> int:
    from flaudit.auditor.results.verify import describe, verify

    result = verify(args.dir)
    for note in result.notes:
        print(f"flaudit verify: note: {note}", file=sys.stderr)
    if result.verified:
        print(f"flaudit verify: OK: {args.dir} matches its run folder (config, every stored result and artifact)")
        return 0
    print(f"flaudit verify: FAIL: {len(result.differences)} difference(s) between the scorecard and its run folder")
    print(describe(result))
    return 1


def _refuse_unverified(path: Path) -> None:
    """``flaudit gate`` compares only scorecards that verify (``--allow-unverified`` skips it)."""
    from flaudit.auditor.results.scorecard import ScorecardError
    from flaudit.auditor.results.verify import verify

    result = verify(path)
    if not result.verified:
        raise ScorecardError(
            f"{path} does not verify against its run folder ({result.differences[0]}"
            f"{f'; +{len(result.differences) - 1} more' if len(result.differences) > 1 else ''}); "
            "run `flaudit verify` on it, or pass --allow-unverified"
        )


def cmd_report(args: argparse.Namespace) -> int:
    from flaudit.auditor.results import scorecard
    from flaudit.auditor.results.outputs import REPORT, SUMMARY, write_reports

    document = scorecard.load(args.dir)
    folder = scorecard.scorecard_path(args.dir).parent
    write_reports(document, folder)
    print(f"{folder / REPORT}\n{folder / SUMMARY}")
    if args.pdf:
        from flaudit.auditor.results.pdf import write_pdf

        print(write_pdf(document, folder))
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from flaudit.auditor.reproduce.run import Request, reproduce

    out = args.out or Path("runs") / f"reproduce-{args.name}{'-quick' if args.quick else ''}"
    flags = [*(["--quick"] if args.quick else []), *(f"--table {t}" for t in args.table), f"--threads {args.threads}"]
    command = " ".join(["flaudit reproduce", args.name, *flags, f"--out {out}"])
    request = Request(args.name, tuple(args.table), args.quick, out, args.threads, not args.no_progress, command)
    path = reproduce(request)
    print(path.read_text(), end="")
    print(f"\ntables: {path}\nrows:   {path.parent / 'rows.json'}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flaudit", description="Privacy audits of federated-learning defenses."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p_list = sub.add_parser("list", help="show the registered datasets, models, defenses, attacks")
    p_list.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p_list.set_defaults(func=cmd_list)

    p_sim = sub.add_parser("simulate", help="run a federation (any kind) and report test accuracy")
    p_sim.add_argument("--config", type=Path, help="TOML file with [scenario] table(s), e.g. an audit config")
    p_sim.add_argument("--scenario", metavar="LABEL", help="which [[scenario]] to run (default: the first)")
    p_sim.add_argument("--profile", help="profile overlay of the config (quick, full, ...)")
    p_sim.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a scenario key, e.g. --set rounds=5 (repeatable)")
    p_sim.add_argument("--data-root", type=Path, help="folder holding on-disk datasets")
    p_sim.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    p_sim.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p_sim.set_defaults(func=cmd_simulate)

    p_run = sub.add_parser("run", help="audit every attack against every defense; write scorecard and reports")
    p_run.add_argument("--config", type=Path, help="audit config (TOML); default: the embedded default audit")
    p_run.add_argument("--out", type=Path, default=Path("runs/default"), help="run folder (default: runs/default)")
    p_run.add_argument("--profile", help="profile overlay: quick, full, or one the config defines")
    p_run.add_argument("--executor", default="local", help="local (default), process or ray")
    p_run.add_argument("--address", help="ray: the cluster to join, e.g. auto or ray://head:10001")
    p_run.add_argument("--workers", type=int, help="process/ray: jobs at once (default: CPUs / threads per job)")
    p_run.add_argument("--resume", action="store_true", help="reuse the jobs already finished in --out")
    p_run.add_argument("--strict", action="store_true", help="exit 1 when any cell failed")
    p_run.add_argument("--plan", action="store_true",
                       help="print the matrix, its jobs and the estimated time (from --out's finished jobs); run nothing")
    p_run.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p_run.set_defaults(func=cmd_run)

    p_gate = sub.add_parser("gate", help="exit 1 when a candidate scorecard leaks more than a baseline")
    p_gate.add_argument("baseline", type=Path, help="baseline scorecard.json (or its run folder)")
    p_gate.add_argument("candidate", type=Path, help="candidate scorecard.json (or its run folder)")
    p_gate.add_argument("--config", type=Path, help="take the [gate] tolerances from this config "
                        "(default: those recorded in the baseline)")
    p_gate.add_argument("--junit", type=Path, help="JUnit XML path (default: gate-junit.xml beside the candidate)")
    p_gate.add_argument("--allow-unverified", action="store_true",
                        help="compare scorecards that do not verify against their run folders")
    p_gate.set_defaults(func=cmd_gate)

    p_verify = sub.add_parser("verify", help="exit 1 when a scorecard differs from its run folder (tamper evidence)")
    p_verify.add_argument("dir", type=Path, help="run folder (or its scorecard.json)")
    p_verify.set_defaults(func=cmd_verify)

    p_repro = sub.add_parser("reproduce", help="re-measure a paper's tables; write them beside the published numbers")
    p_repro.add_argument("name", help="the paper, e.g. scale-mia (`flaudit list` shows them)")
    p_repro.add_argument("--out", type=Path, help="folder for table.md, rows.json and grids/ (default: runs/reproduce-NAME)")
    p_repro.add_argument("--quick", action="store_true", help="a small version (minutes on 2 cores), as CI runs it")
    p_repro.add_argument("--table", action="append", default=[], metavar="NAME",
                         help="measure only this table (repeatable; default: all)")
    p_repro.add_argument("--threads", type=int, default=1, help="torch threads (the numbers depend on it; default 1)")
    p_repro.add_argument("--no-progress", action="store_true", help="no line per finished row")
    p_repro.set_defaults(func=cmd_reproduce)

    p_report = sub.add_parser("report", help="re-render report.html and summary.md from a run folder's scorecard")
    p_report.add_argument("dir", type=Path, help="run folder (or its scorecard.json)")
    p_report.add_argument("--pdf", action="store_true", help="also print report.pdf (headless Chromium)")
    p_report.set_defaults(func=cmd_report)
    return parser


def _crash_log(exc: BaseException) -> Path | None:
    """Writes ``exc``'s traceback to a log file for a bug report; None when it cannot."""
    try:
        handle, name = tempfile.mkstemp(prefix=f"flaudit-crash-{time.strftime('%Y%m%d-%H%M%S')}-", suffix=".log")
        with os.fdopen(handle, "w") as log:
            log.write(f"flaudit {' '.join(sys.argv[1:])}\n\n" + "".join(traceback.format_exception(exc)))
        return Path(name)
    except OSError:
        return None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except FlauditError as exc:
        print(f"flaudit: error: {one_line(str(exc), 2000)}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `flaudit list | head`: the reader left, which is not an error
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("flaudit: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - a bug: one line and a pointer, never a bare traceback
        log = _crash_log(exc)
        where = f"; the traceback is in {log}" if log else ""
        print(f"flaudit: internal error: {type(exc).__name__}: {one_line(str(exc), 300)}{where}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
