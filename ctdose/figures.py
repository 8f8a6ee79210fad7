"""The paper's tables and figures, one function each (notebook 05).

Every function takes tidy tables written by :func:`ctdose.evaluate.evaluate_models` (and,
for maps, Datasets read from the store) plus a :class:`FigureContext`, writes its files
into an output folder (PNG + SVG for figures, CSV + Markdown for tables) and returns the
paths. Each file names the data sources (synthetic / surrogate / clinical), the profile
and the run directory in its caption or footnote.

Figures are drawn on :class:`matplotlib.figure.Figure` objects (no global pyplot state), so
the functions work headless and in parallel.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from scipy import stats

from .dosimetry import TABLE4_ORGANS, mgy_per_rotation
from .errors import MissingStepError
from .evaluate import E_PARTIAL, model_label, parse_model_id
from .uncertainty import voxel_uncertainty

__all__ = [
    "COHORT_NAMES",
    "FigureContext",
    "figure3_inputs",
    "figure4_summed_doses",
    "figure5_ratio_vs_diameter",
    "figure6_dose_maps",
    "figure7_organ_volumes",
    "figure_context",
    "linear_fit_band",
    "markdown_table",
    "reliability_plot",
    "table3",
    "table3_wide",
    "table4",
    "table4_wide",
]

#: Honest names of the data sources (DESIGN.md, "Data sources and their honest names").
COHORT_NAMES = {
    "synthetic": "synthetic (open parametric phantoms standing in for XCAT)",
    "surrogate": "surrogate (open generator with clinical population statistics standing in for clinical CTs)",
    "clinical": "clinical (user CTs with TotalSegmentator labels)",
    "xcat": "XCAT phantoms",
}
_FIG_DPI = 150
_FOOTNOTE_CHARS_PER_INCH = 21  # 6-pt footnote text, wrapped to the figure width
_VECTOR = "svg"
#: Figure file metadata: no creation date (PNG and SVG), so that the bytes depend on the content only.
_NO_DATE = {"Date": None}
_PERCENT = 100.0
_CI_LEVEL = 0.95
_COMPONENTS = (
    ("aleatoric", "rel_aleatoric_percent", "sigma_aleatoric"),
    ("epistemic", "rel_epistemic_percent", "sigma_epistemic"),
    ("total", "rel_tot_percent", "sigma_tot"),
    ("total_k2", "rel_tot_k2_percent", "u_tot (k = 2)"),
)


@dataclass(frozen=True)
class FigureContext:
    """What every caption must say: data sources, profile and run directory."""

    profile: str
    run_dir: str
    sources: str

    def footnote(self) -> str:
        return f"Data: {self.sources}. Profile: {self.profile}. Run: {self.run_dir}."


def _display_run_dir(run_dir: Path) -> str:
    """The run directory relative to the project root when inside it (portable captions)."""
    from .paths import project_root

    try:
        return str(Path(run_dir).resolve().relative_to(project_root()))
    except ValueError:
        return str(run_dir)


def figure_context(store, profile: str) -> FigureContext:
    """Build the caption context of a run from its splits table (training and test cohorts)."""
    run_dir = _display_run_dir(store.run_dir)
    try:
        splits = store.read_table("splits")
    except MissingStepError:
        return FigureContext(str(profile), run_dir, "unknown (no splits table)")
    train = sorted(set(splits.loc[splits["role"] != "test", "cohort"].astype(str)))
    test = splits.loc[splits["role"] == "test"].drop_duplicates("case_id")
    test_cohorts = ", ".join(f"{n} {c}" for c, n in test["cohort"].value_counts().sort_index().items())
    train_text = " + ".join(COHORT_NAMES.get(c, c) for c in train)
    sources = f"training {train_text}; test set {test_cohorts} cases (not the paper's XCAT/clinical data)"
    egsnrc, modulated = _mc_notes(store, splits["case_id"].unique())
    if egsnrc:
        sources += (f"; MC dose of {egsnrc} case{'s' if egsnrc > 1 else ''} from the user's EGSnrc results (.3ddose), "
                    "of the others from the ctdose MC")
    if modulated:
        sources += (f"; MC dose of {modulated} clinical case{'s' if modulated > 1 else ''} with the CT's own "
                    "tube-current modulation (scaled to the mean current)")
    return FigureContext(str(profile), run_dir, sources)


def _mc_notes(store, case_ids) -> tuple[int, int]:
    """How many of ``case_ids`` took their MC dose from EGSnrc (``mc_engine``,
    :mod:`ctdose.physics.egsnrc_results`), and how many followed their CT's tube-current
    record (``mc_tube_current``, :func:`ctdose.physics.scanner.case_protocol`)."""
    from .physics.egsnrc_results import EGSNRC_ENGINE
    from .physics.scanner import MODULATED_TUBE_CURRENT

    attrs = [store.case_attrs(c) for c in case_ids if c in store]
    egsnrc = sum(str(a.get("mc_engine", "")).startswith(EGSNRC_ENGINE) for a in attrs)
    modulated = sum(str(a.get("mc_tube_current", "")).startswith(MODULATED_TUBE_CURRENT) for a in attrs)
    return egsnrc, modulated


# -- helpers ---------------------------------------------------------------------------------
def _out(out_dir: str | Path) -> Path:
    path = Path(out_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _save(fig: Figure, out_dir: str | Path, name: str, title: str, context: FigureContext) -> list[Path]:
    fig.suptitle(title, fontsize=10)
    width_chars = int(fig.get_figwidth() * _FOOTNOTE_CHARS_PER_INCH)
    fig.text(0.01, 0.005, _wrap(context.footnote(), width_chars), fontsize=6, va="bottom", ha="left", color="0.3")
    out = _out(out_dir)
    paths = [out / f"{name}.png", out / f"{name}.{_VECTOR}"]
    # the same figure gives the same bytes: no time stamp, and the SVG's element ids hashed
    # with a fixed salt instead of a random one (a rerun changes a committed figure only
    # where its content changes)
    import matplotlib

    with matplotlib.rc_context({"svg.hashsalt": name}):
        fig.savefig(paths[0], dpi=_FIG_DPI, metadata=_NO_DATE)
        fig.savefig(paths[1], metadata=_NO_DATE)
    return paths


def _wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width))


def _model_order(model_ids: Iterable[str]) -> list[str]:
    return sorted(set(model_ids), key=lambda m: (parse_model_id(m)[0], parse_model_id(m)[1]))


def markdown_table(df: pd.DataFrame, floatfmt: str = ".1f") -> str:
    """A GitHub Markdown table of a DataFrame (index not included)."""
    def fmt(v):
        if isinstance(v, (float, np.floating)):
            return "" if np.isnan(v) else format(float(v), floatfmt)
        return str(v)

    head = "| " + " | ".join(str(c) for c in df.columns) + " |"
    sep = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, sep, *body]) + "\n"


def _write_table(df: pd.DataFrame, out_dir, name: str, title: str, context: FigureContext, floatfmt=".1f") -> list[Path]:
    out = _out(out_dir)
    csv_path, md_path = out / f"{name}.csv", out / f"{name}.md"
    with open(csv_path, "w", encoding="utf-8") as f:
        f.write(f"# {title}\n# {context.footnote()}\n")
        df.to_csv(f, index=False)
    md_path.write_text(f"**{title}**\n\n{markdown_table(df, floatfmt)}\n_{context.footnote()}_\n", encoding="utf-8")
    return [csv_path, md_path]


# -- tables ----------------------------------------------------------------------------------
def table3_wide(table3_df: pd.DataFrame) -> pd.DataFrame:
    """Table 3 in the paper's layout: components as rows, one column per model (percent)."""
    models = _model_order(table3_df["model_id"])
    t = table3_df.set_index("model_id")
    rows = []
    for comp, col, _ in _COMPONENTS:
        rows.append({"component": comp, **{m: float(t.loc[m, col]) for m in models}})
    return pd.DataFrame(rows, columns=["component", *models])


