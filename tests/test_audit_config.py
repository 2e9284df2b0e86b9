"""The audit config (the public contract): tables, composition, wildcards, profiles, and clear
errors naming the key before anything runs."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass

import pytest

from flaudit.auditor.running.config import BASELINE, default_audit_text, load_audit
from flaudit.auditor.running.plan import build_plan
from flaudit.core.errors import ConfigError, DataNotFoundError, UnknownNameError
from test_audit_toys import LinearLeakage, toy_catalog, toy_config

DEFENSES = """
[[defense]]
name = "toy_noise"
std = 0.2

[[defense]]
name = ["toy_noise", "toy_secure_sum"]
label = "noise+sum"
[defense.toy_noise]
std = 0.05

[[attack]]
name = "linear_leakage"
max_clients = 2
"""


def test_tables_compose_and_always_include_the_baseline():
    config = toy_config(DEFENSES)
    assert [d.label for d in config.defenses] == [BASELINE, "toy_noise", "noise+sum"]
    composed = config.defenses[2].components
    assert [(c.name, dict(c.params)) for c in composed] == [("toy_noise", {"std": 0.05}), ("toy_secure_sum", {})]
    plan = build_plan(config, toy_catalog(), preflight=False)
    assert plan.defenses[1].components[0].params.std == 0.2
    assert plan.attacks[0].component.params.max_clients == 2
    assert [c.cell_id for c in plan.cells] == [
        "digits-mlp/none/linear_leakage", "digits-mlp/toy_noise/linear_leakage", "digits-mlp/noise+sum/linear_leakage",
    ]
    assert plan.cells[2].not_applicable.startswith("linear_leakage needs each client's update")
    assert [len(c.jobs) for c in plan.cells] == [2, 2, 0]  # seeds [0, 1]
    assert len(plan.utility_jobs) == 3 * 2  # every defense column x seed, the baseline included


def test_wildcards_expand_to_every_registered_component_not_listed_by_label():
    config = toy_config('[[defense]]\nname = "*"\n[[attack]]\nname = "*"\n[[attack]]\nname = "linear_leakage"\nmax_clients = 1\n')
    plan = build_plan(config, toy_catalog(), preflight=False)
    assert [d.label for d in plan.defenses] == ["none", "toy_noise", "toy_secure_sum"]
    assert sorted(a.label for a in plan.attacks) == sorted(toy_catalog().attacks.names())
    assert next(a for a in plan.attacks if a.label == "linear_leakage").component.params.max_clients == 1


def test_several_scenarios_and_profile_overlays():
    text = """
