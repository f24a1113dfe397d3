"""CL-LoRA, the method this project is built around; importing the package registers it (``clbench.methods``)."""
from benchmark.registry import import_submodules

import_submodules(__name__)