def table3(table3_df: pd.DataFrame, context: FigureContext, out_dir: str | Path = "figures") -> list[Path]:
    """Table 3: maximum relative uncertainties of the summed organ dose over the test set.

    Writes ``table3.csv`` and ``table3.md`` (percent; components aleatoric, epistemic,
    total, total k = 2; one column per model).
    """
    title = (
        "Table 3. Maximal relative uncertainties (%) of summed organ doses over the test set "
        "(eq. 8 full correlation; each component maximised separately; total_k2 = 2 x total)"
    )
    return _write_table(table3_wide(table3_df), out_dir, "table3", title, context)


def table4_wide(table4_df: pd.DataFrame) -> pd.DataFrame:
    """Table 4 in the paper's layout: organs (and the partial E) as rows, models as columns."""
    models = _model_order(table4_df["model_id"])
    pivot = table4_df.pivot_table(index="organ", columns="model_id", values="mean_deviation_percent")
    order = [o for o in (*TABLE4_ORGANS, E_PARTIAL) if o in pivot.index]
    pivot = pivot.reindex(index=order, columns=models)
    return pivot.reset_index().rename(columns={"index": "organ"})


def table4(table4_df: pd.DataFrame, context: FigureContext, out_dir: str | Path = "figures") -> list[Path]:
    """Table 4: mean deviation (%) of organ doses NN vs MC per model, plus the partial E.

    Writes ``table4.csv`` and ``table4.md``.
    """
    title = (
        "Table 4. Mean deviation (%) of organ doses between NN estimation and MC calculation over the "
        "test set; last row: partial effective dose (ICRP 103 weights over the available organs)"
    )
    return _write_table(table4_wide(table4_df), out_dir, "table4", title, context)


