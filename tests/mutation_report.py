"""Kill rate per module from mutmut's results (``make mutants`` prints it after ``mutmut run``).

Reads the ``mutants/<module>.meta`` files that mutmut writes and maps exit codes with mutmut's own table.
A mutant counts as tested when a test ran against it (killed, timeout, survived, suspicious, segfault) or when
no test covers it ("no tests": a gap, counted as not killed); skipped and unchecked mutants are left out.
"""
from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

from mutmut.stats import status_by_exit_code

KILLED = {"killed", "timeout", "segfault", "caught by type check"}
UNTESTED = {"skipped", "not checked", "check was interrupted by user"}


def module_counts(mutants_dir: Path = Path("mutants"), only: set[str] | None = None) -> dict[str, Counter]:
    """Status counts per mutated source file (of the mutants named in ``only``, when given)."""
    counts: dict[str, Counter] = {}
    for meta in sorted(mutants_dir.rglob("*.py.meta")):
        exit_codes = json.loads(meta.read_text())["exit_code_by_key"]
        if only is not None:
            exit_codes = {name: code for name, code in exit_codes.items() if name in only}
        if exit_codes:
            module = str(meta.relative_to(mutants_dir))[: -len(".meta")]
            counts[module] = Counter(status_by_exit_code[code] for code in exit_codes.values())
    return counts


def main() -> int:
    """Print one line per module: killed / tested, the rate, and the survivors' count; with ``--sample``, over
    the mutants of ``tests/mutation_sample.py``'s last sample only."""
    only = None
    if "--sample" in sys.argv[1:]:
        sample_file = Path("mutants/sample.txt")
        if not sample_file.exists():
            print("no sample under mutants/; run `make mutants SAMPLE=N` first")
            return 1
        only = set(sample_file.read_text().split())
    counts = module_counts(only=only)
    if not counts:
        print("no mutmut results under mutants/; run `make mutants` first")
        return 1
    print(f"{'module':<34} {'killed':>7} {'tested':>7} {'rate':>7} {'survived':>9} {'no tests':>9}")
    for module, status in counts.items():
        tested = sum(n for s, n in status.items() if s not in UNTESTED)
        killed = sum(status[s] for s in KILLED)
        rate = f"{100 * killed / tested:.1f}%" if tested else "-"
        print(f"{module:<34} {killed:>7} {tested:>7} {rate:>7} {status['survived']:>9} {status['no tests']:>9}")
    print("survivors: `mutmut results`; one mutant's diff: `mutmut show <name>`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
