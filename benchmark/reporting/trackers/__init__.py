"""Experiment trackers (``bench run --log-to tensorboard|mlflow|wandb``): one module per tracker, driven by
:class:`~benchmark.reporting.trackers.hub.Trackers`, which guards every call so that a tracker never changes or
loses a result. Each tracker's library is imported only when that tracker is used (extras ``clbench[NAME]``)."""
from benchmark.reporting.trackers.base import TrackerSettings
from benchmark.reporting.trackers.hub import TRACKERS, Trackers, missing_packages, tracker_settings

__all__ = ["TRACKERS", "TrackerSettings", "Trackers", "missing_packages", "tracker_settings"]
