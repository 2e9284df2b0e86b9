"""``flaudit run`` and ``flaudit report`` through the command line, with the toy catalog in
place of the registries; bad input is one line and exit 2, and never a half-written file."""

from __future__ import annotations

import os

import pytest

from flaudit.auditor.running import catalog
from flaudit.auditor.cli import main
from flaudit.auditor.running.store import atomic_write
from test_audit_toys import ONE_SAMPLE_CLIENTS, toy_catalog

CONFIG = ONE_SAMPLE_CLIENTS.replace("seeds = [0, 1]", "seeds = [0]") + """
[[defense]]
name = "toy_noise"

[[attack]]
name = "linear_leakage"
"""


@pytest.fixture(autouse=True)
def toys(monkeypatch):
    monkeypatch.setattr(catalog, "registered", toy_catalog)


def _config(tmp_path, text=CONFIG):
    path = tmp_path / "audit.toml"
    path.write_text(text)
    return str(path)


def test_run_writes_everything_and_prints_the_summary(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "--config", _config(tmp_path), "--out", str(out), "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("## flaudit audit: audit")
    assert "| linear_leakage | **high** 4/4 (null 0) +100.0% |" in captured.out
    assert f"report:    {out / 'report.html'}" in captured.err
    assert {p.name for p in out.iterdir()} == {"scorecard.json", "report.html", "summary.md", "cells", "artifacts", "config.toml",
                                               "run.json", "run.lock"}
    (out / "report.html").unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "report.html").read_text().startswith("<!DOCTYPE html>")
    assert main(["run", "--config", _config(tmp_path), "--out", str(out), "--no-progress", "--resume"]) == 0
    assert "resumed 4 finished job(s)" in capsys.readouterr().err


def test_strict_run_fails_on_failed_cells(tmp_path, capsys):
    text = CONFIG + '[[attack]]\nname = "crashes"\n'
    assert main(["run", "--config", _config(tmp_path, text), "--out", str(tmp_path / "a"), "--no-progress"]) == 0
    assert "warning: 2 cell(s) failed" in capsys.readouterr().err
    assert main(["run", "--config", _config(tmp_path, text), "--out", str(tmp_path / "b"), "--no-progress", "--strict"]) == 1


@pytest.mark.parametrize(
    "extra, args, message",
    [
        ('[[attack]]\nname = "rtf"\n', [], "unknown attack 'rtf'"),
        ('[[defense]]\nname = "secagg"\n', [], "unknown defense 'secagg'"),
        ("[audit]\ngrid_images = -1\n", [], "audit.grid_images: must be >= 1, got -1"),
        ('[[attack]]\nname = "linear_leakage"\nlabel = "again"\nmax_clients = "all"\n', [], "attack.linear_leakage.max_clients: expected an integer"),
        ("", ["--executor", "spark"], "unknown executor 'spark'"),
        ("", ["--address", "auto"], "--address joins a Ray cluster; it needs --executor ray"),
        ("", ["--workers", "0"], "--workers must be >= 1, got 0"),
        ("", ["--profile", "fast"], "unknown profile 'fast'"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, extra, args, message):
    out = tmp_path / "run"
    assert main(["run", "--config", _config(tmp_path, CONFIG + extra), "--out", str(out), "--no-progress", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("flaudit: error: ") and err.count("\n") == 1, err
    assert not out.exists()


def test_unreadable_data_root_and_missing_config(tmp_path, capsys):
    text = '[scenario]\ndataset = "cifar10"\ndata_root = "/nonexistent/cifar"\n'
    assert main(["run", "--config", _config(tmp_path, text), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("flaudit: error: scenario 'cifar10-cnn': dataset 'cifar10' not found; missing:")
    assert main(["run", "--config", str(tmp_path / "nope.toml")]) == 2
    assert f"config file {tmp_path / 'nope.toml'} does not exist" in capsys.readouterr().err


def test_report_of_a_corrupt_scorecard_is_exit_2(tmp_path, capsys):
    (tmp_path / "scorecard.json").write_text("{not json")
    assert main(["report", str(tmp_path)]) == 2
    assert "is not valid JSON" in capsys.readouterr().err
    assert not (tmp_path / "report.html").exists()


def test_a_failed_write_leaves_the_previous_file_whole(tmp_path, monkeypatch):
    target = tmp_path / "scorecard.json"
    atomic_write(target, "old, complete")

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, "new" * 1000)
    assert target.read_text() == "old, complete"
    assert [p.name for p in tmp_path.iterdir()] == ["scorecard.json"]
