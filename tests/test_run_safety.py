"""A run folder is ours alone and a report reads only its own files: artifact paths outside the
folder (absolute, ``..``, symlinks) are refused in report, gate and run --resume; HTML and
Markdown are escaped; foreign folders are never written into; one run at a time; a run that
did not finish leaves no scorecard that looks complete."""

from __future__ import annotations

import base64
import json
import shutil

import pytest

from flaudit.auditor.cli import main
from flaudit.auditor.running import catalog
from flaudit.auditor.running.folder import LOCK, MARKER, RunFolder
from flaudit.auditor.running.store import CELLS, artifact_name
from test_audit_cli import CONFIG, _config
from test_audit_toys import toy_catalog

SECRET = b"TOP SECRET: not part of any run\n" * 4


@pytest.fixture(autouse=True)
def toys(monkeypatch):
    monkeypatch.setattr(catalog, "registered", toy_catalog)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One finished run of the CLI test config (grids included)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(catalog, "registered", toy_catalog)
        config = out.parent / "audit.toml"
        config.write_text(CONFIG)
        assert main(["run", "--config", str(config), "--out", str(out), "--no-progress"]) == 0
    return out


def _copy(finished, tmp_path, edit=None):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    if edit:
        card = json.loads((out / "scorecard.json").read_text())
        edit(card)
        (out / "scorecard.json").write_text(json.dumps(card))
    return out


def _one_line_error(capsys, *needles):
    err = capsys.readouterr().err
    assert err.startswith("flaudit: error: ") and err.count("\n") == 1, err
    for needle in needles:
        assert needle in err, err
    return err


def _grid_cell(card):
    return next(c for c in card["cells"] if c["artifacts"])


@pytest.mark.parametrize("where", ["absolute", "dotdot", "other-folder", "backslash"])
def test_report_and_gate_refuse_artifacts_outside_the_run_folder(finished, tmp_path, capsys, where):
    secret = tmp_path / "secret.txt"
    secret.write_bytes(SECRET)
    target = {"absolute": str(secret), "dotdot": "artifacts/../../secret.txt", "other-folder": "cells/x.png",
              "backslash": "artifacts\\..\\..\\secret.txt"}[where]

    def edit(card):
        _grid_cell(card)["artifacts"][0]["grid"] = target

    out = _copy(finished, tmp_path, edit)
    before = (out / "report.html").read_bytes()
    assert main(["report", str(out)]) == 2
    _one_line_error(capsys, "cell 'digits-mlp/none/linear_leakage'", "not a file artifacts/<name>.png")
    assert (out / "report.html").read_bytes() == before  # nothing rewritten
    assert main(["gate", str(finished), str(out)]) == 2
    _one_line_error(capsys, "digits-mlp/none/linear_leakage")


def test_report_refuses_a_grid_that_is_a_symlink_out(finished, tmp_path, capsys):
    secret = tmp_path / "secret.txt"
    secret.write_bytes(SECRET)
    out = _copy(finished, tmp_path)
    grid = out / _grid_cell(json.loads((out / "scorecard.json").read_text()))["artifacts"][0]["grid"]
    grid.unlink()
    grid.symlink_to(secret)
    assert main(["report", str(out)]) == 2
    _one_line_error(capsys, "leads outside the run folder")
    assert base64.b64encode(SECRET).decode()[:40] not in (out / "report.html").read_text()


def test_resume_refuses_a_stored_job_naming_a_file_outside(finished, tmp_path, capsys):
    out = _copy(finished, tmp_path)
    for path in (out / CELLS).glob("attack-*.json"):
        record = json.loads(path.read_text())
        if record["result"].get("artifact"):
            record["result"]["artifact"] = "/etc/passwd"
            path.write_text(json.dumps(record))
    marker = (out / MARKER).read_text()
    assert main(["run", "--config", _config(tmp_path), "--out", str(out), "--no-progress", "--resume"]) == 2
    _one_line_error(capsys, "(cell 'digits-mlp/", "'/etc/passwd'")
    assert (out / MARKER).read_text() == marker and (out / "scorecard.json").exists()  # untouched