[audit]
profile = "quick"
[[scenario]]
label = "small"
clients = 2
seeds = [0, 1, 2]
[[scenario]]
label = "big"
profiles = ["full"]
clients = 6
[[attack]]
name = "linear_leakage"
[profile.quick]
seeds = [5]
audit = { attacked_round = 0 }
scenario = { rounds = 1 }
attack.linear_leakage = { max_clients = 3 }
"""
    quick = toy_config(text, base="")
    assert [(s.label, s.seeds, s.config.rounds) for s in quick.scenarios] == [("small", (5,), 1)]
    assert quick.options.attacked_round == 0
    assert build_plan(quick, toy_catalog(), preflight=False).attacks[0].component.params.max_clients == 3
    full = toy_config(text, base="", profile="full")
    assert [(s.label, s.seeds) for s in full.scenarios] == [("small", (0, 1, 2)), ("big", (0,))]
    assert full.config_hash != quick.config_hash


def test_component_profiles_give_budgets_that_the_config_can_override():
    @dataclass(frozen=True)
    class Budget:
        iterations: int = 10
        restarts: int = 1

    class Budgeted(LinearLeakage):
        name = "budgeted"
        Params = Budget
        profiles = {"full": {"iterations": 24000, "restarts": 4}}

    catalog = toy_catalog(attacks=(Budgeted,))
    written = '[[attack]]\nname = "budgeted"\nrestarts = 2\n'
    assert build_plan(toy_config(written), catalog, preflight=False).attacks[0].component.params == Budget(10, 2)
    full = build_plan(toy_config(written, profile="full"), catalog, preflight=False)
    assert full.attacks[0].component.params == Budget(24000, 2)


def test_config_hash_ignores_key_order():
    a = toy_config('[[attack]]\nname = "linear_leakage"\nmax_clients = 2\n')
    b = toy_config('[[attack]]\nmax_clients = 2\nname = "linear_leakage"\n')
    assert a.config_hash == b.config_hash and len(a.config_hash) == 64


@pytest.mark.parametrize(
    "extra, message",
    [
        ("[audti]\n", "unknown top-level table or key 'audti'"),
        ("[audit]\npsnr_threshold = \"high\"\n", "audit.psnr_threshold: expected a number"),
        ("[audit]\ngrid_images = 0\n", "audit.grid_images: must be >= 1"),
        ("[gate]\nleakage = -0.1\n", "gate.leakage: must be >= 0.0"),
        ("[gate]\nleakge = 0.1\n", "unknown key 'leakge' (did you mean 'leakage'?)"),
        ("[[defense]]\nname = 3\n", "defense[0].name: expected a defense name or a list of names"),
        ('[[defense]]\nname = ["toy_noise", "toy_noise"]\n', "lists a defense twice"),
        ('[[defense]]\nname = ["toy_noise", "toy_secure_sum"]\nstd = 1.0\n', "sub-tables named after each defense"),
        ('[[defense]]\nname = "none"\nstd = 1\n', "the 'none' baseline takes no parameters"),
        ('[[defense]]\nname = "toy_noise"\n[[defense]]\nname = "toy_noise"\n', "two [[defense]] entries are labelled 'toy_noise'"),
        ('[[attack]]\nname = "*"\nmax_clients = 1\n', "takes no parameters"),
        ('[[attack]]\nname = "linear_leakage"\nattacked_round = "last"\n', "attack[0].attacked_round: expected an integer"),
    ],
)
def test_bad_config_names_the_key(extra, message):
    with pytest.raises(ConfigError) as info:
        toy_config(extra)
    assert message in str(info.value)


def test_bad_seeds_and_profiles():
    with pytest.raises(ConfigError, match=r"scenario.seeds\[1\]: a seed is an integer >= 0"):
        toy_config("", base='[scenario]\nseeds = [0, -1]\n')
    with pytest.raises(ConfigError, match="set either seed or seeds"):
        toy_config("", base="[scenario]\nseed = 1\nseeds = [1]\n")
    with pytest.raises(ConfigError, match="unknown profile 'qiuck'; this config knows: full, quick"):
        toy_config("", profile="qiuck")
    with pytest.raises(ConfigError, match="no \\[\\[scenario\\]\\] is part of profile 'quick'"):
        toy_config("", base='[[scenario]]\nprofiles = ["full"]\n', profile="quick")


@pytest.mark.parametrize(
    "extra, error, message",
    [
        ('[[attack]]\nname = "linear_leakge"\n', UnknownNameError, "unknown attack 'linear_leakge'. Did you mean 'linear_leakage'?"),
        ('[[defense]]\nname = "toy_nosie"\n', UnknownNameError, "unknown defense 'toy_nosie'"),
        ('[[attack]]\nname = "linear_leakage"\nmax_clint = 1\n', ConfigError, "[attack.linear_leakage] unknown key 'max_clint'"),
        ('[[defense]]\nname = "toy_noise"\nstd = "big"\n', ConfigError, "defense.toy_noise.std: expected a number"),
        ('[[attack]]\nname = "linear_leakage"\nattacked_round = 2\n', ConfigError, "attack 'linear_leakage' attacked_round=2, but scenario 'digits-mlp' has 2 rounds"),
        ("[profile.quick]\nattack.nope = { a = 1 }\n", UnknownNameError, "[profile.quick.attack.nope]: unknown attack 'nope'"),
    ],
)
def test_names_and_parameters_are_checked_against_the_registries(extra, error, message):
    profile = "quick" if "profile" in extra else None
    with pytest.raises(error) as info:
        build_plan(toy_config(extra, profile=profile), toy_catalog(), preflight=False)
    assert message in str(info.value)


def test_preflight_checks_data_and_scenario_before_running(tmp_path):
    missing = f'[scenario]\nlabel = "faces"\ndataset = "imagefolder"\ndata_root = "{tmp_path / "nope"}"\n'
    with pytest.raises(DataNotFoundError, match="scenario 'faces': dataset 'imagefolder' not found"):
        build_plan(toy_config("", base=missing), toy_catalog())
    with pytest.raises(UnknownNameError, match="scenario 'digits-cnnn': unknown model 'cnnn'"):
        build_plan(toy_config("", base='[scenario]\nmodel = "cnnn"\n'), toy_catalog())


DEFAULT_SCENARIOS = ["digits-fedsgd", "digits-fedavg", "photos-fedsgd", "photos-fedavg", "digits-fedmd", "digits-gan"]


def test_embedded_default_audit():
    quick = load_audit(None)
    assert quick.profile == "quick" and quick.source == "<embedded default>"
    assert [(s.label, s.seeds) for s in quick.scenarios] == [(label, (0,)) for label in DEFAULT_SCENARIOS]
    full = load_audit(None, "full")
    assert [s.label for s in full.scenarios] == DEFAULT_SCENARIOS and all(len(s.seeds) == 3 for s in full.scenarios)
    document = tomllib.loads(default_audit_text())
    assert document["attack"] == [{"name": "*"}] and document["defense"] == [{"name": "*"}]
    assert quick.overlay.attack == {"ig": {"iterations": 300}} and full.overlay.attack == {}  # full: the papers' budgets


def test_default_audit_plans_every_registered_component():
    """Every registered attack has an applicable cell and every registered defense a column in a
    scenario whose baseline it can be compared with."""
    from flaudit.auditor.running.catalog import registered

    catalog = registered()
    plan = build_plan(load_audit(None), catalog)  # preflight: builds each world, composes each column
    assert [d.label for d in plan.defenses] == ["none", *catalog.defenses.names()]
    assert [a.label for a in plan.attacks] == list(catalog.attacks.names())
    applicable = [c for c in plan.cells if not c.not_applicable]
    assert {c.attack.label for c in applicable} == set(catalog.attacks.names())
    assert {c.defense.label for c in applicable if c.scenario.label == "digits-fedsgd"} == {d.label for d in plan.defenses}
    worst, realistic = (s.config for s in plan.config.scenarios[:2])
    assert worst.local_epochs == 1 and worst.batch_size * worst.clients + worst.auxiliary_samples == worst.max_samples
    assert realistic.local_epochs > 1 and realistic.batch_size >= 16 and realistic.partition == "dirichlet"



SELECTED = """
[[scenario]]
label = "worst"
dataset = "digits"
model = "mlp"
clients = 4
description = "worst case: FedSGD"

