"""Data: the datasets a stream is built from, the streams themselves (class order, tasks, transforms, built with
avalanche-lib), the image check, and the data-path measurement.

A new dataset goes in ``datasets/`` (one file, registered with ``register_dataset``) or is declared by a plugin
through the ``clbench.datasets`` entry point; a user declares one without code in
``<data-root>/<name>.clbench.toml`` (``datasets/declared.py``). ``check`` and ``prepare`` are what
``bench data check|prepare`` run. May import: the shared top (``benchmark.errors``, ``benchmark.registry``, ...) only.
"""
