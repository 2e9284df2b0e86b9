"""``DIR/report.html``: one self-contained page (inline CSS, images as base64 PNG) a compliance
reader can open offline: what was audited, the attack x defense matrix coloured by risk,
reconstruction grids of the worst cells, privacy-utility plots, failures and the manifest."""

from __future__ import annotations

import base64
import json
from html import escape
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from flaudit.auditor.results import risk
from flaudit.auditor.results.cells import CellFigures, ImageFigures, Stat, counts_text, labels_text, worst_cells
from flaudit.auditor.results.findings import findings
from flaudit.auditor.results.view import AuditInfo, AuditView, PrivacyAuditCheck, Provenance, RunFacts, ScenarioInfo, UtilityFigures
from flaudit.auditor.results.artifact_paths import resolve_inside
from flaudit.auditor.results.plots import privacy_utility_png

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2rem auto;max-width:1400px;color:#1d1d1d;padding:0 1rem}
h1{font-size:1.7rem;margin-bottom:.2rem}h2{border-bottom:2px solid #ddd;padding-bottom:.2rem;margin-top:2.2rem}
table{border-collapse:collapse;margin:.6rem 0;font-size:.88rem}th,td{border:1px solid #c8c8c8;padding:.3rem .5rem;vertical-align:top}
th{background:#f1f1f1;text-align:left}td.cell{text-align:center;overflow-wrap:anywhere;font-size:.8rem}td.cell b{display:block;text-transform:uppercase;font-size:.78rem;letter-spacing:.04em}
table.matrix{table-layout:fixed}table.matrix th{overflow-wrap:anywhere}table.matrix th.corner,table.matrix tr th:first-child{width:10rem}
ul.findings li{margin:.3rem 0;line-height:1.35}
.muted{color:#666}.small{font-size:.8rem}.chips span{display:inline-block;padding:.25rem .6rem;margin:.15rem;border-radius:.3rem;font-weight:600}
figure{margin:1rem 0}figure img{max-width:100%;image-rendering:pixelated;border:1px solid #ccc}figcaption{font-size:.85rem;color:#444}
.violation{color:#fff;background:#b3261e;padding:0 .3rem;border-radius:.2rem;font-weight:700}
pre{background:#f6f6f6;padding:.5rem;overflow-x:auto;font-size:.78rem;max-height:18rem}code{font-size:.82rem}
"""


def _e(value: Any) -> str:
    """Any scorecard value as HTML text: a scorecard is data a user may have edited."""
    return escape(str(value))


def _png(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def _params(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{escape(k)}={escape(json.dumps(v))}" for k, v in params.items()) or "defaults"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _matrix_cell(figures: CellFigures) -> str:
    colour = risk.COLOURS[figures.risk]
    if figures.status == "not_applicable":
        return f'<td class=cell style="background:{colour}" title="{escape(figures.reason or "")}"><b>n/a</b></td>'
    lines = [f"<b>{escape(figures.risk)}</b>"]
    if figures.images:
        lines += _image_lines(figures.images)
    if figures.labels:
        lines.append(escape(labels_text(figures.labels)))
    if figures.failed:
        lines.append(f'<span class=small title="{escape(figures.first_error or "")}">{figures.failed} seed(s) failed</span>')
    if figures.dp_violation:
        lines.append('<span class=violation>dp_violation</span>')
    return f'<td class=cell style="background:{colour}">' + "<br>".join(lines) + "</td>"


def _stat(stat: Stat | None, digits: int = 1, unit: str = "", scale: float = 1.0) -> str:
    if stat is None:
        return "–"
    text = f"{scale * stat.mean:.{digits}f}{unit}"
    if stat.ci95:
        text += f" <span class=muted>[{scale * stat.ci95[0]:.{digits}f}, {scale * stat.ci95[1]:.{digits}f}]</span>"
    return text


def _image_lines(images: ImageFigures) -> list[str]:
    """Counts (never a bare rate), the leakage it was rated by, then the mean PSNR."""
    lines = [escape(counts_text(images))]
    if images.leakage:
        lines.append(f"leakage {_stat(images.leakage, 1, '%', 100.0)}")
    lines.append(f'<span class=small>PSNR {_stat(images.psnr_mean, 1, " dB")}</span>')
    return lines


def _utility_cell(entry: UtilityFigures | None) -> str:
    if entry is None:
        return "<td>–</td>"
    if entry.status == "not_applicable":
        return f'<td class=cell title="{escape(entry.reason or "")}"><b>n/a</b></td>'
    return f"<td class=cell>{_stat(entry.accuracy, 3)}<br><span class=small>drop {_stat(entry.drop, 3)}</span></td>"


def _matrix(view: AuditView, scenario: ScenarioInfo) -> str:
    """Attack rows x the scenario's defense columns, fixed layout so it wraps, never scrolls."""
    head = "<th class=corner>attack \\ defense</th>" + "".join(f"<th>{escape(d)}</th>" for d in scenario.defenses)
    rows = []
    for attack in scenario.attacks:
        found = (view.cell(scenario.label, d, attack) for d in scenario.defenses)
        tds = "".join(_matrix_cell(c) if c else "<td>–</td>" for c in found)
        threat = view.attack(attack).threat_model_text
        rows.append(f"<tr><th>{escape(attack)}<br><span class='muted small'>{escape(threat)}</span></th>{tds}</tr>")
    util = "".join(_utility_cell(view.utility.get((scenario.label, d))) for d in scenario.defenses)
    rows.append(f"<tr><th>utility: test accuracy</th>{util}</tr>")
    if not scenario.attacks:
        rows.insert(0, f"<tr><td colspan={len(scenario.defenses) + 1}>No attack is registered: only utility was measured.</td></tr>")
    width = min(100, 12 * (len(scenario.defenses) + 1))  # a few columns stay narrow; many share the window
    return f'<table class=matrix style="width:{width}%"><tr>{head}</tr>{"".join(rows)}</table>'


def _scenario_heading(scenario: ScenarioInfo) -> str:
    what = f"{escape(scenario.description)} · " if scenario.description else ""
    return f"<h3>{escape(scenario.label)}</h3><p class='muted small'>{what}{escape(scenario.training)}</p>"


def _findings(view: AuditView) -> str:
    """Page one: the findings, by topic."""
    parts, topic = [], None
    for finding in findings(view):
        if finding.topic != topic:
            parts.append(("</ul>" if topic else "") + f"<h3>{escape(finding.topic.capitalize())}</h3><ul class=findings>")
            topic = finding.topic
        parts.append(f"<li><b>{escape(finding.headline)}</b> {escape(finding.detail)}</li>")
    return "".join(parts) + ("</ul>" if topic else "<p>No cell was scored.</p>")


def _legend(audit: AuditInfo) -> str:
    chips = "".join(f'<span style="background:{risk.COLOURS[level]}">{level}</span>' for level in (*risk.LEVELS, risk.UNKNOWN, risk.NOT_APPLICABLE, risk.UNSCORED))
    cutoffs = "; ".join(
        f"{escape(name)}: low &gt; {cut['low']:g}, medium &ge; {cut['medium']:g}, high &ge; {cut['high']:g}"
        for name, cut in audit.risk_thresholds.items()
    )
    if audit.identifiable_margin_db is None:  # a flaudit.scorecard/1 audit: risk from raw recovery
        text = (f"Risk from the recovery rate (matched reconstruction reaches {audit.psnr_threshold:g} dB PSNR, mean "
                f"over seeds) and label accuracy, by the worse ({cutoffs}). This scorecard predates null baselines.")
    else:
        text = (
            f"A target is <i>recovered</i> when its matched reconstruction reaches {audit.psnr_threshold:g} dB PSNR "
            f"and is {audit.identifiable_margin_db:g} dB closer to it than to every non-member of the test split. "
            "The <i>null</i> is the best data-blind guess on the same targets (the attacker's own images, their mean, "
            "the attack's prior without the observation; labels: the attacker's label distribution). "
            "<i>Leakage</i> = recovery &minus; null. Risk is read from the lower end of the leakage's 95% interval "
            "(over seeds; with one seed, Newcombe's interval on the counts): none unless it is above the null "
            f"({cutoffs}); a cell is rated by its own output, not by a label step the labels row reports. "
            "PSNR is the mean over every target (an unrecovered one scored against the attacker's mean image)."
        )
    return f"<p class=chips>{chips}</p><p class=small>{text} <i>unknown</i>: every seed failed, or nothing the attack returned could be scored. Brackets: 95% interval over seeds.</p>"


def _audited(view: AuditView, facts: RunFacts) -> str:
    scenarios = _table(
        ["label", "dataset", "model", "clients", "rounds", "local training", "partition", "seeds"],
        (
            [
                _e(s.label), _e(f.dataset), _e(f.model), _e(f.clients), _e(f.rounds),
                _e(f"E={f.local_epochs}, B={f.batch_size}, lr={f.lr}"),
                _e(f"{f.partition}" + (f" (alpha={f.alpha:g})" if f.alpha is not None else "")),
                _e(", ".join(map(str, s.seeds))),
            ]
            for s in view.scenarios for f in (s.federation,)
        ),
    )
    defenses = _table(
        ["label", "composition (in order) and parameters"],
        ([escape(d.label), "<br>".join(f"<b>{escape(c.name)}</b>: {_params(c.params)}" for c in d.components) or "no defense (baseline)"]
         for d in facts.defenses),
    )
    attacks = _table(
        ["label", "attack", "threat model", "parameters"],
        ([escape(a.label), escape(a.name), escape(a.threat_model_text), _params(a.params)] for a in view.attacks),
    )
    if not view.attacks:
        attacks = "<p>No attack is registered.</p>"
    return f"<h3>Scenarios</h3>{scenarios}<h3>Defenses</h3>{defenses}<h3>Attacks</h3>{attacks}"


def _grids(view: AuditView, out: Path, count: int) -> str:
    parts = []
    for cell in worst_cells(view.cells.values(), count):
        if not cell.artifacts:
            continue
        artifact = cell.artifacts[0]
        path = resolve_inside(out, artifact.grid, f"cell {cell.cell_id!r}")
        if not path.is_file():
            parts.append(f"<p>{escape(cell.cell_id)}: grid {escape(str(path))} is missing.</p>")
            continue
        what = escape(counts_text(cell.images)) if cell.images else "no image recovered"
        caption = (
            f"<b>{escape(cell.cell_id)}</b> (seed {_e(artifact.seed)}): risk {escape(cell.risk)}, {what}. "
            "Top row: original client images; bottom row: their matched reconstructions, best-recovered first."
        )
        parts.append(f'<figure><img alt="{escape(cell.cell_id)}" src="{_png(path.read_bytes())}"><figcaption>{caption}</figcaption></figure>')
    return "".join(parts) or "<p>No cell produced image reconstructions.</p>"


def _utility_section(view: AuditView, scenario: str) -> str:
    entries = view.scenario_utility(scenario)
    png = privacy_utility_png(scenario, entries, view.scenario_cells(scenario))
    plot = f'<figure><img alt="privacy-utility {escape(scenario)}" src="{_png(png)}"></figure>' if png else ""
    rows = []
    for u in entries:
        figures = "; ".join(
            f"{escape(d)}: " + ", ".join(f"{escape(k)}={v.mean:.4g}" for k, v in f.items()) for d, f in u.figures.items()
        )
        status = f"n/a: {u.reason}" if u.status == "not_applicable" else u.status
        rows.append([escape(u.defense), _stat(u.accuracy, 3), _stat(u.drop, 3), figures or "–", escape(status)])
    return plot + _table(["defense", "test accuracy", "drop vs none", "defense figures (mean over seeds)", "status"], rows)


def _verdict(check: PrivacyAuditCheck) -> str:
    if check.errors and not check.seeds:
        return f"audit failed: {escape(check.errors[0].message)}"
    if check.violation:
        return f"<span class=violation>dp_violation</span> (seeds {', '.join(map(str, check.violating_seeds))})"
    return "no claim to check" if check.claimed is None else "consistent"


def _dp_audit(view: AuditView) -> str:
    """The empirical epsilon lower bound beside each DP claim (flaudit.auditor.privacy_audit)."""
    rows = []
    for u in view.utility.values():
        for c in u.privacy_audits:
            claimed, bound = c.claimed, c.bound
            ratio = f"{bound.mean / claimed.mean:.2f}" if bound and claimed and claimed.mean > 0 else "–"
            rows.append([
                escape(u.scenario), escape(u.defense), escape(c.component), _stat(claimed, 2), _stat(bound, 2), ratio,
                f"{c.canaries} canaries in client {c.canary_client}, {escape(str(c.observed))} seen, "
                f"{c.confidence:.0%} confidence" if c.canaries else "–",
                _verdict(c),
            ])
    if not rows:
        return "<p>No defense column makes a DP claim the audit could check.</p>"
    return (
        "<p class=small>Each DP column is run once more per seed with gradient canaries (Dirac canaries, each in "
        "one client's data with probability 1/2); the server's view scores them and the one-run audit "
        "(Steinke, Nasr, Jagielski 2023) proves the lower bound at the stated confidence. The claim is the "
        "canary client's epsilon from the same run's accountant. A bound above the claim is a violation: "
        "the defense does not give the privacy it reports.</p>"
        + _table(["scenario", "defense", "component", "claimed epsilon", "empirical lower bound", "bound / claim",
                  "audit", "verdict"], rows)
    )


def _errors(view: AuditView) -> str:
    failed = [(c.cell_id, e) for c in view.cells.values() for e in c.errors]
    failed += [(f"{u.scenario}/{u.defense} (utility)", e) for u in view.utility.values() for e in u.errors]
    if not failed:
        return "<p>None: every job finished.</p>"
    return "".join(
        f"<details><summary><b>{escape(where)}</b> seed {_e('?' if e.seed is None else e.seed)}: {escape(e.type)}: {escape(e.message)}</summary><pre>{escape(e.traceback)}</pre></details>"
        for where, e in failed
    )


def _provenance(p: Provenance | None) -> list[tuple[str, str]]:
    """The tamper evidence (``flaudit verify`` re-checks it), when the run recorded it."""
    if p is None:
        return []
    data = "<br>".join(
        f"{escape(label)} ({escape(dataset)}): " + ", ".join(f"seed {escape(str(s))} <code>{escape(h[:16])}</code>" for s, h in seeds.items())
        for label, (dataset, seeds) in p.data.items()
    )
    return [
        ("config as written", f"{escape(p.config_file)}, SHA-256 <code>{escape(p.config_sha256)}</code>"),
        ("data (SHA-256 of the tensors used)", data),
        ("code", f"SHA-256 of {_e(p.code_files)} package files <code>{escape(p.package_sha256)}</code>"),
        ("stored results", f"{p.outputs} files, each with its SHA-256 in the scorecard"),
    ]


def _manifest(facts: RunFacts) -> str:
    m, audit = facts.manifest, facts.audit
    facts = [
        ("config", f"{escape(audit.source)} (profile {escape(str(audit.profile))})"),
        ("config hash", f"<code>{_e(audit.config_hash)}</code>"),
        ("seeds", _e(", ".join(map(str, m.seeds)))),
        ("started / finished", _e(f"{m.started} / {m.finished} ({m.duration_seconds:.0f} s)")),
        ("executor", _e(f"{m.executor}, {m.threads} thread(s) per job, workers: {m.workers or 'default'}")),
        ("git commit", escape(str(m.git_commit)) + (" (uncommitted changes)" if m.git_dirty else "")),
        ("device", escape(f"{m.cpu}; CUDA available: {m.cuda_available} {', '.join(m.gpus)}")),
        ("compiled kernels", _e(f"built: {m.extension_built}, CUDA kernels: {m.cuda_kernels}")),
        ("python / platform", escape(f"{m.python} / {m.platform}")),
        ("packages", escape(", ".join(f"{k} {v}" for k, v in m.packages.items()))),
        *_provenance(m.provenance),
    ]
    return _table(["", ""], ([f"<b>{k}</b>", v] for k, v in facts))


def render(document: Mapping[str, Any], out: Path) -> str:
    """The report's HTML; ``out`` is the run folder its artifact paths are relative to."""
    view, facts = AuditView.of(document), RunFacts.of(document)
    counts, by_risk = facts.counts, facts.counts.by_risk
    verdict = (
        f"{counts.cells} cells: {counts.ok} scored, {counts.not_applicable} not applicable, "
        f"{counts.error} failed. Risk: high {by_risk['high']}, medium {by_risk['medium']}, "
        f"low {by_risk['low']}, none {by_risk['none']}."
    )
    matrices = "".join(_scenario_heading(s) + _matrix(view, s) for s in view.scenarios)
    utility = "".join(f"<h3>{escape(s.label)}</h3>{_utility_section(view, s.label)}" for s in view.scenarios)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>flaudit audit: {escape(view.name)}</title>
<style>{CSS}</style></head><body>
<h1>Privacy audit: {escape(view.name)}</h1>
<p class=muted>flaudit scorecard {escape(facts.audit.schema)} · {escape(facts.manifest.finished)} · config {escape(facts.audit.config_hash[:12])}</p>
<p id=verdict><b>{escape(verdict)}</b></p>
<h2>Findings</h2>{_findings(view)}
<h2>Risk matrix: attack x defense</h2>{_legend(facts.audit)}{matrices}
<h2>Reconstructions of the worst cells</h2>{_grids(view, out, facts.audit.grid_cells)}
<h2>Privacy vs utility</h2>{utility}
<h2>DP claims checked</h2>{_dp_audit(view)}
<h2>What was audited</h2>{_audited(view, facts)}
<h2>Failures</h2>{_errors(view)}
<h2>Manifest</h2>{_manifest(facts)}
</body></html>
"""
