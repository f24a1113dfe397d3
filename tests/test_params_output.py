"""``bench params --bench digits_t5`` printed exactly as recorded: every method's counts, checkpoint sizes and the
note that explains them. A change here is a change users see: check the diff, then record the new output with
``bench params --bench digits_t5 > tests/data/params_digits_t5.txt``."""
from pathlib import Path

from benchmark.cli import main

RECORDED = Path(__file__).parent / "data" / "params_digits_t5.txt"


def test_params_table_of_every_method_is_the_recorded_one(capsys):
    assert main(["params", "--bench", "digits_t5"]) == 0
    printed = capsys.readouterr().out.splitlines()
    recorded = RECORDED.read_text().splitlines()
    for line, (got, expected) in enumerate(zip(printed, recorded), start=1):
        assert got == expected, f"line {line} differs"
    assert len(printed) == len(recorded)
