"""The result store: one folder per (benchmark, method[variant], seed) with atomic files, integrity checks of
what is read back, one lock per run folder, and the provenance (versions, git commit) saved beside results.

May import: the shared top only.
"""
