"""Reporting: metrics computed from stored predictions, and what people read: tables (Markdown, CSV, LaTeX) and
figures.

A new report or metric goes here. May import: ``benchmark.store`` (it reads stored runs) and the shared top.
"""
