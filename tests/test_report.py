"""`bench report`, `bench compare`, `bench plot` and the method styles, on a results dir written with the store's
API (``tests/fabricate_results.py``: hand-chosen numbers, a failed, an incomplete and a stopped run)."""
from __future__ import annotations

import math
from html.parser import HTMLParser

import pandas as pd
import pytest
from scipy import stats

from benchmark.cli import main
from benchmark.reporting.statistics import compare
from benchmark.reporting.style import MethodStyle, method_order, styles_for
from benchmark.reporting.tables import load_results
from fabricate_results import FAILED_REASON, write_results


class Tables(HTMLParser):
    """Every ``<table id=...>`` of a page as a list of rows of cell texts (header row first); counts ``<svg>``."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.svgs = 0
        self._table = self._cell = None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self._table = self.tables.setdefault(dict(attrs)["id"], [])
        elif tag == "tr" and self._table is not None:
            self._table.append([])
        elif tag in ("td", "th") and self._table is not None:
            self._cell = []
        elif tag == "svg":
            self.svgs += 1

    def handle_endtag(self, tag):
        if tag == "table":
            self._table = None
        elif tag in ("td", "th") and self._cell is not None:
            self._table[-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def welch_by_hand(a: list[float], b: list[float]) -> tuple[float, float]:
    """Welch's 95 % interval of mean(a) - mean(b), Welch-Satterthwaite degrees of freedom, written out."""
    mean_a, mean_b = sum(a) / len(a), sum(b) / len(b)
    term_a = sum((x - mean_a) ** 2 for x in a) / (len(a) - 1) / len(a)
    term_b = sum((x - mean_b) ** 2 for x in b) / (len(b) - 1) / len(b)
    df = (term_a + term_b) ** 2 / (term_a ** 2 / (len(a) - 1) + term_b ** 2 / (len(b) - 1))
    half = stats.t.ppf(0.975, df) * math.sqrt(term_a + term_b)
    return mean_a - mean_b - half, mean_a - mean_b + half


def bench(*args) -> int:
    return main([str(arg) for arg in args])


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return write_results(tmp_path_factory.mktemp("results"))


@pytest.fixture(scope="module")
def page(results):
    assert bench("report", "--results-dir", results) == 0
    parser = Tables()
    text = (results / "report.html").read_text()
    parser.feed(text)
    return text, parser


def test_report_cells_equal_bench_table(results, page):
    _, parser = page
    for name in ("digits_t5", "cifar100_t20"):
        assert bench("table", "--results-dir", results, "--bench", name, "--paper", "--format", "csv",
                     "--metric", "avg,last,forgetting") == 0
        expected = pd.read_csv(results / "tables" / "summary.csv", index_col=0, dtype=str)  # what it printed
        header, *rows = parser.tables[f"summary-{name}"]
        html = pd.DataFrame([row[1:] for row in rows], index=[row[0] for row in rows], columns=header[1:])
        assert list(html.index) == list(expected.index)
        for column in expected.columns:  # "digits_t5 Ā" in the CSV is "Ā" in the page's table of digits_t5
            assert list(html[column.removeprefix(f"{name} ")]) == list(expected[column]), column
    digits = dict((row[0], row) for row in parser.tables["summary-digits_t5"][1:])
    assert digits["simplecil"][1:3] == ["82.00 ± 2.00", "71.00 ± 1.00"]  # mean ± sample std of 80/82/84, 70/71/72


def test_report_published_delta_and_mark(page):
    _, parser = page
    header, row = parser.tables["summary-cifar100_t20"]
    cells = dict(zip(header, row))
    assert cells["Ā paper"] == "85.5 ± 1.23" and cells["Δ Ā"] == "-0.50 ✓"  # |85.0 - 85.5| <= 1.23
    assert cells["A_T paper"] == "79.51 ± 0.67" and cells["Δ A_T"] == "-9.51"  # 70.0 - 79.51, outside ± 0.67


def test_report_versus_best_column(page):
    _, parser = page
    header, *rows = parser.tables["summary-digits_t5"]
    column = header.index("Ā − simplecil (95 % CI)")
    versus = {row[0]: row[column] for row in rows}
    # finetune - simplecil paired over seeds 1..3: d = -2, -1, -4; mean -7/3, sd sqrt(7/3), t(0.975, 2)
    half = stats.t.ppf(0.975, 2) * math.sqrt(7 / 3) / math.sqrt(3)
    assert versus["finetune"] == f"{-7 / 3:+.2f} [{-7 / 3 - half:+.2f}, {-7 / 3 + half:+.2f}]"
    assert versus["simplecil"] == "best"
    assert versus["l2p"] == "-16.00 (no CI: one seed)"
    low, high = welch_by_hand([70.0, 70.5], [80.0, 82.0, 84.0])
    assert versus["ranpac"] == f"{-11.75:+.2f} [{low:+.2f}, {high:+.2f}] *"  # the interval excludes 0