# -- figures ---------------------------------------------------------------------------------
def _mid_slice(case, k: int | None) -> int:
    if k is not None:
        return int(k)
    roi = case.attrs.get("roi_z_mm")
    z = np.asarray(case["z"].values, dtype=float)
    if roi is not None and len(roi) == 2:
        return int(np.argmin(np.abs(z - 0.5 * (float(roi[0]) + float(roi[1])))))
    return z.size // 2


def _extent_xy(case):
    x, y = np.asarray(case["x"].values, float), np.asarray(case["y"].values, float)
    dx = x[1] - x[0] if x.size > 1 else 1.0
    dy = y[1] - y[0] if y.size > 1 else 1.0
    # radiological view: anterior (small y) up, patient right (small x) on the image left
    return (x[0] - dx / 2, x[-1] + dx / 2, y[-1] + dy / 2, y[0] - dy / 2)


def figure3_inputs(
    case, context: FigureContext, out_dir: str | Path = "figures", slice_index: int | None = None
) -> list[Path]:
    """Figure 3: electron density, air-kerma input(s) and MC dose of one case (axial slice)."""
    kerma_vars = [v for v in ("kerma_cylinder", "kerma_patient") if v in case]
    panels = [("density_e", "electron density (m$^{-3}$)")]
    panels += [(v, f"{v.split('_')[1]} air-kerma input (Gy/mAs)") for v in kerma_vars]
    panels += [("dose_mc", "MC dose (Gy/mAs)")]
    missing = [v for v, _ in panels if v not in case]
    if missing:
        raise MissingStepError(
            f"case {case.attrs.get('case_id')!r} has no {', '.join(missing)}; run notebooks 01-02 first "
            "(ctdose run --only 02_mc_preparation)"
        )
    k = _mid_slice(case, slice_index)
    body = np.asarray(case["body_mask"].values[k], bool) if "body_mask" in case else None
    fig = Figure(figsize=(3.2 * len(panels), 3.6), layout="constrained")
    axes = fig.subplots(1, len(panels))
    for ax, (var, label) in zip(np.atleast_1d(axes), panels):
        image = np.asarray(case[var].values)[k]
        if var == "dose_mc" and body is not None:  # the dose in air is not a training target (eq. 2 mask)
            image = np.where(body, image, np.nan)
        im = ax.imshow(image, extent=_extent_xy(case), cmap="viridis")
        ax.set_title(label, fontsize=8)
        ax.set_xlabel("x (mm)", fontsize=7)
        ax.tick_params(labelsize=6)
        fig.colorbar(im, ax=ax, shrink=0.75).ax.tick_params(labelsize=6)
    title = f"Figure 3. Network inputs and MC ground truth, case {case.attrs.get('case_id')} (z = {float(case['z'][k]):.0f} mm)"
    fig.get_layout_engine().set(rect=(0, 0.06, 1, 0.94))
    return _save(fig, out_dir, "figure3_inputs", title, context)


