"""Errors that the entry points report as one clear line instead of a traceback."""


class ConvnetError(Exception):
  """Base class: a problem the user can fix from the message alone."""


class ConfigError(ConvnetError, ValueError):
  """A config value that cannot work; the message names the field and its value."""


class DataError(ConvnetError):
  """Data that cannot be read or used; the message names the file or dataset."""


class CheckpointError(ConvnetError):
  """A checkpoint or workdir that cannot be resumed; the message says how to start fresh."""


class NoCheckpointsError(CheckpointError):
  """A run folder holds no checkpoints at all (never trained, or they were removed)."""


class FileFormatError(ConvnetError):
  """A file the project reads that is not what it should be: its kind, size, syntax or fields.

  The message names the file (and the field or line) and what was found.
  """


class ExportError(ConvnetError):
  """A model that an export format cannot hold, or an export that disagrees with JAX."""


class DivergedError(ConvnetError):
  """The loss or the parameters stopped being finite; the last good checkpoint is kept."""


class WorkdirError(ConvnetError):
  """A folder or file that cannot be made or written: a file in the way, no space, no permission."""


class WorkdirReadOnlyError(WorkdirError):
  """A workdir that cannot be written at all; a finished run there can still report."""


class WorkdirInUseError(ConvnetError):
  """Another live process is writing to the same workdir."""


class RunInterrupted(ConvnetError):
  """A stop request (SIGTERM, SIGINT, SIGHUP, SIGUSR1) stopped the run; a checkpoint was saved."""

  def __init__(self, message: str, signum: int):
    super().__init__(message)
    self.signum = signum
