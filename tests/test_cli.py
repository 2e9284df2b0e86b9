import json

from flaudit.auditor.cli import main


def test_list_shows_every_registry(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for heading in ("datasets:", "partitions:", "models:", "defenses:", "attacks:"):
        assert heading in out
    for name in ("digits", "photo_patches", "dirichlet", "cnn", "resnet18"):
        assert name in out


def test_list_json(capsys):
    assert main(["list", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert "cnn" in listing["models"] and "digits" in listing["datasets"]


def test_simulate_json(capsys):
    code = main(["simulate", "--json", "--no-progress", "--set", "rounds=2", "--set", "clients=3",
                 "--set", "partition=iid"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["rounds"] == 2 and len(result["test_accuracy"]) == 2
    assert 0.0 <= result["final_test_accuracy"] <= 1.0
    assert result["scenario"]["clients"] == 3


def test_simulate_reports_bad_input_in_one_line(tmp_path, capsys):
    assert main(["simulate", "--set", "clients=0"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "flaudit: error: scenario.clients: must be >= 1, got 0"
    assert main(["simulate", "--set", 'model="cnnn"', "--no-progress"]) == 2
    assert "unknown model 'cnnn'" in capsys.readouterr().err
    assert main(["simulate", "--set", 'dataset="cifar10"', "--data-root", str(tmp_path), "--no-progress"]) == 2
    assert "cifar" in capsys.readouterr().err.lower()