def figure4_summed_doses(
    summed: pd.DataFrame,
    context: FigureContext,
    out_dir: str | Path = "figures",
    tube_current_ma: float = 200.0,
    rotation_time_s: float = 1.0,
) -> list[Path]:
    """Figure 4: summed organ doses of MC and each model, per kerma mode.

    Top: box plots (median, interquartile range) of the summed organ dose in mGy per
    rotation at `tube_current_ma` and `rotation_time_s`, patients as dots. Bottom: mean
    summed dose of each model relative to the mean MC value, with k = 1 bars (mean summed
    sigma_tot, eqs. 8-9, relative to the mean MC value).
    """
    modes = sorted(set(summed["kerma_mode"]))
    fig = Figure(figsize=(4.2 * len(modes) + 1.0, 6.0), layout="constrained")
    axes = np.asarray(fig.subplots(2, len(modes), squeeze=False, height_ratios=(2, 1)))
    rng = np.random.default_rng(0)  # jitter of the dots only
    scale = mgy_per_rotation(1.0, tube_current_ma, rotation_time_s)
    for j, mode in enumerate(modes):
        part = summed[summed["kerma_mode"] == mode]
        models = _model_order(part["model_id"])
        mc = part.drop_duplicates("case_id")["dose_sum_mc"].to_numpy() * scale
        data = [mc] + [part.loc[part["model_id"] == m, "dose_sum_nn"].to_numpy() * scale for m in models]
        labels = ["MC"] + [f"{parse_model_id(m)[1]} % NN" for m in models]
        top, bottom = axes[0, j], axes[1, j]
        top.boxplot(data, showfliers=False)
        top.set_xticks(range(1, len(labels) + 1), labels, fontsize=7)
        for i, values in enumerate(data, start=1):
            top.plot(i + rng.uniform(-0.12, 0.12, values.size), values, "k.", ms=3)
        top.set_ylabel(f"summed organ dose (mGy / rotation at {tube_current_ma:g} mA, {rotation_time_s:g} s)", fontsize=7)
        top.set_title(f"kerma input: {mode}", fontsize=8)
        mean_mc = mc.mean()
        means = [d.mean() / mean_mc for d in data[1:]]
        bars = [part.loc[part["model_id"] == m, "sigma_tot_sum"].mean() * scale / mean_mc for m in models]
        bottom.errorbar(range(2, len(labels) + 1), means, yerr=bars, fmt="o", capsize=3)
        bottom.axhline(1.0, ls="--", color="k", lw=0.8)
        bottom.set_xticks(range(1, len(labels) + 1), labels, fontsize=7)
        bottom.set_ylabel("mean / mean MC (k = 1)", fontsize=7)
    title = f"Figure 4. Summed organ doses over the test set (n = {summed['case_id'].nunique()})"
    fig.get_layout_engine().set(rect=(0, 0.05, 1, 0.95))
    return _save(fig, out_dir, "figure4_summed_doses", title, context)


