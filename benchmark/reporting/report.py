"""`bench report`: one self-contained HTML page per results dir (Jinja2 template, SVG figures inline, no network).

Per benchmark: the summary table of `bench table` (the same cells: :func:`benchmark.reporting.tables.summary_table`),
the published numbers of `bench table --paper` beside them with Δ = ours - published and a mark where our mean
lies within the published ± std, each method's Ā difference to the best method with its 95 % interval over seeds
(:mod:`benchmark.reporting.statistics`), the figures of :mod:`benchmark.reporting.figures`, the runs that did not
finish with their reasons, and the provenance of every run (commit, versions, device, precision, backbone, config
digest, class order). Tables sort on a click on their header (a few lines of inline script).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import jinja2
import pandas as pd

from benchmark.reporting.figures import benchmark_figures, finished_runs, inline_svg
from benchmark.reporting.statistics import compare
from benchmark.reporting.tables import METRICS, failed_runs, paper_numbers, summary_table, with_row_labels
from benchmark.store.integrity import IntegrityError, read_json_file

TEMPLATES = Path(__file__).resolve().parent / "templates"
TABLE_METRICS = ["avg", "last", "forgetting"]
COLUMN_OF = {label: column for column, label in METRICS.values()}  # "Ā" -> "avg_acc"
FIGURE_TITLES = {"accuracy": "Accuracy on the classes seen so far, after each task",
                 "avg_vs_params": "Average accuracy Ā vs trainable parameters per task",
                 "last_vs_params": "Final accuracy A_T vs trainable parameters per task",
                 "forgetting": "Forgetting per method",
                 "matrices": "Accuracy matrix of each run"}


@dataclass
class Cell:
    """A table cell: its text, the value it sorts by (a number or text) and an optional CSS class."""

    text: str
    sort: float | str
    css: str = ""


@dataclass
class BenchmarkSection:
    """Everything the page shows about one benchmark."""

    name: str
    header: list[str] = field(default_factory=list)
    rows: list[list[Cell]] = field(default_factory=list)
    best: str | None = None
    figures: list[tuple[str, str]] = field(default_factory=list)
    unfinished: list[dict] = field(default_factory=list)
    provenance: list[dict] = field(default_factory=list)


def build_report(results: pd.DataFrame, source: str, methods: list[str] | None = None) -> str:
    """The HTML page for ``results`` (all benchmarks in it); ``source`` names the results dir in the title;
    ``methods``: keep only these (a name also keeps its grid variants)."""
    if methods and len(results):
        results = results[results["method"].isin(methods) | results["base_method"].isin(methods)]
    sections = [_section(str(bench), group) for bench, group in results.groupby("bench", sort=True)]
    environment = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                                     trim_blocks=True, lstrip_blocks=True)
    counts = results["state"].value_counts().to_dict() if len(results) else {}
    return environment.get_template("report.html.j2").render(source=source, sections=sections, counts=counts)


def _section(bench: str, group: pd.DataFrame) -> BenchmarkSection:
    section = BenchmarkSection(name=bench)
    finished = finished_runs(group)
    if len(finished):
        section.header, section.rows, section.best = _table(bench, finished)
        section.figures = [(FIGURE_TITLES[name], inline_svg(figure))
                           for name, figure in benchmark_figures(finished).items()]
    section.unfinished = failed_runs(group).to_dict("records")
    section.provenance = [_provenance(row) for _, row in group.sort_values(["method", "seed"]).iterrows()]
    return section


def _number(text: str) -> float | str:
    """The leading number of a cell such as ``'86.91 ± 0.40'`` (the text itself when there is none)."""
    try:
        return float(text.split(" ")[0])
    except ValueError:
        return text


def _table(bench: str, finished: pd.DataFrame) -> tuple[list[str], list[list[Cell]], str]:
    """Header and rows: `bench table --paper`'s cells, Δ to the paper, and the Ā difference to the best."""
    table = summary_table(finished, TABLE_METRICS, with_paper=True)[bench]
    labelled = with_row_labels(finished)
    means = labelled.groupby("row")[[COLUMN_OF[METRICS[metric][1]] for metric in TABLE_METRICS]].mean()
    best = str(means["avg_acc"].idxmax())
    paper = paper_numbers()
    header = ["method"]
    for column in table.columns:
        header.append(column)
        if column.endswith(" paper"):
            header.append(f"Δ {column[: -len(' paper')]}")
    header.append(f"Ā − {best} (95 % CI)")
    rows = []
    for row_label, cells in table.iterrows():
        method = str(labelled.loc[labelled["row"] == row_label, "method"].iloc[0])
        row = [Cell(str(row_label), str(row_label))]
        for column, text in cells.items():
            row.append(Cell(text, _number(text)))
            if column.endswith(" paper"):
                metric = COLUMN_OF[column[: -len(" paper")]]
                row.append(_paper_delta(paper, bench, method, metric, float(means.loc[row_label, metric])))
        row.append(_versus_best(labelled, str(row_label), best))
        rows.append(row)
    return header, rows, best


def _paper_delta(paper: pd.DataFrame, bench: str, method: str, metric: str, mean: float) -> Cell:
    match = paper[(paper["benchmark"] == bench) & (paper["method"] == method) & (paper["metric"] == metric)]
    if match.empty:
        return Cell("–", "–")
    published = match.iloc[0]
    delta = mean - float(published["value"])
    within = not pd.isna(published["std"]) and abs(delta) <= float(published["std"])
    return Cell(f"{delta:+.2f}" + (" ✓" if within else ""), delta, "within" if within else "")


def _versus_best(labelled: pd.DataFrame, row_label: str, best: str) -> Cell:
    if row_label == best:
        return Cell("best", 0.0, "best")
    by_row = labelled.assign(method=labelled["row"])
    result = compare(by_row, row_label, best, "avg_acc")
    if not result.has_interval:
        return Cell(f"{result.difference:+.2f} (no CI: one seed)", result.difference)
    text = f"{result.difference:+.2f} [{result.low:+.2f}, {result.high:+.2f}]"
    return Cell(text + (" *" if result.excludes_zero else ""), result.difference,
                "significant" if result.excludes_zero else "")


def _provenance(row: pd.Series) -> dict:
    """What identifies a run's result: commit, versions, device, precision, backbone, config digest, order."""
    path = Path(row["path"])
    entry = {"run": f"{row['bench']}/{path.parent.name}/{path.name}", "method": row["method"], "seed": row["seed"],
             "state": row["state"], "commit": "–", "versions": "–", "device": "–", "precision": "–",
             "backbone": row["backbone"] or "–", "config_sha256": "–", "class_order": "–"}
    try:
        config = read_json_file(path / "config.json") if (path / "config.json").exists() else None
    except IntegrityError:
        config = None
    if config is None:
        return entry
    git = config.get("git") or {}
    if git.get("commit"):
        entry["commit"] = git["commit"][:12] + (" (dirty)" if git.get("dirty") else "")
    versions = config.get("versions") or {}
    entry["versions"] = ", ".join(f"{name} {version}" for name, version in sorted(versions.items())) or "–"
    entry["device"] = config.get("device") or "–"
    entry["precision"] = config.get("precision", "fp32")
    entry["config_sha256"] = (config.get("fingerprint") or {}).get("config_sha256", "–")
    order = (config.get("stream") or {}).get("class_order")
    entry["class_order"] = " ".join(str(label) for label in order) if order else "–"
    return entry
