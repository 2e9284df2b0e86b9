"""report.html (self-contained, rendered by headless Chromium) and summary.md."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from flaudit.auditor.results import report, risk, scorecard, summary
from test_audit_runner import MATRIX
from test_audit_toys import run_toy

CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    run_toy(out, MATRIX)
    return out


def test_report_is_self_contained(run_dir):
    html = (run_dir / "report.html").read_text()
    assert not re.search(r"""(src|href)=["']?(https?:|file:|//)""", html)
    assert "<link" not in html and "<script" not in html
    sources = re.findall(r'<img [^>]*src="([^"]+)"', html)
    assert len(sources) >= 3 and all(s.startswith("data:image/png;base64,") for s in sources)


def test_report_shows_matrix_grids_plots_failures_and_manifest(run_dir):
    html = (run_dir / "report.html").read_text()
    assert html.index("Risk matrix") < html.index("Reconstructions of the worst cells") < html.index("Privacy vs utility")
    assert f'<td class=cell style="background:{risk.COLOURS["high"]}"><b>high</b><br>8/8 recovered, null 0/8<br>leakage 100.0%' in html
    assert "toy_secure_sum shows the server only the aggregate" in html  # n/a cells keep their reason
    grids = re.findall(r'<img alt="([^"]+)" src=', html)
    assert grids[0] == "digits-mlp/none/linear_leakage"  # worst cell first
    assert "privacy-utility digits-mlp" in grids
    assert "toy attack failure" in html and "Traceback" in html
    card = (run_dir / "scorecard.json").read_text()
    config_hash = re.search(r'"config_hash": "([0-9a-f]{64})"', card).group(1)
    assert f"<code>{config_hash}</code>" in html


def test_summary_is_a_short_markdown_table(run_dir):
    lines = (run_dir / "summary.md").read_text().splitlines()
    assert lines[0] == "## flaudit audit: audit"
    assert "| attack \\ defense | none | toy_noise | toy_secure_sum |" in lines
    row = next(line for line in lines if line.startswith("| linear_leakage |"))
    assert row.startswith("| linear_leakage | **high** 8/8 (null 0) +100.0% | **none** 0/8 (null 0) ") and row.endswith(" | n/a |")
    assert next(line for line in lines if line.startswith("| crashes |")).count("**unknown** 2 failed") == 3
    assert any(line.startswith("| *test accuracy* |") for line in lines)
    assert lines[4].startswith("- **digits-mlp (digits, 4 clients, E=1, B=1, iid):** 1 of 3 scored attacks leak without "
                               "a defense: linear_leakage high (8/8 recovered, null 0/8, leakage +100.0%)")
    assert "- **toy_noise:** in digits-mlp it stops 1 of the 1 attacks that leak without it (linear_leakage)" in lines[5]
    assert lines[6].startswith("- **3 cell(s) failed:** attack plugin 'crashes'")
    assert lines[-1].startswith("report.html has the rest: 2 more finding(s)")
    assert len(lines) < 30