def linear_fit_band(
    x: Sequence[float], y: Sequence[float], x_eval: Sequence[float], level: float = _CI_LEVEL
) -> dict:
    """Least-squares line and the confidence band of the fitted mean.

    ``y_hat(x0) +- t_{n-2} s sqrt(1/n + (x0 - x_bar)^2 / S_xx)`` with the residual standard
    deviation ``s``: the band shows the uncertainty of the fit parameters (Figure 5).

    Returns
    -------
    dict
        ``slope, intercept, fit, lower, upper`` (arrays over `x_eval`; bands NaN for n < 3).
    """
    x, y, x_eval = (np.asarray(a, dtype=float) for a in (x, y, x_eval))
    n = x.size
    slope, intercept = np.polyfit(x, y, 1)
    fit = slope * x_eval + intercept
    if n < 3:
        nan = np.full_like(x_eval, np.nan)
        return {"slope": slope, "intercept": intercept, "fit": fit, "lower": nan, "upper": nan}
    resid = y - (slope * x + intercept)
    s = np.sqrt(np.sum(resid**2) / (n - 2))
    sxx = np.sum((x - x.mean()) ** 2)
    half = stats.t.ppf(0.5 * (1 + level), n - 2) * s * np.sqrt(1.0 / n + (x_eval - x.mean()) ** 2 / sxx)
    return {"slope": slope, "intercept": intercept, "fit": fit, "lower": fit - half, "upper": fit + half}


def figure5_ratio_vs_diameter(
    summed: pd.DataFrame, context: FigureContext, out_dir: str | Path = "figures", diameter: str = "d_eff_cm"
) -> list[Path]:
    """Figure 5: NN/MC summed-dose ratio vs effective diameter, linear fit with 95 % CI band.

    One panel per model; one row per kerma mode (both when both were trained).
    """
    modes = sorted(set(summed["kerma_mode"]))
    mixes = sorted(set(summed["percent_real"]))
    fig = Figure(figsize=(2.8 * len(mixes) + 0.5, 2.6 * len(modes) + 0.6), layout="constrained")
    axes = np.asarray(fig.subplots(len(modes), len(mixes), squeeze=False, sharex=True, sharey=True))
    for i, mode in enumerate(modes):
        for j, mix in enumerate(mixes):
            ax = axes[i, j]
            part = summed[(summed["kerma_mode"] == mode) & (summed["percent_real"] == mix)]
            ax.set_title(f"{mix} % NN ({mode})", fontsize=8)
            ax.axhline(1.0, ls="--", color="k", lw=0.8)
            ax.tick_params(labelsize=6)
            if part.empty:
                continue
            x, y = part[diameter].to_numpy(), part["ratio_nn_mc"].to_numpy()
            ax.plot(x, y, "k.", ms=4)
            if np.unique(x).size >= 2:
                grid = np.linspace(x.min(), x.max(), 50)
                band = linear_fit_band(x, y, grid)
                ax.plot(grid, band["fit"], "C0-", lw=1, label=f"slope {band['slope']:.3f}/cm")
                if np.all(np.isfinite(band["lower"])):
                    ax.fill_between(grid, band["lower"], band["upper"], color="C0", alpha=0.25, label="95 % CI")
                ax.legend(fontsize=6)
            if i == len(modes) - 1:
                ax.set_xlabel("effective diameter (cm)", fontsize=7)
            if j == 0:
                ax.set_ylabel("NN / MC summed dose", fontsize=7)
    title = "Figure 5. Ratio of NN to MC summed organ dose vs effective diameter (AAPM Report 204)"
    fig.get_layout_engine().set(rect=(0, 0.06, 1, 0.94))
    return _save(fig, out_dir, "figure5_ratio_vs_diameter", title, context)


