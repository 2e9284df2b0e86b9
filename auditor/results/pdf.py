"""``DIR/report.pdf``: the HTML report printed to paginated PDF by headless Chromium.

The page gets a print stylesheet (A4 landscape, so the attack x defense matrix fits the page
width; sections start on a new page; figures and table rows are not split) and is printed with
Chromium's ``--print-to-pdf``, which runs offline on the self-contained page. Chromium is a
system package (``.ci/run`` installs it); without it ``flaudit report --pdf`` says so (exit 2).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Mapping

from flaudit.auditor.results import report
from flaudit.auditor.running.store import atomic_write
from flaudit.core.errors import FlauditError

PDF = "report.pdf"
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-pdf-header-footer", "--run-all-compositor-stages-before-draw",
)
PRINT_CSS = """
@page{size:A4 landscape;margin:12mm 10mm}
@media print{
body{max-width:none;margin:0;padding:0;font-size:10pt}
h2{break-before:page}h2:first-of-type{break-before:auto}h2,h3{break-after:avoid}
tr,figure,img,.chips{break-inside:avoid}.scroll{overflow:visible}
table{font-size:8pt}td.cell{min-width:0}figure img{max-width:100%;max-height:160mm}
pre{max-height:none;white-space:pre-wrap}
*{-webkit-print-color-adjust:exact;print-color-adjust:exact}
}
"""
TIMEOUT = 180


class PdfError(FlauditError):
    """No browser to print with, or the print failed."""


def browser() -> str:
    for name in BROWSERS:
        if found := shutil.which(name):
            return found
    raise PdfError(f"report --pdf needs headless Chromium; none of {', '.join(BROWSERS)} is on PATH "
                   "(Debian: apt-get install chromium)")


def printable(document: Mapping[str, Any], out: Path) -> str:
    """The report page with the print stylesheet."""
    return report.render(document, out).replace("</style>", PRINT_CSS + "</style>", 1)


def write_pdf(document: Mapping[str, Any], out: Path) -> Path:
    """Prints the report of the run folder ``out`` to ``out/report.pdf`` (atomically)."""
    executable = browser()
    with tempfile.TemporaryDirectory(prefix="flaudit-pdf-") as work:
        page, pdf = Path(work) / "report.html", Path(work) / PDF
        page.write_text(printable(document, out))
        try:
            done = subprocess.run(
                [executable, *FLAGS, f"--user-data-dir={Path(work) / 'profile'}", f"--print-to-pdf={pdf}", page.as_uri()],
                capture_output=True, timeout=TIMEOUT,
            )
        except subprocess.TimeoutExpired:
            raise PdfError(f"{executable} did not print the report within {TIMEOUT} s") from None
        if done.returncode != 0 or not pdf.is_file() or not pdf.read_bytes().startswith(b"%PDF"):
            tail = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
            raise PdfError(f"{executable} failed to print the report (exit {done.returncode}): {tail[0]}")
        atomic_write(out / PDF, pdf.read_bytes())
    return out / PDF
