"""``flaudit reproduce``: Scale-MIA's slides' tables beside our measurement.

The quick batch-size table runs end to end (about a minute on 2 cores): the paper's column is
there, every measured row comes with its null and isolation bound, clients took several local
steps, and the attack recovers what no data-blind guess does on the smallest batch. The full
run (``flaudit reproduce scale-mia``) is the README's; ``-m slow`` runs every quick table.
"""

from __future__ import annotations

import contextlib
import io
import json

import pytest

from flaudit.auditor.cli import main
from flaudit.auditor.reproduce.registry import REPRODUCTIONS
from flaudit.auditor.reproduce.scale_mia import BUDGETS, FULL, PAPER_BATCH, QUICK, TABLES, AuxiliarySetting, Bench
from flaudit.auditor.reproduce.tables import Measured, Privacy, Published, Row, Table, markdown


def _measured_rows(document: dict, table: str) -> list[dict]:
    rows = next(t for t in document["tables"] if t["name"] == table)["rows"]
    return [r for r in rows if r["measured"] is not None]


@pytest.fixture(scope="module")
def quick_batch(tmp_path_factory):
    out = tmp_path_factory.mktemp("reproduce")
    with contextlib.redirect_stderr(io.StringIO()) as err:
        code = main(["reproduce", "scale-mia", "--quick", "--table", "batch_size", "--out", str(out)])
    return code, out, err.getvalue()


def test_quick_batch_table_beside_the_paper(quick_batch):
    code, out, _ = quick_batch
    assert code == 0
    text = (out / "table.md").read_text()
    header = next(line for line in text.splitlines() if line.startswith("| batch"))
    for column in ("paper rate", "our rate", "our null", "isolation bound", "paper PSNR", "our PSNR, recovered",
                   "our PSNR, returned", "paper s", "our s"):
        assert f"| {column} |" in header
    assert "| 32 | photo_patches | 0.95 |" in text and "| 128 | photo_patches | 0.87 |" in text
    assert "| 32 | lfw_subset | 0.95 |" in text
    document = json.loads((out / "rows.json").read_text())
    assert document["quick"] and [t["name"] for t in document["tables"]] == ["batch_size"]
    rows = _measured_rows(document, "batch_size")
    assert len(rows) == len(QUICK.batches) + len(QUICK.face_batches)
    for row in rows:
        m = row["measured"]
        assert row["published"]["rate"] == PAPER_BATCH[row["setting"]["batch"]].rate
        assert m["targets"] == row["setting"]["batch"] and m["local_steps"] >= 4  # several local steps
        assert 0 <= m["rate"] <= m["bound"] + 1e-9 and 0 <= m["null_rate"] <= 1
    smallest = rows[0]["measured"]
    assert smallest["rate"] >= smallest["null_rate"] + 0.05, smallest  # leakage, not a data-blind match
    grids = sorted(p.name for p in (out / "grids").iterdir())
    assert grids == ["batch_size-128-photo_patches.png", "batch_size-32-lfw_subset.png", "batch_size-32-photo_patches.png"]


def test_progress_is_one_line_per_row(quick_batch):
    """Off a TTY every finished row is one line on stderr."""
    _, out, err = quick_batch
    lines = [line for line in err.splitlines() if line.startswith("[")]
    rows = json.loads((out / "rows.json").read_text())["tables"][0]["rows"]
    assert len(lines) == len(rows) and lines[0].startswith("[1] batch_size batch=32, dataset=photo_patches: rate ")


@pytest.mark.slow
def test_every_quick_table(tmp_path):
    """The whole quick run: every table, a row per planned setting, DP rows with their epsilon."""
    assert main(["reproduce", "scale-mia", "--quick", "--out", str(tmp_path)]) == 0
    document = json.loads((tmp_path / "rows.json").read_text())
    assert [t["name"] for t in document["tables"]] == ["batch_size", "clients", "auxiliary", "dp"]
    dp = _measured_rows(document, "dp")
    assert dp[0]["measured"]["privacy"] is None
    for row, (epsilon, delta) in zip(dp[1:4], BUDGETS):  # each slide budget spent, not exceeded
        privacy = row["measured"]["privacy"]
        assert privacy["delta"] == delta and 0.9 * epsilon <= privacy["epsilon"] <= epsilon * 1.001


def test_markdown_keeps_every_paper_row_and_says_why_one_is_not_run():
    """A paper row we cannot run stays in the table with its published numbers and the reason;
    a DP row shows what the defense spent."""
    measured = Measured(0.5, 0.0, 0.78, 25.0, 22.0, 0.1, 128, 64, 8, 1, Privacy(0.99, 1e-5, 2.5))
    table = Table("auxiliary", "Aux", "setup", "differences", (
        Row(AuxiliarySetting(500), Published(0.95, 23.41), measured),
        Row(AuxiliarySetting(50000), Published(0.76, 23.12), None, "photo_patches holds 1230 training images: not run"),
    ))
    text = markdown(table)
    assert "| 500 | 0.95 | **0.500** | 0.000 | 0.780 | 23.41 | 25.00 | 22.00 |" in text
    assert "| 50000 | 0.76 | — | — | — | 23.12 | — | — |" in text and "not run |" in text
    assert "| ε spent | σ |" in text and "| 0.99 | 2.5 |" in text


def test_full_profile_plans_the_slides_rows():
    """Every number of the slides has its row in the full run, whether or not it fits here."""
    bench = Bench(FULL.attack)
    plans = {spec.name: spec.plan(FULL, bench) for spec in TABLES}
    assert [p.setting.batch for p in plans["batch_size"] if p.setting.dataset == "photo_patches"] == [32, 64, 128, 256, 512]
    assert [p.setting.clients for p in plans["clients"]] == [5, 10, 15, 20, 30]
    auxiliary = {p.setting.auxiliary: p for p in plans["auxiliary"]}
    assert {500, 1500, 5000, 50000} <= set(auxiliary)
    assert auxiliary[50000].federation is None and "not run" in auxiliary[50000].note  # photo_patches is too small
    assert [p.setting.budget for p in plans["dp"][:4]] == ["no defense", "(1, 1e-05)", "(1, 0.0001)", "(5, 1e-05)"]
    assert all(p.published is not None for p in plans["dp"][:4] + plans["batch_size"])
    assert [p.federation.dp.target_epsilon for p in plans["dp"][1:4]] == [1.0, 1.0, 5.0]
    assert plans["dp"][4].published is None and "clipping only" in plans["dp"][4].setting.budget


@pytest.mark.parametrize("argv, message", [
    (["reproduce", "nosuch"], "unknown reproduction 'nosuch'"),
    (["reproduce", "scale-mia", "--table", "nosuch"], "reproduction 'scale-mia' has no table 'nosuch'; its tables: batch_size"),
    (["reproduce", "scale-mia", "--threads", "0"], "--threads must be at least 1, got 0"),
])
def test_bad_input_is_one_line_and_writes_nothing(argv, message, tmp_path, capsys):
    assert main([*argv, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()
    assert "scale-mia" in REPRODUCTIONS
