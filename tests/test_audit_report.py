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
    assert row.startswith("| linear_leakage | **high** 8/8 recovered, null 0/8 · leakage +100.0% | **none** 0/8 recovered, ") and row.endswith(" | n/a |")
    assert next(line for line in lines if line.startswith("| crashes |")).count("**unknown** 2 failed") == 3
    assert any(line.startswith("| *test accuracy* |") for line in lines)
    assert len(lines) < 20


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
    assert "8/8 recovered<br>PSNR" in html and "null 0/8" not in html
    row = next(line for line in summary.render(document).splitlines() if line.startswith("| linear_leakage |"))
    assert row.startswith("| linear_leakage | **high** 8/8 recovered |"), row
