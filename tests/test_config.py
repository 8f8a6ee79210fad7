import pytest

from ctdose.config import available_profiles, load_profile, parse_override
from ctdose.errors import ConfigError

REQUIRED = ["seed", "device", "cohort.n_synthetic", "cohort.spacing_mm", "mc.n_photons",
            "train.width", "train.epochs", "train.members"]


@pytest.mark.parametrize("name", ["smoke", "demo", "paper"])
def test_shipped_profiles_fix_the_scale(name):
    cfg = load_profile(name)
    assert cfg.name == name
    for key in REQUIRED:
        cfg.get_path(key)


def test_profiles_grow_in_scale():
    smoke, demo, paper = (load_profile(n) for n in ("smoke", "demo", "paper"))
    assert smoke["cohort"]["n_synthetic"] < demo["cohort"]["n_synthetic"] < paper["cohort"]["n_synthetic"]
    assert smoke["cohort"]["spacing_mm"] > demo["cohort"]["spacing_mm"] > paper["cohort"]["spacing_mm"]
    assert paper["cohort"]["n_synthetic"] == 200 and paper["train"]["members"] == 5


def test_available_profiles():
    assert {"smoke", "demo", "paper"} <= set(available_profiles())


def test_overrides_from_strings_and_mapping():
    cfg = load_profile("smoke", ["mc.n_photons=1e5", "train.mixes_percent_real=[0, 50]"])
    assert cfg["mc"]["n_photons"] == 100000 and isinstance(cfg["mc"]["n_photons"], int)
    assert cfg["train"]["mixes_percent_real"] == [0, 50]
    cfg = load_profile("smoke", {"cohort.spacing_mm": 8})
    assert cfg["cohort"]["spacing_mm"] == 8.0 and isinstance(cfg["cohort"]["spacing_mm"], float)


def test_overrides_do_not_leak_between_loads():
    load_profile("smoke", {"train.epochs": 99})
    assert load_profile("smoke")["train"]["epochs"] != 99


@pytest.mark.parametrize(
    "override, message",
    [
        ("nope.key=1", "unknown override key"),
        ("train.nope=1", "unknown override key"),
        ("train.epochs=abc", "expected a value of type int"),
        ("train.epochs", "expected key=value"),
    ],
)
def test_bad_overrides_are_refused(override, message):
    with pytest.raises(ConfigError, match=message):
        load_profile("smoke", [override])


def test_unknown_profile_names_the_choices():
    with pytest.raises(ConfigError, match="unknown profile 'nope'.*smoke"):
        load_profile("nope")


def test_profile_from_yaml_file(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("name: mine\nseed: 1\ntrain:\n  epochs: 3\n")
    assert load_profile(path, ["train.epochs=4"])["train"]["epochs"] == 4
    with pytest.raises(ConfigError, match="not found"):
        load_profile(tmp_path / "missing.yaml")


def test_parse_override_reads_yaml_values():
    assert parse_override("a.b=true") == ("a.b", True)
    assert parse_override("a=[1, 2]") == ("a", [1, 2])
