"""TensorBoard: event files in ``<run>/tensorboard/`` (``tensorboard --logdir results``). A resumed run appends
to the same folder, its steps continuing; a run that starts over replaces it."""
from __future__ import annotations

import json
import shutil

from benchmark.reporting.trackers.base import Tracker, TrackerContext, scalars

FOLDER = "tensorboard"


def _json_text(payload: dict) -> str:
    """JSON as a Markdown code block (TensorBoard's text tab renders Markdown)."""
    return "```\n" + json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n```"


class TensorBoardTracker(Tracker):
    """Writes scalars and texts with torch's :class:`~torch.utils.tensorboard.SummaryWriter`."""

    name = "tensorboard"

    def start(self, context: TrackerContext, config: dict, parameters: dict, resume_id: str | None) -> str | None:
        from torch.utils.tensorboard import SummaryWriter

        logdir = context.run_dir / FOLDER
        if context.first_task == 0 and logdir.exists():
            shutil.rmtree(logdir)  # events of an earlier attempt that restarted from task 1
        new = not logdir.exists()
        self.writer = SummaryWriter(log_dir=str(logdir))
        if new:
            self.writer.add_text("config", _json_text(config), 0)
            self.writer.add_text("parameters", _json_text(parameters), 0)
            for key, value in scalars(parameters).items():
                self.writer.add_scalar(f"parameters/{key}", value, 0)
        self.writer.flush()
        return None

    def log_task(self, task: int, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, task)
        self.writer.flush()

    def log_epoch(self, step: int, loss: float) -> None:
        self.writer.add_scalar("train/loss", loss, step)

    def finish(self, state: str, metrics: dict | None) -> None:
        if metrics is not None:
            for key, value in scalars(metrics).items():
                self.writer.add_scalar(f"final/{key}", value, 0)
            self.writer.add_text("metrics", _json_text(metrics), 0)
        self.writer.close()
