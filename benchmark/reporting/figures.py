"""Figures per benchmark, shared by `bench plot` (PNG/SVG/PDF files) and `bench report` (inline SVG).

Each method keeps its look everywhere (:mod:`benchmark.reporting.style`); legends sit outside the axes; with
several seeds a curve is the mean with a ±std band and a point carries ±std bars; scatter labels are moved apart
by ``adjustText``. Figures: accuracy on seen classes after each task, Ā and A_T vs trainable parameters per task
(the "Params" of `bench params`, % of the backbone, log axis), forgetting per method, and the accuracy matrix of
every run as a heatmap. Output is reproducible: no dates in the files, fixed SVG ids.
"""
from __future__ import annotations

import io
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from benchmark.reporting.style import MethodStyle, styles_for  # noqa: E402
from benchmark.store.results import atomic_write_bytes  # noqa: E402

FORMATS = ("png", "svg")
_RC = {"svg.fonttype": "none", "svg.hashsalt": "clbench", "font.size": 9}
_METADATA = {"png": {"Software": None}, "svg": {"Date": None, "Creator": None},
             "pdf": {"CreationDate": None, "Creator": None, "Producer": None}}


def finished_runs(results: pd.DataFrame) -> pd.DataFrame:
    """The finished runs of a results frame (empty frame when none)."""
    return results[results["state"] == "finished"] if len(results) else results


def benchmark_figures(group: pd.DataFrame) -> dict[str, Figure]:
    """The figures of one benchmark's finished runs, by name: ``accuracy``, ``avg_vs_params``,
    ``last_vs_params``, ``forgetting``, ``matrices``."""
    bench = str(group["bench"].iloc[0])
    styles = styles_for(sorted(group["method"].unique()))
    with plt.rc_context(_RC):
        return {"accuracy": _accuracy_curves(group, styles, bench),
                "avg_vs_params": _accuracy_vs_params(group, styles, bench, "avg_acc", "average accuracy Ā (%)"),
                "last_vs_params": _accuracy_vs_params(group, styles, bench, "last_acc", "final accuracy A_T (%)"),
                "forgetting": _forgetting(group, styles, bench),
                "matrices": _matrices(group, bench)}


def _legend_outside(axis) -> None:
    handles, labels = axis.get_legend_handles_labels()
    axis.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize=8,
                ncol=1 if len(labels) <= 18 else 2, frameon=False)


def _accuracy_curves(group: pd.DataFrame, styles: dict[str, MethodStyle], bench: str) -> Figure:
    figure, axis = plt.subplots(figsize=(7, 4.2))
    for method, runs in group.groupby("method", sort=True):
        style = styles[method]
        curves = np.array(list(runs["curve"]), dtype=float)
        mean = curves.mean(axis=0)
        steps = np.arange(1, len(mean) + 1)
        label = method if len(curves) == 1 else f"{method} (n={len(curves)})"
        axis.plot(steps, mean, color=style.colour, marker=style.marker, linestyle=style.linestyle, markersize=4,
                  linewidth=1.4, label=label)
        if len(curves) > 1:
            std = curves.std(axis=0, ddof=1)
            axis.fill_between(steps, mean - std, mean + std, color=style.colour, alpha=0.15, linewidth=0)
    axis.set(xlabel="tasks learned", ylabel="accuracy on seen classes (%)", title=bench)
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.grid(alpha=0.3)
    _legend_outside(axis)
    return figure


def _accuracy_vs_params(group: pd.DataFrame, styles: dict[str, MethodStyle], bench: str, column: str,
                        ylabel: str) -> Figure:
    from adjustText import adjust_text

    figure, axis = plt.subplots(figsize=(7, 4.2))
    summary = group.groupby("method", sort=True).agg(
        mean=(column, "mean"), std=(column, "std"), params=("trainable_task_pct", "mean"))
    texts = []
    for method, row in summary.iterrows():
        style = styles[method]
        x, y = float(row["params"]), float(row["mean"])
        axis.errorbar(x, y, yerr=None if pd.isna(row["std"]) else float(row["std"]), color=style.colour,
                      marker=style.marker, markersize=7, capsize=3, linestyle="none", label=method)
        texts.append(axis.text(x, y, method, fontsize=8, color="0.15"))
    axis.set_xscale("symlog", linthresh=0.01)  # log above 0.01 %; methods that train nothing sit at 0
    axis.set_xlim(left=-0.002)
    axis.set(xlabel="trainable parameters per task (% of backbone; symlog, 0 = trains nothing)", ylabel=ylabel,
             title=bench)
    axis.grid(alpha=0.3)
    _legend_outside(axis)
    # the labels also keep clear of the markers (x, y), not only of each other
    adjust_text(texts, x=summary["params"].to_numpy(float), y=summary["mean"].to_numpy(float), ax=axis,
                expand=(1.3, 1.6), arrowprops={"arrowstyle": "-", "color": "0.5", "lw": 0.5})
    return figure


