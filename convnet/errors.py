"""Errors that the entry points report as one clear line instead of a traceback."""


class ConvnetError(Exception):
  """Base class: a problem the user can fix from the message alone."""


class ConfigError(ConvnetError, ValueError):
  """A config value that cannot work; the message names the field and its value."""


class DataError(ConvnetError):
  """Data that cannot be read or used; the message names the file or dataset."""


class CheckpointError(ConvnetError):
  """A checkpoint or workdir that cannot be resumed; the message says how to start fresh."""