def figure6_dose_maps(
    case,
    predictions: Mapping[str, object],
    context: FigureContext,
    out_dir: str | Path = "figures",
    slice_index: int | None = None,
) -> list[Path]:
    """Figure 6: one test patient, axial slice: MC dose; per model dose, relative deviation
    from MC and relative total uncertainty (eq. 7); outside the body masked."""
    k = _mid_slice(case, slice_index)
    mc = np.asarray(case["dose_mc"].values, dtype=float)[k]
    body = (np.asarray(case["body_mask"].values)[k] > 0) if "body_mask" in case else np.asarray(case["labels"].values)[k] > 0
    models = _model_order(predictions)
    extent = _extent_xy(case)
    vmax = float(np.nanpercentile(mc[body], 99)) if body.any() else float(mc.max())
    fig = Figure(figsize=(9.0, 2.3 * (len(models) + 1) + 0.5), layout="constrained")
    axes = np.asarray(fig.subplots(len(models) + 1, 3, squeeze=False))
    masked = lambda a: np.where(body, a, np.nan)  # noqa: E731

    def show(ax, img, title, cmap, vmin, vmax_):
        im = ax.imshow(masked(img), extent=extent, cmap=cmap, vmin=vmin, vmax=vmax_)
        ax.set_title(title, fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(im, ax=ax, shrink=0.8).ax.tick_params(labelsize=6)

    show(axes[0, 0], mc, "MC dose (Gy/mAs)", "inferno", 0.0, vmax)
    if "dose_mc_sigma" in case:
        rel = _PERCENT * np.asarray(case["dose_mc_sigma"].values, float)[k] / np.where(mc > 0, mc, np.nan)
        show(axes[0, 2], rel, "MC statistical sigma (%)", "magma", 0.0, None)
    else:
        axes[0, 2].axis("off")
    axes[0, 1].axis("off")
    for r, model_id in enumerate(models, start=1):
        pred = predictions[model_id]
        res = voxel_uncertainty(np.asarray(pred["mu"].values)[:, k : k + 1], np.asarray(pred["sigma_aleatoric"].values)[:, k : k + 1])
        dose, sig = res.dose[0], res.sigma_total[0]
        name = model_label(model_id)
        show(axes[r, 0], dose, f"{name}: dose (Gy/mAs)", "inferno", 0.0, vmax)
        dev = _PERCENT * (dose - mc) / np.where(mc > 0, mc, np.nan)
        show(axes[r, 1], dev, f"{name}: (NN - MC) / MC (%)", "RdBu_r", -50.0, 50.0)
        show(axes[r, 2], _PERCENT * sig / np.where(dose > 0, dose, np.nan), f"{name}: sigma_tot / D (%)", "magma", 0.0, None)
    title = f"Figure 6. Dose maps of test case {case.attrs.get('case_id')} (z = {float(case['z'][k]):.0f} mm)"
    fig.get_layout_engine().set(rect=(0, 0.03, 1, 0.97))
    return _save(fig, out_dir, "figure6_dose_maps", title, context)


def figure7_organ_volumes(
    organ_volumes: pd.DataFrame,
    splits: pd.DataFrame,
    context: FigureContext,
    out_dir: str | Path = "figures",
    organs: Sequence[str] = TABLE4_ORGANS,
) -> list[Path]:
    """Figure 7: organ-volume distributions of the training datasets (train + val per mix)."""
    used = splits[splits["role"] != "test"][["percent_real", "case_id"]].drop_duplicates()
    merged = used.merge(organ_volumes, on="case_id")
    organs = [o for o in organs if o in set(merged["organ"])]
    mixes = sorted(set(merged["percent_real"]))
    ncol = 4
    nrow = max(1, int(np.ceil(len(organs) / ncol)))
    fig = Figure(figsize=(2.6 * ncol, 2.1 * nrow + 0.6), layout="constrained")
    axes = np.asarray(fig.subplots(nrow, ncol, squeeze=False)).ravel()
    for ax, organ in zip(axes, organs):
        part = merged[merged["organ"] == organ]
        data = [part.loc[part["percent_real"] == m, "volume_ml"].to_numpy() for m in mixes]
        ax.boxplot(data, showfliers=False)
        ax.set_xticks(range(1, len(mixes) + 1), [f"{m} %" for m in mixes], fontsize=6)
        ax.set_title(organ, fontsize=8)
        ax.tick_params(labelsize=6)
        ax.set_ylabel("volume in ROI (mL)", fontsize=6)
    for ax in axes[len(organs):]:
        ax.axis("off")
    title = "Figure 7. Organ-volume distributions (within the ROI) of the training datasets, by % real data"
    fig.get_layout_engine().set(rect=(0, 0.05, 1, 0.95))
    return _save(fig, out_dir, "figure7_organ_volumes", title, context)


def reliability_plot(calibration: pd.DataFrame, context: FigureContext, out_dir: str | Path = "figures") -> list[Path]:
    """Reliability plot: observed vs nominal coverage of the organ-dose intervals per model."""
    fig = Figure(figsize=(5.0, 4.8), layout="constrained")
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="calibrated")
    for model_id in _model_order(calibration["model_id"]):
        part = calibration[calibration["model_id"] == model_id].sort_values("nominal")
        ax.plot(part["nominal"], part["observed"], "o-", ms=3, label=model_label(model_id))
    ax.set_xlabel("nominal coverage of D_NN +- k sigma_tot (Gaussian)", fontsize=8)
    ax.set_ylabel("observed fraction of MC organ doses inside", fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=6)
    title = "Calibration of the predicted organ-dose uncertainty (eq. 8, full correlation)"
    fig.get_layout_engine().set(rect=(0, 0.08, 1, 0.92))
    return _save(fig, out_dir, "reliability", title, context)