def test_everything_interpolated_into_the_report_is_escaped(finished, tmp_path):
    def edit(card):
        card["manifest"]["started"] = "<script>alert(1)</script>"
        card["audit"]["scenarios"][0]["config"]["lr"] = "<img src=x onerror=alert(2)>"
        card["audit"]["scenarios"][0]["config"]["clients"] = "<b>8</b>"
        card["audit"]["name"] = "<i>0</i>"
        card["manifest"]["packages"]["torch"] = "<svg onload=1>"
        card["manifest"]["git"]["commit"] = "</pre>x"

    out = _copy(finished, tmp_path, edit)
    assert main(["report", str(out)]) == 0
    html = (out / "report.html").read_text()
    for raw in ("<script>alert", "<img src=x", "<b>8</b>", "<i>0</i>", "<svg onload", "</pre>x"):
        assert raw not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_markdown_labels_are_escaped_and_similar_labels_get_distinct_grids(tmp_path):
    text = CONFIG.replace('name = "linear_leakage"', 'name = "linear_leakage"\nlabel = "a|b <x> *c*"')
    text += '[[attack]]\nname = "linear_leakage"\nlabel = "a b"\n[[attack]]\nname = "linear_leakage"\nlabel = "a_b"\n'
    out = tmp_path / "run"
    assert main(["run", "--config", _config(tmp_path, text), "--out", str(out), "--no-progress"]) == 0
    summary = (out / "summary.md").read_text()
    assert "| a\\|b \\<x\\> \\*c\\* | **high**" in summary
    card = json.loads((out / "scorecard.json").read_text())
    grids = [a["grid"] for c in card["cells"] for a in c["artifacts"]]
    assert len(grids) == len(set(grids)) == 6
    assert artifact_name("s/d/a b", 0) != artifact_name("s/d/a_b", 0)
    assert len(artifact_name("s/d/" + "x" * 100, 0)) < 120


def test_out_at_a_foreign_folder_is_refused_and_its_files_kept(tmp_path, capsys):
    out = tmp_path / "u"
    (out / "cells").mkdir(parents=True)
    (out / "artifacts").mkdir()
    (out / "cells" / "important.json").write_text("{}")
    (out / "artifacts" / "photo.png").write_text("x")
    assert main(["run", "--config", _config(tmp_path), "--out", str(out), "--no-progress"]) == 2
    _one_line_error(capsys, "is not empty and is not a flaudit run folder")
    assert sorted(p.name for p in out.rglob("*")) == ["artifacts", "cells", "important.json", "photo.png"]


def test_a_rerun_deletes_only_its_own_files_and_leftover_temp_files(finished, tmp_path):
    out = _copy(finished, tmp_path)
    (out / "cells" / "notes.json").write_text("{}")
    (out / "artifacts" / "mine.png").write_text("x")
    (out / ".scorecard.json.k3j4h5.tmp").write_text("half")
    assert main(["run", "--config", _config(tmp_path), "--out", str(out), "--no-progress"]) == 0
    assert (out / "cells" / "notes.json").exists() and (out / "artifacts" / "mine.png").exists()
    assert not list(out.rglob("*.tmp"))


def test_a_second_run_on_a_folder_in_use_fails_at_once_and_a_stale_lock_is_taken_over(finished, tmp_path, capsys):
    out = _copy(finished, tmp_path)
    with RunFolder(out, "0" * 64, "now"):  # another run holds the folder
        assert main(["run", "--config", _config(tmp_path), "--out", str(out), "--no-progress"]) == 2
        _one_line_error(capsys, "is in use by another flaudit run (pid")
        # while it runs, its folder's scorecard is not one to trust
        assert main(["gate", str(finished), str(out)]) == 2
        _one_line_error(capsys, "did not finish")
    (out / LOCK).write_text("999999999\n")  # the lock of a process that died: no flock is held
    assert main(["run", "--config", _config(tmp_path), "--out", str(out), "--no-progress"]) == 0
    assert json.loads((out / MARKER).read_text())["state"] == "finished"


def test_a_rerun_that_does_not_finish_leaves_no_complete_looking_scorecard(finished, tmp_path, capsys):
    out = _copy(finished, tmp_path)
    RunFolder(out, "0" * 64, "now").open().close()  # a re-run killed right after it started
    assert not (out / "scorecard.json").exists() and (out / "superseded" / "scorecard.json").exists()
    for command in (["gate", str(finished), str(out)], ["report", str(out)]):
        assert main(command) == 2
        _one_line_error(capsys)
    assert main(["run", "--config", _config(tmp_path), "--out", str(out), "--no-progress", "--resume"]) == 0
    assert "resumed 4 finished job(s)" in capsys.readouterr().err
    assert main(["gate", str(finished), str(out)]) == 0
