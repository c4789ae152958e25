"""The processes of a multi-process run (`jax.distributed`): who writes, and meeting points."""

import jax
from jax.experimental import multihost_utils
import numpy as np


def is_writer() -> bool:
  """Whether this process writes the run's files (process 0 of a multi-process run)."""
  return jax.process_index() == 0


def sync(name: str) -> None:
  """Waits until every process reaches this point (no-op with one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def any_process(value: int) -> int:
  """The largest `value` over all processes (so that all take the same branch)."""
  if jax.process_count() == 1:
    return value
  return int(np.max(multihost_utils.process_allgather(np.int32(value))))
