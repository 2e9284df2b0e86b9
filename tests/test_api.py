"""The Python API (``import flaudit``): the CLI's audit, gate, load and simulate from code."""

import pytest

import flaudit
from flaudit.core.errors import FlauditError

AUDIT = {
    "audit": {"name": "api"},
    "scenario": {"clients": 3, "rounds": 1, "partition": "iid", "batch_size": 32},
    "attack": [{"name": "labels"}],
    "defense": [{"name": "update_noise"}],
}


def test_run_audit_from_a_mapping_then_load_and_gate(tmp_path):
    card = flaudit.run_audit(AUDIT, out=tmp_path / "run")
    assert isinstance(card, flaudit.Scorecard) and card.name == "api"
    assert [c.id for c in card.cells] == ["digits-cnn/none/labels", "digits-cnn/update_noise/labels"]
    undefended = card.cell("digits-cnn/none/labels")
    assert undefended.status == "ok" and 0.0 <= undefended.means["label_accuracy"] <= 1.0
    loaded = flaudit.load_scorecard(tmp_path / "run")
    assert loaded.document == card.document and loaded.path == tmp_path / "run" / "scorecard.json"
    assert flaudit.gate(card, tmp_path / "run").passed  # a scorecard against itself
    assert flaudit.gate(card, loaded, {"label_leakage": 0.0}).passed


def test_bad_input_raises_one_readable_error(tmp_path):
    with pytest.raises(FlauditError, match="unknown attack 'nope'"):
        flaudit.run_audit({**AUDIT, "attack": [{"name": "nope"}]}, out=tmp_path / "bad")
    assert not (tmp_path / "bad").exists()  # checked before anything is written
    with pytest.raises(FlauditError, match="does not exist"):
        flaudit.load_scorecard(tmp_path / "missing")


def test_simulate_any_kind_from_a_table():
    result = flaudit.simulate({"kind": "fedmd", "clients": 3, "rounds": 1})
    assert len(result.rounds) == 1 and 0.0 <= result.final_test_accuracy <= 1.0


def test_unknown_attribute():
    with pytest.raises(AttributeError):
        flaudit.no_such_thing  # noqa: B018
