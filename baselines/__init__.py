"""Every other method of the comparison, one file each; importing the package registers them all
(the ``clbench.methods`` entry point ``baselines``), so a new baseline is one new file here."""
from benchmark.registry import import_submodules

import_submodules(__name__)