def _forgetting(group: pd.DataFrame, styles: dict[str, MethodStyle], bench: str) -> Figure:
    summary = group.groupby("method", sort=True).agg(
        mean=("forgetting_pilot", "mean"), std=("forgetting_pilot", "std")).sort_values("mean", kind="stable")
    figure, axis = plt.subplots(figsize=(7, 0.6 + 0.28 * len(summary)))
    positions = np.arange(len(summary))
    axis.barh(positions, summary["mean"], xerr=summary["std"].fillna(0), capsize=2,
              color=[styles[method].colour for method in summary.index], edgecolor="0.3", linewidth=0.5)
    axis.set_yticks(positions, labels=list(summary.index))
    axis.invert_yaxis()
    axis.set(xlabel="forgetting F (PILOT, points; lower is better)", title=bench)
    axis.grid(axis="x", alpha=0.3)
    return figure


def _matrices(group: pd.DataFrame, bench: str) -> Figure:
    runs = group.sort_values(["method", "seed"], kind="stable")
    columns = min(5, len(runs))
    rows = math.ceil(len(runs) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(2.1 * columns + 0.8, 2.1 * rows + 0.5), squeeze=False)
    image = None
    for axis, (_, run) in zip(axes.flat, runs.iterrows()):
        matrix = np.array([[np.nan if value is None else value for value in row] for row in run["matrix"]],
                          dtype=float)
        image = axis.imshow(np.ma.masked_invalid(matrix), vmin=0, vmax=100, cmap="viridis")
        steps = len(matrix)
        if steps <= 8:
            for i, j in zip(*np.nonzero(~np.isnan(matrix))):
                axis.text(j, i, f"{matrix[i, j]:.0f}", ha="center", va="center", fontsize=6,
                          color="white" if matrix[i, j] < 60 else "black")
        ticks = range(0, steps, max(1, steps // 5))
        axis.set_xticks(list(ticks), labels=[str(t + 1) for t in ticks], fontsize=6)
        axis.set_yticks(list(ticks), labels=[str(t + 1) for t in ticks], fontsize=6)
        axis.set_title(f"{run['method']} · seed {run['seed']}", fontsize=7)
    for axis in axes.flat[len(runs):]:
        axis.set_axis_off()
    for axis in axes[-1]:
        axis.set_xlabel("task evaluated", fontsize=7)
    for axis in axes[:, 0]:
        axis.set_ylabel("after task", fontsize=7)
    if image is not None:
        figure.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label="top-1 %")
    figure.suptitle(f"{bench}: accuracy matrix of each run (row: after task i, column: task j)", fontsize=9)
    return figure


def figure_bytes(figure: Figure, fmt: str) -> bytes:
    """The figure encoded as ``png``, ``svg`` or ``pdf`` (legend included, no timestamps)."""
    buffer = io.BytesIO()
    with plt.rc_context(_RC):
        figure.savefig(buffer, format=fmt, dpi=120, bbox_inches="tight", metadata=_METADATA[fmt])
    return buffer.getvalue()


def inline_svg(figure: Figure) -> str:
    """The figure as an ``<svg>`` element for an HTML page (XML prologue and doctype dropped); closes it."""
    text = figure_bytes(figure, "svg").decode()
    plt.close(figure)
    return text[text.index("<svg"):]


def plot_results(results: pd.DataFrame, out_dir: Path, formats: tuple[str, ...] = FORMATS) -> list[Path]:
    """Per benchmark, every figure as ``<bench>_<figure>.<fmt>`` under ``out_dir``; nothing (not even the
    folder) when no run finished."""
    finished = finished_runs(results)
    paths: list[Path] = []
    if finished.empty:
        return paths
    for bench, group in finished.groupby("bench", sort=True):
        for name, figure in benchmark_figures(group).items():
            for fmt in formats:
                path = Path(out_dir) / f"{bench}_{name}.{fmt}"
                atomic_write_bytes(path, figure_bytes(figure, fmt))
                paths.append(path)
            plt.close(figure)
    return paths
