"""``python -m benchmark.cli``: the ``bench`` command."""
import sys

from benchmark.cli import main

sys.exit(main())
