"""clbench: a harness for rehearsal-free class-incremental learning on pretrained Vision Transformers.

Layers, lowest first (imports point down only; ``tests/test_architecture.py`` checks it):

- the shared top, used by every layer: ``method`` (the one method interface), ``registry``, ``config``,
  ``errors``, ``training`` (the epoch loop), ``precision`` (autocast), ``checkpoints`` (lean method state);
- ``store`` (result folders, integrity, locks, provenance) and ``data`` (datasets, streams, transforms);
- ``models`` (backbones, heads, classifiers, ``peft``) and ``reporting`` (metrics, tables, figures);
- ``learners`` (method-family skeletons), then the methods themselves in the top-level packages ``methods``
  (CL-LoRA) and ``baselines`` (every other method);
- ``runs`` (plan, preflight, launchers, runner, evaluation);
- ``cli`` (one module per ``bench`` command) and ``testing`` (the conformance kit for method authors).
"""
