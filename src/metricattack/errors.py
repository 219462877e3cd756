"""User-facing errors.

Every problem a user can cause (bad path, bad config value, wrong layout, ...) raises
:class:`MetricAttackError` with one message that names the culprit and says what was
expected. The CLI prints that message and exits with status 2, without a traceback.
Conditions worth knowing that do not stop the work are :class:`MetricAttackWarning` s, which
the CLI prints as one line each.
"""


class MetricAttackError(Exception):
    """An error caused by input the user gave (files, options, configs)."""


class DatasetError(MetricAttackError):
    """A dataset folder, file name or image that does not match what was expected."""


class ConfigError(MetricAttackError):
    """A configuration file or option with an invalid value."""


class CheckpointError(MetricAttackError):
    """A checkpoint that is missing, unreadable or does not match the config."""


class WriteError(MetricAttackError):
    """An output that could not be written for want of space (disk full, quota): nothing half-written is kept."""


class MetricAttackWarning(UserWarning):
    """Input that is usable but unusual (e.g. a dataset with non-official counts)."""
