"""The errors jaxvae raises for bad input; an entry point turns each into one `error:` line."""


class Error(Exception):
  """Base of every error that is the input's fault, not a bug (see `jaxvae.cli`)."""


class ConfigError(Error, ValueError):
  """A setting is out of range, or conflicts with the run already in the workdir."""


class DataError(Error, ValueError):
  """A data source is missing, corrupted or holds invalid values."""


class CheckpointError(Error, ValueError):
  """A checkpoint is missing, corrupted or does not fit the model."""


class WorkdirError(Error, ValueError):
  """A directory is not one this run may use: foreign, of another kind, or in use."""


class NonFiniteError(Error, RuntimeError):
  """Training produced a non-finite loss or gradient (with nonfinite_policy "stop")."""


class Interrupted(BaseException):
  """SIGTERM or SIGINT arrived; the run saved a checkpoint and stopped. A BaseException, like
  KeyboardInterrupt, so that no `except Exception` on the way swallows it."""

  def __init__(self, message: str, signum: int):
    super().__init__(message)
    self.exit_code = 128 + signum
