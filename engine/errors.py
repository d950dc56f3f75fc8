"""Errors a user can act on. `benchmarks.run` prints them as one line, no traceback."""


class PartBenchError(Exception):
    """Base class: the message says what was expected and where."""


class ConfigError(PartBenchError):
    """Unknown method/task/preset name, or an invalid config value."""


class DataError(PartBenchError):
    """Missing data root, wrong on-disk layout, or a corrupt file."""


class TrainingError(PartBenchError):
    """Training diverged (NaN/inf loss) or could not continue."""
