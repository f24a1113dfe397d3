"""Runs: a command's runs planned (methods x benchmarks x seeds x grid variants), resolved, checked before any
trains (preflight), launched (in process or on Ray) and executed task by task (the runner), with evaluation,
live progress and speed measurement.

A new launcher goes here. May import: every lower layer (methods and baselines, learners, models, data, store,
reporting, the shared top); never the CLI.
"""
