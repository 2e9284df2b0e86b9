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
from flaudit.auditor.results.cells import CellFigures, ImageFigures, Stat, counts_text, labels_text
from flaudit.auditor.results.artifact_paths import resolve_inside
from flaudit.auditor.results.plots import privacy_utility_png
from flaudit.auditor.results.scorecard import worst_cells

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2rem auto;max-width:1400px;color:#1d1d1d;padding:0 1rem}
h1{font-size:1.7rem;margin-bottom:.2rem}h2{border-bottom:2px solid #ddd;padding-bottom:.2rem;margin-top:2.2rem}
table{border-collapse:collapse;margin:.6rem 0;font-size:.88rem}th,td{border:1px solid #c8c8c8;padding:.3rem .5rem;vertical-align:top}
th{background:#f1f1f1;text-align:left}td.cell{text-align:center;min-width:5.5rem}.scroll{overflow-x:auto}td.cell b{display:block;text-transform:uppercase;font-size:.78rem;letter-spacing:.04em}
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


def _num(stat: Mapping[str, Any] | None, digits: int = 1, unit: str = "") -> str:
    return _stat(Stat.of(stat), digits, unit)


def _params(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{escape(k)}={escape(json.dumps(v))}" for k, v in params.items()) or "defaults"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _matrix_cell(cell: Mapping[str, Any]) -> str:
    colour = risk.COLOURS[cell["risk"]]
    if cell["status"] == "not_applicable":
        return f'<td class=cell style="background:{colour}" title="{escape(cell["reason"])}"><b>n/a</b><span class=small>{escape(cell["reason"])}</span></td>'
    figures = CellFigures.of(cell)
    lines = [f"<b>{escape(cell['risk'])}</b>"]
    if figures.images:
        lines += _image_lines(figures.images)
    if figures.labels:
        lines.append(escape(labels_text(figures.labels)))
    if figures.failed:
        lines.append(f'<span class=small title="{escape(figures.first_error or "")}">{figures.failed} seed(s) failed</span>')
    if cell.get("dp_violation"):
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
    """Counts (never a bare rate), the leakage it was rated by, then the PSNR figures."""
    lines = [escape(counts_text(images))]
    if images.leakage:
        lines.append(f"leakage {_stat(images.leakage, 1, '%', 100.0)}")
    if images.psnr_hits is not None:
        lines.append(f'<span class=small>PSNR alone: {images.psnr_hits}/{images.trials}</span>')
    lines.append(f"PSNR {_stat(images.psnr_mean, 1, ' dB')}")
    if images.psnr_recovered:
        lines.append(f'<span class=small>of the recovered: {_stat(images.psnr_recovered, 1, " dB")}</span>')
    return lines


def _utility_cell(entry: Mapping[str, Any]) -> str:
    if entry["status"] == "not_applicable":
        return f'<td class=cell title="{escape(entry["reason"])}"><b>n/a</b><span class=small>{escape(entry["reason"])}</span></td>'
    return f"<td class=cell>{_num(entry['test_accuracy'], 3)}<br><span class=small>drop {_num(entry['accuracy_drop'], 3)}</span></td>"


def _matrix(document: Mapping[str, Any], scenario: str) -> str:
    cells = {c["id"]: c for c in document["cells"] if c["scenario"] == scenario}
    audit = document["audit"]
    defenses = [d["label"] for d in audit["defenses"]]
    utility = {u["defense"]: u for u in document["utility"] if u["scenario"] == scenario}
    head = "<th>attack (threat model) \\ defense</th>" + "".join(f"<th>{escape(d)}</th>" for d in defenses)
    rows = []
    for attack in audit["attacks"]:
        found = (cells.get(f"{scenario}/{d}/{attack['label']}") for d in defenses)
        tds = "".join(_matrix_cell(c) if c else "<td>–</td>" for c in found)
        rows.append(f"<tr><th>{escape(attack['label'])}<br><span class='muted small'>{escape(attack['threat_model_text'])}</span></th>{tds}</tr>")
    util = "".join(_utility_cell(utility[d]) if d in utility else "<td>–</td>" for d in defenses)
    rows.append(f"<tr><th>utility: test accuracy</th>{util}</tr>")
    if not audit["attacks"]:
        rows.insert(0, f"<tr><td colspan={len(defenses) + 1}>No attack is registered: only utility was measured.</td></tr>")
    return f"<div class=scroll><table><tr>{head}</tr>{''.join(rows)}</table></div>"


def _legend(document: Mapping[str, Any]) -> str:
    audit = document["audit"]
    chips = "".join(f'<span style="background:{risk.COLOURS[level]}">{level}</span>' for level in (*risk.LEVELS, risk.UNKNOWN, risk.NOT_APPLICABLE, risk.UNSCORED))
    cutoffs = "; ".join(
        f"{escape(name)}: low &gt; {cut['low']:g}, medium &ge; {cut['medium']:g}, high &ge; {cut['high']:g}"
        for name, cut in audit["risk_thresholds"].items()
    )
    if "identifiable_margin_db" not in audit:  # a flaudit.scorecard/1 audit: risk from raw recovery
        text = (f"Risk from the recovery rate (matched reconstruction reaches {audit['psnr_threshold']:g} dB PSNR, mean "
                f"over seeds) and label accuracy, by the worse ({cutoffs}). This scorecard predates null baselines.")
    else:
        text = (
            f"A target is <i>recovered</i> when its matched reconstruction reaches {audit['psnr_threshold']:g} dB PSNR "
            f"and is {audit['identifiable_margin_db']:g} dB closer to it than to every non-member of the test split. "
            "The <i>null</i> is the best data-blind guess on the same targets (the attacker's own images, their mean, "
            "the attack's prior without the observation; labels: the attacker's label distribution). "
            "<i>Leakage</i> = recovery &minus; null. Risk is read from the lower end of the leakage's 95% interval "
            "(over seeds; with one seed, Newcombe's interval on the counts): none unless it is above the null "
            f"({cutoffs}); a cell is rated by its own output, not by a label step the labels row reports. "
            "PSNR is the mean over every target (an unrecovered one scored against the attacker's mean image)."
        )
    return f"<p class=chips>{chips}</p><p class=small>{text} <i>unknown</i>: every seed failed, or nothing the attack returned could be scored. Brackets: 95% interval over seeds.</p>"


def _audited(document: Mapping[str, Any]) -> str:
    audit = document["audit"]
    scenarios = _table(
        ["label", "dataset", "model", "clients", "rounds", "local training", "partition", "seeds"],
        (
            [
                _e(s["label"]), _e(s["config"].get("dataset")), _e(s["config"].get("model")),
                _e(s["config"].get("clients")), _e(s["config"].get("rounds")),
                _e(f"E={s['config'].get('local_epochs')}, B={s['config'].get('batch_size')}, lr={s['config'].get('lr')}"),
                _e(f"{s['config'].get('partition')}" + (f" (alpha={s['config']['alpha']})" if s["config"].get("alpha") else "")),
                _e(", ".join(map(str, s["seeds"]))),
            ]
            for s in audit["scenarios"]
        ),
    )
    defenses = _table(
        ["label", "composition (in order) and parameters"],
        ([escape(d["label"]), "<br>".join(f"<b>{escape(c['name'])}</b>: {_params(c['params'])}" for c in d["components"]) or "no defense (baseline)"] for d in audit["defenses"]),
    )
    attacks = _table(
        ["label", "attack", "threat model", "parameters"],
        ([escape(a["label"]), escape(a["name"]), escape(a["threat_model_text"]), _params(a["params"])] for a in audit["attacks"]),
    )
    if not audit["attacks"]:
        attacks = "<p>No attack is registered.</p>"
    return f"<h3>Scenarios</h3>{scenarios}{_findings(audit)}<h3>Defenses</h3>{defenses}<h3>Attacks</h3>{attacks}"


def _findings(audit: Mapping[str, Any]) -> str:
    """What the scenarios' own settings say (a recorded federation's DP settings)."""
    rows = [[_e(s["label"]), _e(f["severity"]), _e(f["code"]), _e(f["message"])]
            for s in audit["scenarios"] for f in s.get("findings", [])]
    return f"<h3>Findings in the scenarios' settings</h3>{_table(['scenario', 'severity', 'finding', 'message'], rows)}" if rows else ""


def _grids(document: Mapping[str, Any], out: Path, count: int) -> str:
    parts = []
    for cell in worst_cells(document["cells"], count):
        if not cell["artifacts"]:
            continue
        path = resolve_inside(out, cell["artifacts"][0]["grid"], f"cell {cell['id']!r}")
        if not path.is_file():
            parts.append(f"<p>{escape(cell['id'])}: grid {escape(str(path))} is missing.</p>")
            continue
        figures = CellFigures.of(cell)
        what = escape(counts_text(figures.images)) if figures.images else "no image recovered"
        caption = (
            f"<b>{escape(cell['id'])}</b> (seed {_e(cell['artifacts'][0]['seed'])}): risk {escape(cell['risk'])}, {what}. "
            "Top row: original client images; bottom row: their matched reconstructions, best-recovered first."
        )
        parts.append(f'<figure><img alt="{escape(cell["id"])}" src="{_png(path.read_bytes())}"><figcaption>{caption}</figcaption></figure>')
    return "".join(parts) or "<p>No cell produced image reconstructions.</p>"


def _utility_section(document: Mapping[str, Any], scenario: str) -> str:
    entries = [u for u in document["utility"] if u["scenario"] == scenario]
    png = privacy_utility_png(scenario, entries, [c for c in document["cells"] if c["scenario"] == scenario])
    plot = f'<figure><img alt="privacy-utility {escape(scenario)}" src="{_png(png)}"></figure>' if png else ""
    rows = []
    for u in entries:
        figures = "; ".join(
            f"{escape(d)}: " + ", ".join(f"{escape(k)}={v['mean']:.4g}" for k, v in f.items() if v)
            for d, f in u["figures"].items() if f
        )
        status = f"n/a: {u['reason']}" if u["status"] == "not_applicable" else u["status"]
        rows.append([escape(u["defense"]), _num(u["test_accuracy"], 3), _num(u["accuracy_drop"], 3), figures or "–", escape(status)])
    return plot + _table(["defense", "test accuracy", "drop vs none", "defense figures (mean over seeds)", "status"], rows)


def _dp_audit(document: Mapping[str, Any]) -> str:
    """The empirical epsilon lower bound beside each DP claim (flaudit.auditor.privacy_audit)."""
    rows = []
    for u in document["utility"]:
        for name, c in u.get("privacy_audit", {}).items():
            claimed, bound = c["claimed_epsilon"], c["epsilon_lower_bound"]
            if c["errors"] and not c["seeds"]:
                verdict = f"audit failed: {escape(c['errors'][0]['message'])}"
            elif c["violation"]:
                verdict = f"<span class=violation>dp_violation</span> (seeds {', '.join(map(str, c['violating_seeds']))})"
            else:
                verdict = "no claim to check" if claimed is None else "consistent"
            ratio = f"{bound['mean'] / claimed['mean']:.2f}" if bound and claimed and claimed["mean"] > 0 else "–"
            rows.append([
                escape(u["scenario"]), escape(u["defense"]), escape(name), _num(claimed, 2), _num(bound, 2), ratio,
                f"{c['canaries']} canaries in client {c['canary_client']}, {escape(str(c['observed']))} seen, "
                f"{c['confidence']:.0%} confidence" if c["canaries"] else "–",
                verdict,
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


def _errors(document: Mapping[str, Any]) -> str:
    failed = [(c["id"], e) for c in document["cells"] for e in c["errors"]]
    failed += [(f"{u['scenario']}/{u['defense']} (utility)", e) for u in document["utility"] for e in u["errors"]]
    if not failed:
        return "<p>None: every job finished.</p>"
    return "".join(
        f"<details><summary><b>{escape(where)}</b> seed {_e(e.get('seed', '?'))}: {escape(e['type'])}: {escape(e['message'])}</summary><pre>{escape(e['traceback'])}</pre></details>"
        for where, e in failed
    )


def _provenance(m: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The tamper evidence (``flaudit verify`` re-checks it), when the run recorded it."""
    if "inputs" not in m:
        return []
    inputs = m["inputs"]
    data = "<br>".join(
        f"{escape(label)} ({escape(str(d['dataset']))}): " + ", ".join(f"seed {s} <code>{h[:16]}</code>" for s, h in d["seeds"].items())
        for label, d in inputs["data"].items()
    )
    return [
        ("config as written", f"{escape(inputs['config_file'])}, SHA-256 <code>{inputs['config_sha256']}</code>"),
        ("data (SHA-256 of the tensors used)", data),
        ("code", f"SHA-256 of {m['code']['files']} package files <code>{m['code']['package_sha256']}</code>"),
        ("stored results", f"{len(m.get('outputs', {}))} files, each with its SHA-256 in the scorecard"),
    ]


def _manifest(document: Mapping[str, Any]) -> str:
    m, audit = document["manifest"], document["audit"]
    facts = [
        ("config", f"{escape(audit['source'])} (profile {escape(str(audit['profile']))})"),
        ("config hash", f"<code>{_e(audit['config_hash'])}</code>"),
        ("seeds", _e(", ".join(map(str, m["seeds"])))),
        ("started / finished", _e(f"{m['started']} / {m['finished']} ({m.get('duration_seconds') or 0:.0f} s)")),
        ("executor", _e(f"{m['executor']}, {m['threads']} thread(s) per job, workers: {m.get('workers') or 'default'}")),
        ("git commit", escape(str(m["git"]["commit"])) + (" (uncommitted changes)" if m["git"]["dirty"] else "")),
        ("device", escape(f"{m['device']['cpu']}; CUDA available: {m['device']['cuda_available']} {', '.join(m['device']['gpus'])}")),
        ("compiled kernels", _e(f"built: {m['extension']['built']}, CUDA kernels: {m['extension']['cuda_kernels']}")),
        ("python / platform", escape(f"{m['python']} / {m['platform']}")),
        ("packages", escape(", ".join(f"{k} {v}" for k, v in m["packages"].items()))),
        *_provenance(m),
    ]
    return _table(["", ""], ([f"<b>{k}</b>", v] for k, v in facts))


def render(document: Mapping[str, Any], out: Path) -> str:
    """The report's HTML; ``out`` is the run folder its artifact paths are relative to."""
    audit, summary = document["audit"], document["summary"]
    by_risk = summary["by_risk"]
    scenarios = [s["label"] for s in audit["scenarios"]]
    verdict = (
        f"{summary['cells']} cells: {summary['ok']} scored, {summary['not_applicable']} not applicable, "
        f"{summary['error']} failed. Risk: high {by_risk['high']}, medium {by_risk['medium']}, "
        f"low {by_risk['low']}, none {by_risk['none']}."
    )
    matrices = "".join(f"<h3>{escape(s)}</h3>{_matrix(document, s)}" for s in scenarios)
    utility = "".join(f"<h3>{escape(s)}</h3>{_utility_section(document, s)}" for s in scenarios)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>flaudit audit: {escape(audit['name'])}</title>
<style>{CSS}</style></head><body>
<h1>Privacy audit: {escape(audit['name'])}</h1>
<p class=muted>flaudit scorecard {escape(document['schema'])} · {escape(document['manifest']['finished'])} · config {escape(audit['config_hash'][:12])}</p>
<p id=verdict><b>{escape(verdict)}</b></p>
<h2>Risk matrix: attack x defense</h2>{_legend(document)}{matrices}
<h2>Reconstructions of the worst cells</h2>{_grids(document, out, audit["options"]["grid_cells"])}
<h2>Privacy vs utility</h2>{utility}
<h2>DP claims checked</h2>{_dp_audit(document)}
<h2>What was audited</h2>{_audited(document)}
<h2>Failures</h2>{_errors(document)}
<h2>Manifest</h2>{_manifest(document)}
</body></html>
"""
