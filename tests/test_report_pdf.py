"""``flaudit report DIR --pdf``: report.pdf printed by headless Chromium, paginated, checked by
rendering its pages back to PNG with pdftoppm."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from flaudit.auditor.cli import main
from flaudit.auditor.results import pdf
from test_audit_runner import MATRIX
from test_audit_toys import run_toy

needs_tools = pytest.mark.skipif(
    shutil.which("chromium") is None or shutil.which("pdftoppm") is None,
    reason="chromium and poppler-utils (pdftoppm) are not installed (.ci/run installs them)",
)


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    out = tmp_path_factory.mktemp("pdf")
    run_toy(out, MATRIX)
    assert main(["report", str(out), "--pdf"]) == 0
    subprocess.run(["pdftoppm", "-png", "-r", "40", str(out / pdf.PDF), str(out / "page")], check=True, timeout=120)
    return out, sorted(out.glob("page-*.png"))


@needs_tools
def test_the_pdf_is_paginated_landscape_with_every_section(pages):
    out, files = pages
    assert (out / pdf.PDF).read_bytes().startswith(b"%PDF")
    assert len(files) >= 5  # a page per section: matrix, grids, plots, DP claims, scope, failures, manifest
    images = [np.asarray(Image.open(f).convert("L")) for f in files]
    assert all(img.shape[1] > img.shape[0] for img in images)  # A4 landscape
    assert all((img < 128).mean() > 0.0005 for img in images)  # no blank page: every one carries text
    text = subprocess.run(["pdftotext", str(out / pdf.PDF), "-"], capture_output=True, timeout=60).stdout.decode()
    for heading in ("Findings", "Risk matrix", "Reconstructions of the worst cells", "Privacy vs utility", "DP claims checked",
                    "What was audited", "Manifest"):
        assert heading in text


@needs_tools
def test_the_matrix_page_keeps_the_risk_colours(pages):
    """The findings come first; a page after them holds the matrix, printed with exact colours."""
    _, files = pages
    high = np.array([0xEC, 0x8F, 0x86])  # risk.COLOURS["high"]
    share = [(np.abs(np.asarray(Image.open(f).convert("RGB")).reshape(-1, 3).astype(int) - high).sum(axis=1) < 30).mean()
             for f in files[:3]]
    assert max(share) > 0.001, share


def test_without_a_browser_report_pdf_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    run_toy(tmp_path, MATRIX)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert main(["report", str(tmp_path), "--pdf"]) == 2
    err = capsys.readouterr().err
    assert "needs headless Chromium" in err and err.count("\n") == 1
    assert not (tmp_path / pdf.PDF).exists()
