"""A run's records: `metrics.jsonl` (one JSON object per line) and TensorBoard event files.

`metrics.jsonl` is the record of truth: one object per epoch, then one with
`"final": true`. Every numeric field is also written as a TensorBoard scalar
(tensorboardX's event writer, no TensorFlow; where tensorboardX is not installed,
a warning says the run has no event file) into the same directory, so
`tensorboard --logdir runs/` shows the training curves; a resumed run starts its
event file with a purge of the epochs after its checkpoint, so TensorBoard shows
each epoch once.
"""

import json
import math
import os
import pathlib

from absl import logging

from jaxvae import workdir as workdir_lib
from jaxvae.errors import Error

METRICS = "metrics.jsonl"
MAX_METRICS_BYTES = 1 << 30  # about a million epochs' records


def read_metrics(path) -> list[dict]:
  """The records of a metrics.jsonl (none when there is no file). A line that is not a complete
  JSON object (cut off by a kill, not UTF-8, nested too deeply, or not an object) is dropped
  with a warning; a path that is not a regular file, or a file over 1 GiB, is a `WorkdirError`."""
  path = pathlib.Path(path)
  if not os.path.lexists(path):
    return []
  records = []
  for number, line in enumerate(workdir_lib.read_bytes(path, "metrics file", MAX_METRICS_BYTES).splitlines(), 1):
    try:
      record = workdir_lib.parse_json(line, f"{path}:{number}", "record")
    except Error:
      record = None
    if isinstance(record, dict) and isinstance(record.get("epoch"), int):
      records.append(record)
    else:
      logging.warning("%s:%d is not a complete record; dropped", path, number)
  return records


def write_metrics(path, records: list[dict]) -> None:
  """Replaces metrics.jsonl atomically (temporary file, then rename)."""
  tmp = pathlib.Path(f"{path}.tmp")
  tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
  os.replace(tmp, path)


def append_metrics(path, record: dict) -> None:
  with open(path, "a") as f:
    f.write(json.dumps(record) + "\n")


class Records:
  """The records of one model in `directory`: metrics.jsonl and its TensorBoard scalars."""

  def __init__(self, directory):
    self.directory = pathlib.Path(directory)
    self.path = self.directory / METRICS
    self._writer = None
    self._purge_step = None

  def read(self) -> list[dict]:
    return read_metrics(self.path)

  def rewrite(self, records: list[dict]) -> None:
    """Replaces the records by `records` (those of a resumed run's restored epochs); TensorBoard
    is told to drop the scalars of later epochs that earlier event files hold."""
    write_metrics(self.path, records)
    self._purge_step = max([r["epoch"] for r in records], default=0) + 1

  def append(self, record: dict) -> None:
    """Appends `record`; its numbers become TensorBoard scalars at step `epoch` (the final
    record's under `final/`)."""
    append_metrics(self.path, record)
    if self._writer is None:
      try:
        from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      except ImportError:  # metrics.jsonl, the record of truth, is complete without it
        logging.warning("tensorboardX is not installed: %s gets no TensorBoard event file", self.directory)
        self._writer = False
      else:
        self._writer = SummaryWriter(logdir=str(self.directory), flush_secs=30, purge_step=self._purge_step)
    if not self._writer:
      return
    prefix = "final/" if record.get("final") else ""
    for name, value in record.items():
      if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and name != "epoch":
        self._writer.add_scalar(prefix + name, value, record["epoch"])
    self._writer.flush()

  def close(self) -> None:
    if self._writer:
      self._writer.close()
    self._writer = None