[[scenario]]
label = "realistic"
dataset = "digits"
model = "mlp"
clients = 4
defenses = ["toy_noise", "none"]
attacks = ["linear_leakage"]

[[defense]]
name = "*"

[[attack]]
name = "*"
"""


def test_a_scenario_runs_only_the_columns_and_rows_it_selects():
    plan = build_plan(toy_config(SELECTED, base=""), toy_catalog(), preflight=False)
    everything = len(plan.defenses) * len(plan.attacks)
    assert len([c for c in plan.cells if c.scenario.label == "worst"]) == everything
    assert [c.cell_id for c in plan.cells if c.scenario.label == "realistic"] == [
        "realistic/none/linear_leakage", "realistic/toy_noise/linear_leakage"]  # in the matrix's order
    assert {(j.scenario_label, j.defense_label) for j in plan.utility_jobs if j.scenario_label == "realistic"} == {
        ("realistic", "none"), ("realistic", "toy_noise")}
    assert plan.matrix("realistic").defenses == ("none", "toy_noise")
    assert plan.config.scenarios[0].description == "worst case: FedSGD"


@pytest.mark.parametrize("change, message", [
    ('attacks = ["linear_leakge"]', "scenario 'realistic': attacks = \\['linear_leakge'\\] names 'linear_leakge', which is not an attack label"),
    ('defenses = ["dp"]', "names 'dp', which is not a defense label of this audit \\(none, toy_noise, toy_secure_sum\\)"),
    ("defenses = []", "scenario\\[1\\].defenses: expected a non-empty list"),
    ('attacks = ["linear_leakage", "linear_leakage"]', "lists a label twice"),
    ("description = 3", "scenario\\[1\\].description: expected printable text"),
])
def test_a_bad_selection_is_one_config_error(change, message):
    text = SELECTED.replace('defenses = ["toy_noise", "none"]\nattacks = ["linear_leakage"]', change)
    with pytest.raises(ConfigError, match=message):
        build_plan(toy_config(text, base=""), toy_catalog(), preflight=False)


def test_label_skew_example_differs_from_the_default_audit_only_where_it_says():
    """examples/label-skew: the default audit's photos-fedavg, the same federation drawn IID, and
    Scale-MIA choosing its logit spread (the default) and at each spread fixed (six cells, three
    seeds each)."""
    from pathlib import Path

    from flaudit.auditor.running.catalog import registered

    root = Path(__file__).resolve().parents[1]
    plan = build_plan(load_audit(root / "examples" / "label-skew" / "audit.toml"), registered())
    default = next(s.config for s in load_audit(None).scenarios if s.label == "photos-fedavg")
    skewed, iid = (s.config for s in plan.config.scenarios)
    assert skewed == default
    assert iid.partition == "iid" and iid.replace(partition=skewed.partition, alpha=skewed.alpha) == skewed
    spreads = {c.attack.label: {(j.attack.params.logit_spread, j.attack.params.trial_spread) for j in c.jobs} for c in plan.cells}
    assert spreads == {"scale_mia": {(0.01, 0.05)}, "scale_mia_spread_0.01": {(0.01, 0.0)}, "scale_mia_spread_0.05": {(0.05, 0.0)}}
    assert all(len(c.jobs) == 3 and not c.not_applicable for c in plan.cells) and len(plan.cells) == 6


def test_scale_mia_reach_example_varies_client_size_and_step_only():
    """examples/scale-mia-reach: one Scale-MIA cell per federation; the federations differ from
    the 400-image one in the client size (and so the steps), the learning rate and momentum, or
    the partition alone."""
    from pathlib import Path

    from flaudit.auditor.running.catalog import registered

    root = Path(__file__).resolve().parents[1]
    plan = build_plan(load_audit(root / "examples" / "scale-mia-reach" / "audit.toml"), registered())
    configs = {s.label: s.config for s in plan.config.scenarios}
    base = configs["n400"]
    for label, config in configs.items():
        n = (config.max_samples - config.auxiliary_samples) // config.clients
        same = config.replace(max_samples=base.max_samples, lr=base.lr, momentum=base.momentum, partition=base.partition, alpha=base.alpha)
        assert same == base, label
        assert label.startswith(f"n{n}")
    assert all(len(c.jobs) == 3 and not c.not_applicable and c.attack.label == "scale_mia" for c in plan.cells)  # seeds 0, 1, 2
    assert len(plan.cells) == len(configs) == 8