def draw_all(cfg, store, figures_dir: str | Path = "figures", case_id: str | None = None) -> dict[str, list[Path]]:
    """Every table and figure from a finished run's store and tables (no training, no MC).

    Parameters
    ----------
    cfg : Profile
        The run's profile (name, ``evaluate.tube_current_ma``, ``scanner.rotation_time_s``,
        ``evaluate.figure_case``).
    store : CaseStore
    figures_dir : path
        Output folder.
    case_id : str, optional
        Test case of Figures 3 and 6 (default ``evaluate.figure_case`` or the first test case).

    Returns
    -------
    dict of str to list of Path
    """
    context = figure_context(store, cfg["name"])
    need = "run notebook 04_ensemble_uncertainty first (ctdose run --only 04_ensemble_uncertainty)"
    tables = {}
    for name in ("summed_doses", "table3", "table4", "calibration", "organ_volumes", "splits"):
        try:
            tables[name] = store.read_table(name)
        except MissingStepError as exc:
            raise MissingStepError(f"{exc}; {need}" if name != "splits" else str(exc)) from None
    ev = cfg.get("evaluate", {})
    summed = tables["summed_doses"]
    test_ids = sorted(set(summed["case_id"].astype(str)))
    case_id = case_id or ev.get("figure_case") or test_ids[0]
    case = store.read_case(case_id).load()
    case.attrs.setdefault("case_id", case_id)
    models = _model_order(summed["model_id"])
    preds = {m: store.read_prediction(m, case_id).load() for m in models}
    out = {
        "table3": table3(tables["table3"], context, figures_dir),
        "table4": table4(tables["table4"], context, figures_dir),
        "figure3": figure3_inputs(case, context, figures_dir),
        "figure4": figure4_summed_doses(
            summed, context, figures_dir, float(ev.get("tube_current_ma", 200.0)),
            float(cfg.get("scanner", {}).get("rotation_time_s", 1.0)),
        ),
        "figure5": figure5_ratio_vs_diameter(summed, context, figures_dir),
        "figure6": figure6_dose_maps(case, preds, context, figures_dir),
        "figure7": figure7_organ_volumes(tables["organ_volumes"], tables["splits"], context, figures_dir),
        "reliability": reliability_plot(tables["calibration"], context, figures_dir),
    }
    return out