def test_report_lists_unfinished_runs_and_provenance(page):
    text, parser = page
    header, *rows = parser.tables["unfinished-digits_t5"]
    unfinished = {(row[0], row[2]): row[3] for row in rows}
    assert set(unfinished) == {("aper", "failed"), ("ease", "partial"), ("olora", "stopped")}
    assert unfinished[("aper", "failed")] == FAILED_REASON
    assert "no process holds the run" in unfinished[("olora", "stopped")]
    header, *rows = parser.tables["provenance-digits_t5"]
    runs = {row[0]: dict(zip(header, row)) for row in rows}
    assert len(runs) == 12  # 9 finished + 3 unfinished
    assert runs["digits_t5/simplecil/seed3"]["git commit"] == "0123456789ab (dirty)"
    assert runs["digits_t5/simplecil/seed1"]["class order"] == "9 8 7 6 5 4 3 2 1 0"
    assert runs["digits_t5/simplecil/seed2"]["config sha256"] == f"{2:064x}"[:16]
    assert runs["digits_t5/aper/seed1"]["git commit"] == "–"  # failed before its config was written
    assert parser.svgs == 10  # five figures per benchmark, inline
    for remote in ("<link", " src=", "@import", "url(http"):  # nothing is fetched when the page opens
        assert remote not in text


def test_report_methods_filter_and_bad_method(results, tmp_path, capsys):
    output = tmp_path / "page.html"
    assert bench("report", "--results-dir", results, "--methods", "finetune", "--bench", "digits_t5",
                 "-o", output) == 0
    parser = Tables()
    parser.feed(output.read_text())
    assert [row[0] for row in parser.tables["summary-digits_t5"][1:]] == ["finetune"]
    assert set(parser.tables) == {"summary-digits_t5", "provenance-digits_t5"}
    assert bench("report", "--results-dir", results, "--methods", "nonsense") == 2
    assert "unknown method 'nonsense'" in capsys.readouterr().err


def test_compare_paired_welch_and_one_seed_by_hand(results):
    finished = load_results(results, "digits_t5").query("state == 'finished'")
    paired = compare(finished, "simplecil", "finetune", "last_acc")  # d = 10, 9, 11: mean 10, sd 1
    half = stats.t.ppf(0.975, 2) * 1 / math.sqrt(3)
    assert paired.test == "paired t" and paired.difference == pytest.approx(10)
    assert (paired.low, paired.high) == pytest.approx((10 - half, 10 + half))
    assert paired.excludes_zero and "simplecil is better" in paired.verdict()
    welch = compare(finished, "ranpac", "simplecil", "avg_acc")
    assert welch.test == "Welch t" and welch.difference == pytest.approx(-11.75)
    assert (welch.low, welch.high) == pytest.approx(welch_by_hand([70.0, 70.5], [80.0, 82.0, 84.0]))
    single = compare(finished, "l2p", "simplecil", "avg_acc")
    assert not single.has_interval and "no interval can be given" in single.verdict()


def test_compare_command(results, capsys):
    capsys.readouterr()
    assert bench("compare", "simplecil", "finetune", "--results-dir", results) == 0
    lines = capsys.readouterr().out.splitlines()
    half = stats.t.ppf(0.975, 2) / math.sqrt(3)
    assert lines[0] == "digits_t5: simplecil − finetune, paired t over seeds 1, 2, 3"
    assert lines[2].startswith(f"  A_T  +10.00  95 % CI [{10 - half:+.2f}, {10 + half:+.2f}]  interval excludes 0")
    assert "interval includes 0" in lines[1]  # Ā: d = 2, 1, 4
    assert bench("compare", "l2p", "ranpac", "--metric", "avg", "--results-dir", results) == 0
    assert "no interval can be given: fewer than two seeds" in capsys.readouterr().out
    assert bench("compare", "simplecil", "aper", "--results-dir", results) == 2
    assert "no finished run of 'aper'" in capsys.readouterr().err


def test_plot_writes_every_figure(results, tmp_path):
    assert bench("plot", "--results-dir", results, "--bench", "digits_t5", "--pdf") == 0
    names = sorted(path.name for path in (results / "plots").iterdir())
    figures = ("accuracy", "avg_vs_params", "forgetting", "last_vs_params", "matrices")
    assert names == sorted(f"digits_t5_{figure}.{fmt}" for figure in figures for fmt in ("pdf", "png", "svg"))


def test_a_method_keeps_its_style_whatever_is_shown():
    order = method_order()
    alone, together = styles_for(["sd_lora"]), styles_for(["sd_lora", "aper", "zz_plugin"])
    assert alone["sd_lora"] == together["sd_lora"]
    styles = styles_for(order)
    assert len({(style.colour, style.marker) for style in styles.values()}) == len(order)  # no two alike
    assert len({style.colour for style in styles.values()}) == min(len(order), 20)
    variant = styles_for(["cl_lora[kd+gr]"])["cl_lora[kd+gr]"]
    assert (variant.colour, variant.marker) == (styles["cl_lora"].colour, styles["cl_lora"].marker)
    assert variant.linestyle != "-" and isinstance(variant, MethodStyle)