def _chromium(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["chromium", *CHROMIUM_FLAGS, *args], capture_output=True, timeout=timeout)


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_headless_chromium_renders_the_report(run_dir, tmp_path):
    url = (run_dir / "report.html").resolve().as_uri()
    shot = tmp_path / "report.png"
    done = _chromium(f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1280,2000", url)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    pixels = np.asarray(Image.open(io.BytesIO(shot.read_bytes())).convert("RGB"))
    assert pixels.shape == (2000, 1280, 3)
    high = [int(risk.COLOURS["high"][i : i + 2], 16) for i in (1, 3, 5)]
    assert (pixels != 255).any(axis=2).mean() > 0.05  # text, tables, images: not a blank page
    assert (pixels == high).all(axis=2).sum() > 1000  # the high-risk cell is painted in its colour
    dom = _chromium(f"--user-data-dir={tmp_path / 'profile2'}", "--dump-dom", url).stdout.decode()
    assert "Risk matrix: attack x defense" in dom and "digits-mlp/none/linear_leakage" in dom
    assert len(re.findall(r"<img ", dom)) == len(re.findall(r"<img ", (run_dir / "report.html").read_text()))


def test_a_v1_scorecard_still_loads_and_renders(run_dir, tmp_path):
    """A flaudit.scorecard/1 scorecard (no nulls) validates, and renders with counts and its own
    legend, without a leakage it never measured."""
    from test_audit_gate import as_v1

    old = as_v1(json.loads((run_dir / "scorecard.json").read_text()))
    (tmp_path / "scorecard.json").write_text(json.dumps(old))
    document = scorecard.load(tmp_path)
    html = report.render(document, run_dir)
    assert "flaudit.scorecard/1" in html and "predates null baselines" in html
    assert "8/8 recovered<br><span class=small>PSNR" in html and "null 0/8" not in html
    row = next(line for line in summary.render(document).splitlines() if line.startswith("| linear_leakage |"))
    assert row.startswith("| linear_leakage | **high** 8/8 |"), row


def test_grids_show_originals_reconstructions_and_the_null_enlarged(run_dir):
    """8x8 digits enlarged to 96 px tiles; three rows (original, attack, the null's guesses of
    the same targets), so a resemblance the null also reaches is visible as such."""
    from flaudit.auditor.results import grids

    card = json.loads((run_dir / "scorecard.json").read_text())
    worst = next(c for c in card["cells"] if c["id"] == "digits-mlp/none/linear_leakage")
    image = Image.open(run_dir / worst["artifacts"][0]["grid"])
    tile = 8 * -(-grids.MIN_TILE // 8)
    assert image.height == 3 * (tile + grids.CAPTION + grids.GAP) + grids.GAP
    pixels = np.asarray(image.convert("L"))
    top, middle = grids.GAP, grids.GAP + tile + grids.CAPTION + grids.GAP
    first = grids.LABEL_WIDTH + grids.GAP
    assert (pixels[top : top + tile, first : first + tile] == pixels[middle : middle + tile, first : first + tile]).mean() > 0.99


def test_findings_open_the_report(run_dir):
    html = (run_dir / "report.html").read_text()
    assert html.index("<h2>Findings</h2>") < html.index("Risk matrix")
    assert ("<li><b>digits-mlp (digits, 4 clients, E=1, B=1, iid):</b> 1 of 3 scored attacks leak without a defense: "
            "linear_leakage high (8/8 recovered, null 0/8, leakage +100.0%).</li>") in html
    assert "toy_secure_sum shows the server only the aggregate" in html  # n/a reasons, grouped


def test_findings_say_what_realism_and_defenses_change():
    from flaudit.auditor.results.findings import findings
    from flaudit.auditor.results.view import AuditView

    def cell(scenario, defense, attack, level, hits):
        return {"id": f"{scenario}/{defense}/{attack}", "scenario": scenario, "defense": {"label": defense},
                "attack": {"label": attack}, "status": "ok", "risk": level, "reason": None, "errors": [],
                "metrics": {"recovery_rate": {"mean": hits / 8}, "n_targets": {"values": [8]}, "n_recovered": {"values": [hits]},
                            "n_null_recovered": {"values": [0]}, "leakage": {"mean": hits / 8, "ci95": None}}}

    def scenario(label, epochs):
        return {"label": label, "config": {"dataset": "digits", "clients": 8, "local_epochs": epochs, "batch_size": 8,
                                           "partition": "iid"}, "seeds": [0], "defenses": ["none", "dp"], "attacks": ["ig", "rtf"]}

    document = {
        "audit": {"name": "t", "defenses": [{"label": "none"}, {"label": "dp"}],
                  "attacks": [{"label": a, "name": a, "threat_model_text": "x"} for a in ("ig", "rtf")],
                  "scenarios": [scenario("worst", 1), scenario("real", 2)]},
        "cells": [cell("worst", "none", "ig", "high", 8), cell("worst", "none", "rtf", "high", 7),
                  cell("worst", "dp", "ig", "none", 0), cell("worst", "dp", "rtf", "medium", 3),
                  cell("real", "none", "ig", "none", 0), cell("real", "none", "rtf", "high", 8),
                  cell("real", "dp", "ig", "none", 0), cell("real", "dp", "rtf", "none", 0)],
        "utility": [{"scenario": s, "defense": d, "status": "ok", "test_accuracy": {"mean": a, "ci95": None},
                     "accuracy_drop": {"mean": b, "ci95": None}}
                    for s, d, a, b in (("worst", "none", 0.5, 0.0), ("worst", "dp", 0.4, 0.1), ("real", "none", 0.9, 0.0), ("real", "dp", 0.7, 0.2))],
    }
    found = {f.topic: [] for f in findings(AuditView.of(document))}
    for f in findings(AuditView.of(document)):
        found[f.topic].append(f.text)
    assert found["realism"] == ["From worst to real (digits, 8 clients, E=1, B=8, iid -> digits, 8 clients, E=2, B=8, iid): "
                                "ig high -> none; leaking in both: rtf."]
    [dp] = found["defenses"]
    assert dp.startswith("dp: in worst it stops 1 of the 2 attacks that leak without it (ig); still leaking: rtf medium (3/8 recovered")
    assert "in real it stops 1 of the 1 attacks that leak without it (rtf); test accuracy 0.700 (-0.200 vs none)" in dp


def test_the_privacy_utility_plot_reads_rated_leakage_not_resemblance():
    from flaudit.auditor.results.cells import CellFigures
    from flaudit.auditor.results.plots import worst_leakage

    def cell(defense, label_leakage, rated):
        stat = lambda mean: {"mean": mean, "ci95": None, "values": [mean]}  # noqa: E731
        metrics = {"recovery_rate": stat(0.0), "n_targets": stat(8), "n_recovered": stat(0), "leakage": stat(0.0),
                   "label_accuracy": stat(0.9), "label_leakage": stat(label_leakage), "psnr_mean": stat(40.0)}
        return CellFigures.of({"id": f"s/{defense}/a", "risk": "none", "status": "ok", "defense": {"label": defense},
                               "rated": [{"output": o} for o in rated], "metrics": metrics})

    cells = [cell("dp", 0.5, ["images"]), cell("dp", 0.2, ["images", "labels"])]  # the first: an internal label step
    assert worst_leakage(cells, "dp", "labels") == 0.2 and worst_leakage(cells, "dp", "images") == 0.0
