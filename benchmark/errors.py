"""User-facing errors: the CLI prints their message and exits non-zero, without a traceback."""


class ClbenchError(Exception):
    """An error caused by input the user can fix (name, option, file, data); the message says how."""


class DataError(ClbenchError):
    """A dataset is missing, incomplete or corrupt."""


class WeightsError(ClbenchError):
    """Pretrained weights are not available offline."""


class TrainingDiverged(ClbenchError):
    """A loss became NaN or infinite during training."""
