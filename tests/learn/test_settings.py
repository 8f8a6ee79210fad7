"""The training section of a profile, checked before any work."""

from __future__ import annotations

import pytest

from ctdose.config import load_profile
from ctdose.errors import ConfigError
from ctdose.learn.settings import check_train_profile


@pytest.mark.parametrize("name", ["smoke", "demo", "paper"])
def test_the_shipped_profiles_pass(name):
    check_train_profile(load_profile(name))


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("members", 0, r"train\.members must be a positive integer, got 0"),
        ("epochs", 2.5, r"train\.epochs must be a positive integer, got 2\.5"),  # int() used to truncate it
        ("patch_size", "big", r"train\.patch_size must be a positive integer, got 'big'"),
        ("batch_size", True, r"train\.batch_size must be a positive integer, got True"),
        ("val_organ_cases", 0, r"train\.val_organ_cases must be a positive integer or null, got 0"),
        ("infer_window", -32, r"train\.infer_window must be a positive integer or null, got -32"),
        ("bn_calibration_patches", -1, r"train\.bn_calibration_patches must be an integer >= 0, got -1"),
        ("learning_rate", 0.0, r"train\.learning_rate must be a number > 0, got 0\.0"),
        ("learning_rate", float("nan"), r"train\.learning_rate must be a number > 0, got nan"),
        ("val_fraction", 1.0, r"train\.val_fraction must be a fraction in \[0, 1\), got 1\.0"),
        ("infer_overlap", -0.1, r"train\.infer_overlap must be a fraction in \[0, 1\), got -0\.1"),
        ("floor_fraction", -0.05, r"train\.floor_fraction must be a number >= 0, got -0\.05"),
        ("lr_schedule", "step", r"train\.lr_schedule must be one of constant, cosine, got 'step'"),
        ("mixes_percent_real", [0, 150], r"train\.mixes_percent_real must be a non-empty list of percentages"),
        ("mixes_percent_real", [], r"train\.mixes_percent_real must be a non-empty list of percentages"),
        ("mixes_percent_real", "0, 10", r"train\.mixes_percent_real must be a non-empty list of percentages"),
        ("lazy_patches", "yes", r"train\.lazy_patches must be true or false, got 'yes'"),
    ],
)
def test_a_bad_value_is_refused_naming_the_profile_and_the_key(key, value, message):
    """Values a YAML file may hold (``--set`` checks types against the shipped profile; a file
    does not)."""
    cfg = load_profile("smoke")
    cfg["train"][key] = value
    with pytest.raises(ConfigError, match=rf"profile 'smoke': {message}"):
        check_train_profile(cfg)


def test_numbers_written_as_text_and_null_optionals_are_read():
    cfg = {"name": "file", "train": {"epochs": "12", "learning_rate": "1e-3", "val_organ_cases": None,
                                     "infer_window": None, "mixes_percent_real": [0, "10", 100.0]}}
    check_train_profile(cfg)
    check_train_profile({"name": "empty"})  # nothing to check
