from pathlib import Path

import pytest

from flaudit.auditor.running.config import load_scenario, parse_override
from flaudit.core.tables import from_mapping
from flaudit.core.errors import ConfigError
from flaudit.scenarios.scenario import ScenarioConfig


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "audit.toml"
    path.write_text(text)
    return path


def test_defaults_without_file():
    config = load_scenario(None)
    assert config == ScenarioConfig()
    assert (config.dataset, config.model, config.clients, config.partition) == ("digits", "cnn", 10, "dirichlet")


def test_file_values_are_typed(tmp_path):
    path = write(tmp_path, '[scenario]\nclients = 4\nlr = 1\ndata_root = "~/data"\nmodel_options = { activation = "sigmoid" }\n')
    config = load_scenario(path)
    assert config.clients == 4
    assert isinstance(config.lr, float) and config.lr == 1.0
    assert config.data_root == Path("~/data").expanduser()
    assert config.model_options == {"activation": "sigmoid"}


@pytest.mark.parametrize(
    "text, message",
    [
        ("[scenario]\nclinets = 4\n", "unknown key 'clinets' (did you mean 'clients'?)"),
        ("[scenario]\nclients = \"four\"\n", "scenario.clients: expected an integer"),
        ("[scenario]\nclients = 0\n", "scenario.clients: must be >= 1, got 0"),
        ("[scenario]\nsample_fraction = 0.0\n", "scenario.sample_fraction: must be > 0.0"),
        ("[scenario]\nmomentum = 1.5\n", "scenario.momentum: must be <= 1.0"),
        ("[scenario]\nalpha = -1\n", "scenario.alpha: must be > 0.0"),
        ("[scenario]\nclients = true\n", "scenario.clients: expected an integer"),
        ("[scenario]\nmodel_options = 3\n", "scenario.model_options: expected a table"),
        ("[senario]\n", "unknown top-level table or key 'senario'"),
        ("scenario = 3\n", "[scenario] must be a table"),
        ("[scenario\n", "is not valid TOML"),
    ],
)
def test_bad_values_name_the_key(tmp_path, text, message):
    with pytest.raises(ConfigError) as info:
        load_scenario(write(tmp_path, text))
    assert message in str(info.value)


def test_missing_file_is_clear(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_scenario(tmp_path / "nope.toml")


def test_overrides_parse_toml_values_and_win_over_the_file(tmp_path):
    assert parse_override("rounds=5") == ("rounds", 5)
    assert parse_override("scenario.partition=iid") == ("partition", "iid")
    assert parse_override('partition="iid"') == ("partition", "iid")
    config = load_scenario(write(tmp_path, "[scenario]\nrounds = 3\n"), ["rounds=7", "alpha=0.1"])
    assert (config.rounds, config.alpha) == (7, 0.1)
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("rounds")


def test_from_mapping_rejects_non_tables():
    with pytest.raises(ConfigError, match="must be a table"):
        from_mapping(ScenarioConfig, [1, 2], "scenario")
