"""The plan of `bench run` (seed ranges, grids, presets, dry run) and the Ray extra's absence; no Ray started."""
import io
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from benchmark.cli import main
from benchmark.errors import ClbenchError
from benchmark.runs.plan import method_variants, parse_seeds, preset_variants
from benchmark.reporting.tables import paper_numbers

REPO = Path(__file__).resolve().parents[1]


def test_seed_ranges():
    assert parse_seeds("1993..2002") == list(range(1993, 2003))
    assert parse_seeds("1993..1995,2000,1994") == [1993, 1994, 1995, 2000]
    for bad in ("1995..1993", "a..b", "19,x", ""):
        with pytest.raises(ClbenchError):
            parse_seeds(bad)


def test_grid_is_a_cross_product_with_readable_sorted_names():
    plan = method_variants(["cl_lora", "simplecil"], ["cl_lora.targets=v,q+v", "rank=1,5"], None)
    assert plan["simplecil"] == [None]  # no key of the grid: its plain run
    names = [variant.name for variant in plan["cl_lora"]]
    assert names == ["rank=1,targets=v", "rank=5,targets=v", "rank=1,targets=q+v", "rank=5,targets=q+v"]
    assert plan["cl_lora"][2].overrides == {"targets": "q,v", "rank": "1"}  # + joins list items


@pytest.mark.parametrize("grid, message", [
    (["cl_lora.rank=1,1"], "repeated value"),
    (["rank"], "expected key=v1,v2"),
    (["l2p.rank=1"], "not one of the selected methods"),
    (["ranks=1"], "no selected method has a hyper-parameter 'ranks'"),
    (["targets=q/v"], "letters, digits"),
])
def test_bad_grid_is_one_clear_error(grid, message):
    with pytest.raises(ClbenchError, match=message):
        method_variants(["cl_lora"], grid, None)


def test_presets_are_the_paper_rows_with_the_csv_ids():
    table2 = preset_variants(["cl_lora.table2"])["cl_lora"]
    assert [v.name for v in table2] == ["none", "kd", "kd+gr", "bw", "kd+gr+bw"]
    assert table2[2].overrides == {"kd": "true", "grad_reassign": "true", "block_weights": "false"}
    assert table2[3].overrides == {"kd": "false", "grad_reassign": "false", "block_weights": "true"}
    table3 = preset_variants(["cl_lora.table3"])["cl_lora"]
    assert len(table3) == 20 and table3[0].name == "rank=1,targets=v"
    assert table3[-1].overrides == {"rank": "64", "targets": "q,k,v"}
    paper = paper_numbers()
    for variant, benches in [(table2, ["cifar100_t10", "cifar100_t20", "imr_t20", "imr_t40"]),
                             (table3, ["cifar100_t20", "imr_t20"])]:
        for row in variant:
            published = paper[(paper["method"] == f"cl_lora[{row.name}]") & (paper["metric"] == "avg_acc")]
            assert sorted(published["benchmark"]) == sorted(benches), row.name
    # spot checks against ../shared/specs/paper_tables.md §3 and §4
    value = paper.set_index(["method", "benchmark", "metric"])["value"]
    assert value[("cl_lora[kd+gr]", "imr_t40", "avg_acc")] == 81.25
    assert value[("cl_lora[rank=5,targets=k+v]", "imr_t20", "avg_acc")] == 84.44
    assert value[("cl_lora[rank=64,targets=q+k+v]", "cifar100_t20", "avg_acc")] == 90.64


def _snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")}


def test_dry_run_lists_the_table2_variants_and_writes_nothing(tmp_path, capsys):
    assert main(["run", "--methods", "simplecil", "--results-dir", str(tmp_path), "--max-tasks", "2",
                 "--quiet"]) == 0
    # a finished run of the same benchmark and method (not planned) that took 30 s + 10 s
    from benchmark.store.results import atomic_write_json
    done = tmp_path / "digits_t5" / "simplecil" / "seed7"
    atomic_write_json(done / "config.json", {"bench": "digits_t5", "method": "simplecil", "seed": 7})
    atomic_write_json(done / "metrics.json", {"train_seconds": 30.0, "eval_seconds": 10.0})
    before = _snapshot(tmp_path)
    capsys.readouterr()
    assert main(["run", "--grid-preset", "cl_lora.table2", "--methods", "cl_lora,simplecil", "--bench", "digits_t5",
                 "--seeds", "1993..1994", "--results-dir", str(tmp_path), "--launcher", "ray", "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    planned = [line.split() for line in lines[1:13]]
    assert [(row[1], row[2], row[3]) for row in planned if row[1] == "cl_lora"] == [
        ("cl_lora", variant, seed) for variant in ("none", "kd", "kd+gr", "bw", "kd+gr+bw")
        for seed in ("1993", "1994")]
    simplecil = [" ".join(row[5:]) for row in planned if row[1] == "simplecil"]
    assert simplecil == ["resumes after task 2 24s", "new 40s"]  # 40 s x 3/5 tasks left, 40 s
    assert lines[13:] == ["12 planned runs, 0 finished, 12 to run",
                          "estimated compute left: 1m04s for 2 runs (mean train+eval time of finished runs of the "
                          "same benchmark and method, one run at a time)",
                          "no estimate for 10 runs (no finished run of the same benchmark and method)",
                          "preflight: ok"]
    assert _snapshot(tmp_path) == before


def test_ray_launcher_without_ray_names_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    assert main(["run", "--methods", "simplecil", "--launcher", "ray", "--results-dir", str(tmp_path)]) == 2
    assert "pip install 'clbench[ray]'" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_local_launcher_never_imports_ray(tmp_path):
    code = ("import sys; from benchmark.cli import main; "
            f"code = main(['run', '--methods', 'simplecil', '--max-tasks', '1', '--quiet', '--results-dir', {str(tmp_path)!r}]); "
            "assert code == 0, code; assert 'ray' not in sys.modules, 'ray imported'")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "digits_t5" / "simplecil" / "seed1993" / "predictions" / "task0.npz").exists()


def test_variant_rows_get_the_published_number_beside_them(tmp_path, capsys):
    """`bench table --paper` on stored runs of two Table 2 variants (fabricated folders: no ImageNet-R here)."""
    from benchmark.store.results import atomic_write_json

    for variant, avg in (("kd+gr", 80.0), ("bw", 79.0)):
        run_dir = tmp_path / "imr_t40" / f"cl_lora[{variant}]" / "seed1993"
        atomic_write_json(run_dir / "config.json", {"bench": "imr_t40", "method": "cl_lora", "variant": variant,
                                                    "seed": 1993, "backbone": "vit"})
        atomic_write_json(run_dir / "status.json", {"state": "finished", "tasks_done": 40})
        atomic_write_json(run_dir / "metrics.json", {"avg_acc": avg, "last_acc": avg - 5, "forgetting_pilot": 1.0,
                                                     "accuracy_curve_rounded": [avg], "parameters": {
                                                         "trainable_task_pct": 0.3}})
    capsys.readouterr()
    assert main(["table", "--results-dir", str(tmp_path), "--format", "csv", "--paper", "--metric", "avg"]) == 0
    table = pd.read_csv(io.StringIO(capsys.readouterr().out), index_col=0)
    assert list(table.index) == ["cl_lora[bw]", "cl_lora[kd+gr]"]
    assert list(table["imr_t40 Ā"]) == [79.0, 80.0]
    assert list(table["imr_t40 Ā paper"]) == [80.48, 81.25]
