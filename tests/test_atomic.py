"""Tests of ctdose._atomic: a failed write names the target and leaves every file as it was."""

import errno
import os
import stat

import pandas as pd
import pytest

from ctdose import _atomic
from ctdose._atomic import atomic_path, atomic_write_csv, atomic_write_text
from ctdose.errors import CtdoseError, InputError, OutputError

OLD = "old content\n"


def _names(folder):
    return sorted(p.name for p in folder.iterdir())


def test_target_that_is_a_folder_is_refused_by_name(tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(OutputError, match=r"out: is a folder, not a file") as err:
        atomic_write_text(tmp_path / "out", "x")
    assert ".tmp" not in str(err.value)
    assert _names(tmp_path) == ["out"] and _names(tmp_path / "out") == []


def test_target_under_a_regular_file_is_refused_naming_the_file(tmp_path):
    (tmp_path / "a.txt").write_text(OLD)
    target = tmp_path / "a.txt" / "sub" / "b.txt"
    with pytest.raises(OutputError, match=r"b\.txt: cannot write the file: .*a\.txt is a file, not a folder"):
        atomic_write_text(target, "x")
    assert (tmp_path / "a.txt").read_text() == OLD
    assert _names(tmp_path) == ["a.txt"]


def test_write_protected_target_is_refused_and_kept(tmp_path):
    target = tmp_path / "x.csv"
    target.write_text(OLD)
    target.chmod(0o444)
    try:
        with pytest.raises(OutputError, match=r"x\.csv: the file is write-protected \(mode 0444\).*unchanged"):
            atomic_write_csv(pd.DataFrame({"a": [1]}), target)
        assert target.read_text() == OLD
        assert stat.S_IMODE(target.stat().st_mode) == 0o444
        assert _names(tmp_path) == ["x.csv"]
    finally:
        target.chmod(0o644)


@pytest.mark.parametrize(
    "exc, fragment",
    [
        (PermissionError(errno.EACCES, "Permission denied"), "Permission denied in the folder"),
        (OSError(errno.ENOSPC, "No space left on device"), "No space left on device"),
    ],
)
def test_os_errors_name_the_target_not_the_temporary_file(tmp_path, monkeypatch, exc, fragment):
    target = tmp_path / "x.txt"
    target.write_text(OLD)

    def refuse(src, dst):
        exc.filename = str(src)  # as the system reports it: the hidden temporary file
        raise exc

    monkeypatch.setattr(_atomic.os, "replace", refuse)
    with pytest.raises(OutputError) as err:
        atomic_write_text(target, "new")
    message = str(err.value)
    assert message.startswith(f"{target}: cannot write the file (") and fragment in message
    assert "the existing file is unchanged" in message and ".tmp" not in message
    assert err.value.__cause__ is exc
    assert isinstance(err.value, OSError) and isinstance(err.value, CtdoseError)
    assert target.read_text() == OLD and _names(tmp_path) == ["x.txt"]


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_read_only_folder_names_the_target(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    (folder / "x.txt").write_text(OLD)
    folder.chmod(0o555)
    try:
        try:  # the super-user (CAP_DAC_OVERRIDE) writes into read-only folders
            (folder / "probe").touch()
        except PermissionError:
            pass
        else:
            (folder / "probe").unlink()
            pytest.skip("this user can write into a read-only folder")
        with pytest.raises(OutputError, match=r"ro/x\.txt: cannot write the file \(Permission denied in the folder"):
            atomic_write_text(folder / "x.txt", "new")
        assert (folder / "x.txt").read_text() == OLD and _names(folder) == ["x.txt"]
    finally:
        folder.chmod(0o755)


def test_error_inside_the_block_keeps_the_target_and_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "x.txt"
    target.write_text(OLD)
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert target.read_text() == OLD and _names(tmp_path) == ["x.txt"]


def test_missing_folders_are_created_and_an_existing_file_keeps_its_mode(tmp_path):
    new = atomic_write_text(tmp_path / "a" / "b" / "new.txt", "x")
    assert new.read_text() == "x"
    old = tmp_path / "old.txt"
    old.write_text(OLD)
    old.chmod(0o640)
    atomic_write_text(old, "new")
    assert old.read_text() == "new" and stat.S_IMODE(old.stat().st_mode) == 0o640


def test_text_the_encoding_cannot_hold_is_an_input_error(tmp_path):
    target = tmp_path / "x.txt"
    target.write_text(OLD)
    with pytest.raises(InputError, match=r"x\.txt: cannot write 'Ü' \(position 7\) as ascii text; nothing was written"):
        atomic_write_text(target, "WASSER_Ü", encoding="ascii")
    assert target.read_text() == OLD and _names(tmp_path) == ["x.txt"]


def test_atomic_remove_folder_leaves_nothing_behind(tmp_path):
    from ctdose._atomic import atomic_remove_folder

    folder = tmp_path / "case"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "data.bin").write_bytes(b"x" * 100)
    (tmp_path / "other").mkdir()
    atomic_remove_folder(folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other"]
    with pytest.raises(FileNotFoundError):
        atomic_remove_folder(folder)
