"""Errors a user can act on. `benchmarks.run` prints them as one line, no traceback."""


class PartBenchError(Exception):
    """Base class: the message says what was expected and where."""


class ConfigError(PartBenchError):
    """Unknown method/task/preset name, or an invalid config value."""


class DataError(PartBenchError):
    """Missing data root, wrong on-disk layout, or a corrupt file."""


class TrainingError(PartBenchError):
    """Training diverged (NaN/inf loss) or could not continue. ``step``: the training
    iteration (1-based) the error is about, when it is not the one the loop is at
    (a loss read some iterations after it was computed); the failed record names it."""

    def __init__(self, message: str, step: int | None = None):
        super().__init__(message)
        self.step = step
