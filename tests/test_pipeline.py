import subprocess
import sys

import nbformat
import pytest

from ctdose.errors import ConfigError, CtdoseError
from ctdose.pipeline import list_notebooks, main, run_chain, select_notebooks


def _notebook(path, body, params='profile = "smoke"\nrun_dir = "runs/smoke"\noverrides = {}'):
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell(params)
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# test"), cell, nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {"name": "does-not-exist", "display_name": "x", "language": "python"}
    nbformat.write(nb, path)


@pytest.fixture
def chain(tmp_path):
    folder = tmp_path / "nbs"
    folder.mkdir()
    _notebook(folder / "01_first.ipynb",
              "import pathlib\npathlib.Path(run_dir, 'first.txt').write_text(profile + str(overrides))")
    _notebook(folder / "02_second.ipynb", "import pathlib\nassert pathlib.Path(run_dir, 'first.txt').exists()\n"
              "pathlib.Path(figures_dir, 'fig.txt').write_text('x')",
              params='profile = "smoke"\nrun_dir = "runs/smoke"\noverrides = {}\nfigures_dir = "figures"')
    return folder


def test_chain_runs_in_order_with_parameters_and_explicit_kernel(chain, tmp_path):
    out, figs = tmp_path / "run", tmp_path / "figs"
    figs.mkdir()
    log = run_chain("smoke", out, ["train.epochs=3"], notebooks=chain, figures_dir=figs, progress=False)
    assert list(log["status"]) == ["ok", "ok"]
    assert (out / "first.txt").read_text() == "smoke{'train.epochs': 3}"
    assert (out / "01_first.ipynb").is_file() and (out / "02_second.ipynb").is_file()
    assert (figs / "fig.txt").is_file()
    assert (out / "chain_log.csv").read_text().count(",ok,") == 2


def test_selection_by_number_name_from_and_only(chain):
    books = list_notebooks(chain)
    assert [b.stem for b in select_notebooks(books, start="02")] == ["02_second"]
    assert [b.stem for b in select_notebooks(books, only=["01_first"])] == ["01_first"]
    with pytest.raises(ConfigError, match="no notebook matches"):
        select_notebooks(books, only=["07"])
    with pytest.raises(ConfigError, match="exclude"):
        select_notebooks(books, start="01", only=["02"])


def test_not_run_notebooks_are_named(chain, tmp_path, capsys):
    run_chain("smoke", tmp_path / "run", only=["01"], notebooks=chain)
    assert "not run: 02_second" in capsys.readouterr().out


def test_failure_names_notebook_cell_and_executed_copy(tmp_path):
    folder = tmp_path / "nbs"
    folder.mkdir()
    _notebook(folder / "01_broken.ipynb", "raise ValueError('bad input file x.nii')")
    with pytest.raises(CtdoseError) as info:
        run_chain("smoke", tmp_path / "run", notebooks=folder, progress=False)
    message = str(info.value)
    assert "01_broken failed in cell" in message and "ValueError: bad input file x.nii" in message
    assert str(tmp_path / "run" / "01_broken.ipynb") in message
    assert (tmp_path / "run" / "01_broken.ipynb").is_file()


@pytest.mark.parametrize(
    "args, text",
    [
        (["run", "--profile", "nope"], "unknown profile 'nope'"),
        (["run", "--profile", "smoke", "--set", "foo.bar=1"], "unknown override key 'foo.bar'"),
        (["run", "--profile", "smoke", "--only", "99", "--notebooks", "{chain}"], "notebook '99': no notebook"),
    ],
)
def test_bad_input_gives_one_clear_line(args, text, chain):
    args = [a.format(chain=chain) for a in args]
    proc = subprocess.run([sys.executable, "-m", "ctdose", *args], capture_output=True, text=True)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ctdose: error:") and text in lines[0]
    assert "Traceback" not in proc.stderr


def test_missing_notebook_folder_is_one_line(tmp_path, capsys):
    assert main(["run", "--profile", "smoke", "--notebooks", str(tmp_path / "none")]) == 2
    assert "notebook folder" in capsys.readouterr().err


def test_profile_command_prints_overridden_yaml(capsys):
    assert main(["profile", "smoke", "--set", "train.epochs=5"]) == 0
    assert "epochs: 5" in capsys.readouterr().out


@pytest.mark.parametrize(
    "override, text",
    [
        ("mc.n_photons=-5", r"profile 'smoke': mc\.n_photons must be a positive integer, got -5"),
        ("mc.estimator=foo", r"mc\.estimator must be one of .*, got 'foo'"),
        ("mc.n_batches=1", r"mc\.n_batches must be in \[2, n_photons\], got 1"),
        ("mc.energy_cutoff_kev=.nan", r"mc\.energy_cutoff_kev must be a finite number >= 1 keV, got nan"),
        ("device=tpu", r"profile 'smoke': device must be 'cpu', 'cuda', 'cuda:<n>' or 'auto', got 'tpu'"),
        ("mc.ambient=unobtanium", r"profile 'smoke': mc\.ambient: medium 'unobtanium' unknown"),
        ("mc.ctdi_photons=-5", r"mc\.ctdi_photons must be a positive integer, got -5"),
        ("scanner.mode=spiral", r"mode must be 'axial' or 'helical', got 'spiral'"),
        ("scanner.projections_per_rotation=0", r"projections_per_rotation must be a positive integer, got 0"),
        ("inputs.kerma_density_set=icru44", r"inputs\.kerma_density_set must be one of paper, icru46"),
        ("train.epochs=0", r"profile 'smoke': train\.epochs must be a positive integer, got 0"),
    ],
)
def test_bad_mc_settings_stop_the_chain_before_notebook_01(chain, tmp_path, override, text):
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match=text):
        run_chain("smoke", out, [override], notebooks=chain, progress=False)
    assert not out.exists()  # nothing ran, no run directory


def test_bad_scanner_files_stop_the_chain_before_notebook_01(chain, tmp_path):
    """A spectrum file that is missing or has a negative weight, and a bowtie file with no
    angle >= 0, are refused before the first notebook runs, naming the file."""
    bad_weight = tmp_path / "spectrum.csv"
    bad_weight.write_text("energy_kev,weight\n20,1.0\n40,-0.5\n60,0.2\n")
    bowtie = tmp_path / "bowtie.csv"
    bowtie.write_text("fan_angle_deg,al_thickness_mm\n-20,10\n-10,5\n")
    out = tmp_path / "run"
    for override, text in [
        (f"scanner.spectrum_file={tmp_path / 'missing.csv'}", r"missing\.csv"),
        (f"scanner.spectrum_file={bad_weight}", r"spectrum\.csv"),
        (f"scanner.bowtie={bowtie}", r"no fan angle >= 0"),
    ]:
        with pytest.raises(ConfigError, match=text):
            run_chain("smoke", out, [override], notebooks=chain, progress=False)
        assert not out.exists()


def test_profile_command_refuses_bad_mc_settings(capsys):
    assert main(["profile", "smoke", "--set", "mc.n_photons=-5"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip() == "ctdose: error: profile 'smoke': mc.n_photons must be a positive integer, got -5"
