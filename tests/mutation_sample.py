"""A seeded random sample of mutmut's mutants, the same number from each module (``make mutants SAMPLE=N``).

The full run has about 5,000 mutants (about 8 hours on 2 cores); a sample of N mutants per module estimates
each module's kill rate in a fraction of that. ``mutmut run`` has no option to only generate mutants, so
``--generate`` runs it with a filter that matches no mutant: mutmut generates every mutant and collects which
tests cover which function, then stops on the empty filter (its error is expected and not shown).

Then ``python tests/mutation_sample.py N [--seed S]`` writes the sample to ``mutants/sample.txt`` and prints
it, one name per line, for ``mutmut run``; ``tests/mutation_report.py --sample`` reports over it.
"""
from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
from pathlib import Path

MUTANTS = Path("mutants")
SAMPLE_FILE = MUTANTS / "sample.txt"
NO_MUTANT = "generate-only-no-such-mutant"


def mutant_names_by_module(mutants_dir: Path = MUTANTS) -> dict[str, list[str]]:
    """Every generated mutant's name, per mutated source file (from mutmut's ``.meta`` files)."""
    names = {}
    for meta in sorted(mutants_dir.rglob("*.py.meta")):
        keys = sorted(json.loads(meta.read_text())["exit_code_by_key"])
        if keys:
            names[str(meta.relative_to(mutants_dir))[: -len(".meta")]] = keys
    return names


def sample(names_by_module: dict[str, list[str]], per_module: int, seed: int) -> list[str]:
    """``per_module`` names drawn without replacement from each module (all of a smaller module's)."""
    rng = random.Random(seed)
    chosen = []
    for module, names in sorted(names_by_module.items()):
        chosen += sorted(rng.sample(names, min(per_module, len(names))))
    return chosen


def generate(max_children: int) -> int:
    """Let mutmut generate the mutants and collect test coverage; 0 when the mutants exist afterwards."""
    result = subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children", str(max_children), NO_MUTANT],
                            capture_output=True, text=True)
    if mutant_names_by_module():
        return 0
    sys.stderr.write(result.stdout[-4000:] + result.stderr[-4000:])
    return result.returncode or 1


def main() -> int:
    """Generate (``--generate``) or draw and print a sample."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("per_module", nargs="?", type=int, help="mutants drawn from each module")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--generate", action="store_true", help="only generate mutants and collect coverage")
    parser.add_argument("--max-children", type=int, default=2)
    args = parser.parse_args()
    if args.generate:
        return generate(args.max_children)
    names = mutant_names_by_module()
    if not names or args.per_module is None:
        sys.stderr.write("no mutants under mutants/ (run with --generate first) or no sample size given\n")
        return 1
    chosen = sample(names, args.per_module, args.seed)
    SAMPLE_FILE.write_text("\n".join(chosen) + "\n")
    print("\n".join(chosen))
    return 0


if __name__ == "__main__":
    sys.exit(main())
