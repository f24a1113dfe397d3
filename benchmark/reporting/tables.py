"""Reports: every stored result in a pandas DataFrame, and summary tables (Markdown, CSV, LaTeX).

Figures are in :mod:`benchmark.reporting.figures`, the HTML page in :mod:`benchmark.reporting.report`."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from benchmark.store.integrity import IntegrityError, read_json_file, read_status
from benchmark.store.locking import live_holder
from benchmark.store.results import atomic_write_bytes, find_runs

PAPER_NUMBERS = Path(__file__).resolve().parent / "paper_numbers.csv"
METRICS = {"avg": ("avg_acc", "Ā"), "last": ("last_acc", "A_T"), "forgetting": ("forgetting_pilot", "F (PILOT)")}


def load_results(root: Path, bench: str | None = None, skipped: list[str] | None = None) -> pd.DataFrame:
    """One row per run folder under ``root``: identity, state, summary metrics, parameters, time, curve.

    A run that failed before its config was written is identified by its folder (``<bench>/<method>/seed<k>``).
    A run whose status, config or metrics cannot be read is left out, with one line naming the file appended
    to ``skipped``.
    """
    rows = []
    for path in find_runs(root):
        try:
            row = _result_row(path)
        except IntegrityError as error:
            if skipped is not None and (not bench or path.parent.parent.name == bench):
                skipped.append(f"run skipped: {error}")
            continue
        if not bench or row["bench"] == bench:
            rows.append(row)
    return pd.DataFrame(rows)


def _result_row(path: Path) -> dict:
    status = read_status(path / "status.json") if (path / "status.json").exists() else {"state": "unknown"}
    if status["state"] == "running" and live_holder(path) is None:
        status = {**status, "state": "stopped",
                  "reason": "recorded as running, but no process holds the run (killed?); `bench run` resumes it"}
    if (path / "config.json").exists():
        config = read_json_file(path / "config.json")
        if not all(key in config for key in ("bench", "method", "seed", "backbone")):
            raise IntegrityError(path / "config.json", "lacks bench, method, seed or backbone")
    else:  # failed before its config existed: the folder names the run
        config = {"bench": path.parent.parent.name, "method": path.parent.name,
                  "seed": int(path.name[4:]) if path.name[4:].isdigit() else path.name, "backbone": None}
    # A grid variant is its own row and plot line: ``method`` is ``cl_lora[kd+gr]`` (the paper CSV's ids).
    variant = config.get("variant")
    row = {"bench": config["bench"], "method": config["method"] + (f"[{variant}]" if variant else ""),
           "base_method": config["method"], "variant": variant, "seed": config["seed"],
           "backbone": config["backbone"], "precision": config.get("precision", "fp32"),
           "state": status["state"], "reason": status.get("reason"),
           "path": str(path)}
    if status["state"] == "finished":
        if not (path / "metrics.json").exists():
            raise IntegrityError(path / "metrics.json", "is missing although the run is finished")
        metrics = read_json_file(path / "metrics.json")
        parameters = metrics.get("parameters", {})
        row.update({key: metrics.get(key) for key in (
            "avg_acc", "last_acc", "avg_acc_unrounded", "avg_acc_task_mean", "last_acc_task_mean",
            "forgetting_pilot", "forgetting_avalanche", "train_seconds", "eval_seconds", "peak_memory_mb")})
        row.update({"trainable_task": parameters.get("trainable_task"),
                    "trainable_task_pct": parameters.get("trainable_task_pct"),
                    "trainable_total_pct": parameters.get("trainable_total_pct"),
                    "stored": parameters.get("stored"),
                    "curve": metrics.get("accuracy_curve_rounded"),
                    "matrix": metrics.get("acc_matrix_rounded")})
    return row


def paper_numbers() -> pd.DataFrame:
    """The published numbers shipped with the harness (``benchmark/reporting/paper_numbers.csv``)."""
    return pd.read_csv(PAPER_NUMBERS)


def summary_table(results: pd.DataFrame, metrics: list[str], with_paper: bool = False) -> pd.DataFrame:
    """Methods x (benchmark, metric): 'mean ± std' over finished seeds, trainable params %, and the published
    number beside each measured one when ``with_paper``."""
    finished = results[results["state"] == "finished"] if len(results) else results
    if finished.empty:
        return pd.DataFrame()
    paper = paper_numbers() if with_paper else None
    table: dict[tuple[str, str], dict[str, str]] = {}
    finished = with_row_labels(finished)
    for (bench, method, row), group in finished.groupby(["bench", "method", "row"], sort=True):
        for metric in metrics:
            column, label = METRICS[metric]
            table.setdefault((bench, label), {})[row] = _mean_std(group[column].astype(float))
            if paper is not None and (paper["benchmark"] == bench).any():
                match = paper[(paper["method"] == method) & (paper["benchmark"] == bench)
                              & (paper["metric"] == column)]
                table.setdefault((bench, f"{label} paper"), {})[row] = (
                    _format_paper(match.iloc[0]) if len(match) else "–")
        table.setdefault((bench, "n"), {})[row] = str(len(group))
        table.setdefault((bench, "params %"), {})[row] = f"{group['trainable_task_pct'].astype(float).mean():.3f}"
    frame = pd.DataFrame(table)
    frame.columns = pd.MultiIndex.from_tuples(frame.columns)
    frame.index.name = "method"
    return frame.fillna("–")


def with_row_labels(finished: pd.DataFrame) -> pd.DataFrame:
    """``finished`` with a ``row`` column: the table row of each run (the method, plus its precision in
    parentheses when the runs have several precisions)."""
    if "precision" not in finished:
        finished = finished.assign(precision="fp32")
    if finished["precision"].nunique() > 1:  # runs of several precisions: label each row with its precision
        return finished.assign(row=finished["method"] + " (" + finished["precision"] + ")")
    return finished.assign(row=finished["method"])


def failed_runs(results: pd.DataFrame) -> pd.DataFrame:
    """Runs that did not finish, with their state and reason."""
    if results.empty:
        return results
    return results[results["state"] != "finished"][["bench", "method", "seed", "state", "reason"]]


def _mean_std(values: pd.Series) -> str:
    values = values.dropna()
    if values.empty:
        return "–"
    if len(values) == 1:
        return f"{values.iloc[0]:.2f}"
    return f"{values.mean():.2f} ± {values.std(ddof=1):.2f}"


def _format_paper(row: pd.Series) -> str:
    std = row["std"]
    return f"{row['value']}" + ("" if pd.isna(std) else f" ± {std}")


def render(table: pd.DataFrame, fmt: str) -> str:
    """The table as Markdown, CSV or LaTeX text."""
    flat = table.copy()
    flat.columns = [" ".join(column) for column in flat.columns]
    if fmt == "md":
        return flat.to_markdown() if _has_tabulate() else _markdown(flat)
    if fmt == "csv":
        return flat.to_csv()
    if fmt == "latex":
        return flat.to_latex(escape=True)
    raise ValueError(f"unknown format '{fmt}' (md, csv, latex)")


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True


def _markdown(frame: pd.DataFrame) -> str:
    header = [frame.index.name or ""] + [str(column) for column in frame.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for index, row in frame.iterrows():
        lines.append("| " + " | ".join([str(index)] + [str(value) for value in row]) + " |")
    return "\n".join(lines) + "\n"


def write_tables(table: pd.DataFrame, out_dir: Path, stem: str = "summary") -> list[Path]:
    """Write the table as ``.md``, ``.csv`` and ``.tex`` (atomically); returns the paths."""
    paths = []
    for fmt, suffix in (("md", "md"), ("csv", "csv"), ("latex", "tex")):
        path = Path(out_dir) / f"{stem}.{suffix}"
        atomic_write_bytes(path, render(table, fmt).encode())
        paths.append(path)
    return paths
