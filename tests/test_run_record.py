"""The record of the profile a run directory was last run with (``run.json``)."""

import pytest

from ctdose.config import load_profile
from ctdose.errors import InputError
from ctdose.run_record import describe_run, profile_sha1, read_run_record, write_run_record


def test_round_trip_and_the_digest_follows_the_resolved_profile(tmp_path):
    assert read_run_record(tmp_path) is None
    cfg = load_profile("smoke", {"train.epochs": 3})
    write_run_record(tmp_path, cfg, "smoke", {"train.epochs": 3})
    record = read_run_record(tmp_path)
    assert record["profile_sha1"] == profile_sha1(cfg) == profile_sha1(load_profile("smoke", ["train.epochs=3"]))
    assert profile_sha1(load_profile("smoke")) != record["profile_sha1"]
    assert profile_sha1(load_profile("demo")) != profile_sha1(load_profile("smoke"))
    text = describe_run(record)
    assert text.startswith("profile 'smoke' with --set train.epochs=3 (ctdose ") and text.endswith(" UTC)")
    write_run_record(tmp_path, load_profile("smoke"), "smoke", {})
    assert describe_run(read_run_record(tmp_path)).startswith("profile 'smoke' (ctdose ")


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"profile": "smoke"}'])
def test_a_file_that_is_not_a_record_is_named(tmp_path, text):
    (tmp_path / "run.json").write_text(text)
    with pytest.raises(InputError, match=f"{tmp_path / 'run.json'}: not a run record"):
        read_run_record(tmp_path)
