"""`fit`: the one training loop. Every model family trains through it.

How a run resumes, in one place. A family hands `fit` a few plain functions:

  train_epoch(state, epoch) -> (state, metrics)   one compiled epoch (`train.make_epoch`);
                                                   a pure function of (state, epoch); `metrics`
                                                   holds at least `EPOCH_METRICS` (make_epoch's do)
  record(params, replica, epoch, metrics) -> dict  the epoch's record fields (train and test numbers)
  final(params, replica) -> dict                   the final record's fields
  artifacts(params, replica, directory, epoch)     pictures: after each epoch, and with epoch=None at the end
  summary(record) -> str                           the progress line's numbers

and `fit` owns the rest:

* the workdir (`workdir.Workdir`): refusals, the lock, `--overwrite`, the marker,
  `config.json` (a resumed run must have the same settings, but for resumable ones);
* resume: the newest good checkpoint (`checkpoints.restore` skips damaged or
  non-finite ones, with a warning), `metrics.jsonl` cut back to its epoch, and
  training on from there; a finished run reports its final record;
* checkpoints every `checkpoint_every` epochs and after the last;
* SIGTERM / Ctrl-C / SIGHUP: the epoch finishes, a checkpoint is saved, `Interrupted`
  (exit code 128 + signal) names the resume command; during the final evaluation
  it stops at once (the model is checkpointed);
* the non-finite policy: "stop" raises `NonFiniteError` naming epoch and step (the
  diverged state is never saved), "skip" counts the skipped updates;
* `metrics.jsonl` and TensorBoard scalars (`records.Records`), the progress
  lines and the final record, written after the final pictures so that it marks
  the run complete.

Every random number is the family's function of (seed, epoch, step), so a run
resumed from a checkpoint ends bit-identical to an uninterrupted one.

An ensemble (R models in one vmapped program) passes `replicas`: one directory
each for its records and pictures, with a leading replica axis on state and metrics.
"""

import dataclasses
import json
import pathlib
import signal
import threading
import time
from typing import Any, Callable, Sequence

from absl import logging
import jax
import numpy as np

from jaxvae import checkpoints
from jaxvae import hosts
from jaxvae import records as records_lib
from jaxvae import workdir as workdir_lib
from jaxvae.errors import ConfigError, Interrupted, NonFiniteError


SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)  # SIGHUP: the terminal closed


class StopSignals:
  """While active, SIGTERM, SIGINT and SIGHUP set `self.signum` instead of killing the process, so the
  loop can finish its epoch, save a checkpoint and exit cleanly; with `raise_now` (phases
  without a safe point to stop at) they raise `Interrupted` with `message` at once."""

  def __init__(self, raise_now: bool = False, message: str = "stopped"):
    self.signum = None
    self.raise_now = raise_now
    self.message = message
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for signum in SIGNALS:
        self._previous[signum] = signal.signal(signum, self._handle)
      outer = getattr(self._previous[signal.SIGINT], "__self__", None)
      if isinstance(outer, StopSignals) and outer.signum:  # one the outer context could not raise
        self.signum = outer.signum
    try:
      self.check()
    except Interrupted:
      self.__exit__()
      raise
    return self

  def _handle(self, signum, frame):
    del frame
    self.signum = signum
    if self.raise_now:
      raise Interrupted(f"{signal.Signals(signum).name} received: {self.message}", signum)

  def check(self):
    """Raises `Interrupted` for a signal received while raising was due whose exception never
    arrived: Python prints and drops an exception raised inside a garbage-collection callback
    or a `__del__`, which a signal handler runs in whenever the signal lands there."""
    if self.raise_now and self.signum:
      raise Interrupted(f"{signal.Signals(self.signum).name} received: {self.message}", self.signum)

  def __exit__(self, *exc):
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous = {}


@dataclasses.dataclass
class Replica:
  """Where one model of a run writes its records and pictures."""

  directory: pathlib.Path
  config: dict | None = None  # written as <directory>/config.json (an ensemble's single-run equivalent)
  label: str = ""  # prefix of its progress lines

  def __post_init__(self):
    self.directory = pathlib.Path(self.directory)
    self.records = records_lib.Records(self.directory)


def _select(tree, index: int, ensemble: bool):
  return jax.tree.map(lambda a: a[index], tree) if ensemble else tree


def _steps(state) -> np.ndarray:
  """The step of every replica (one for a single run), copied to the host once."""
  return np.asarray(jax.device_get(state.step)).reshape(-1)


def fit(
    wd: workdir_lib.Workdir,
    *,
    state: Any,
    train_epoch: Callable[[Any, int], tuple[Any, dict]],
    num_epochs: int,
    record: Callable[[Any, int, int, dict], dict],
    final: Callable[[Any, int], dict],
    artifacts: Callable[[Any, int, pathlib.Path, int | None], None] | None = None,
    summary: Callable[[dict], str] = lambda r: "",
    final_summary: Callable[[dict], str] = lambda r: "done",
    is_complete: Callable[[dict], bool] = lambda r: True,
    overwrite: bool = False,
    checkpoint_every: int = 1,
    nonfinite_policy: str = "stop",
    data_fingerprint: str | None = None,
    replicas: Sequence[Replica] | None = None,
) -> list[dict]:
  """Trains `state` for `num_epochs` epochs in `wd` and evaluates it (see the module docstring).

  `state` is the initial `train.TrainState` (also the structure checkpoints are
  restored into); with `replicas`, every leaf has a leading replica axis.
  `wd.config` (the run's settings, JSON) is saved as config.json. Every check
  (settings, workdir, checkpoint) runs before anything in the workdir changes.

  Returns the final record of every replica (one for a single run).
  """
  ensemble = replicas is not None
  replicas = list(replicas) if ensemble else [Replica(wd.path)]
  writer = hosts.is_writer()
  say = lambda replica, text: print(replica.label + text, flush=True) if writer else None
  with StopSignals(raise_now=True, message="stopped before training started; nothing was lost: run the same "
                   "command") as signals:
    wd.check(overwrite)
    hosts.sync("inputs checked")  # no process changes the workdir before all have checked it
    restored = checkpoints.Restored(None, 0, [])
    if not overwrite and (wd.path / "checkpoints").is_dir():
      with checkpoints.manager(wd.path, read_only=True) as mngr:
        restored = checkpoints.restore(mngr, state, data_fingerprint=data_fingerprint)
    start_epoch = restored.epoch
    if start_epoch > num_epochs:
      raise ConfigError(f"{wd.path} holds a checkpoint of epoch {start_epoch}, past --num_epochs={num_epochs}")
    all_records = [r.records.read() for r in replicas]
    finals = [records[-1] if records and records[-1].get("final") else None for records in all_records]
    if all(f is not None and f["epoch"] == start_epoch == num_epochs and is_complete(f) for f in finals):
      for replica, f in zip(replicas, finals):
        say(replica, f"{replica.directory} is complete: {json.dumps(f)}")
      return finals
    # Only now, with the checkpoint (if any) known to fit, does anything in the workdir change.
    signals.check()
    wd.open(overwrite)
    if writer:
      workdir_lib.write_json(wd.path / "config.json", wd.config)
      _move_aside(wd.path, restored.rejected)
    kept = [[r for r in records if not r.get("final") and r["epoch"] <= start_epoch] for records in all_records]
    if writer:
      for index, (replica, records) in enumerate(zip(replicas, kept)):
        replica.directory.mkdir(parents=True, exist_ok=True)
        if ensemble:
          marker = {"kind": "replica", "format": workdir_lib.FORMAT, "index": index}
          workdir_lib.write_json(replica.directory / workdir_lib.MARKER, marker)
          workdir_lib.write_json(replica.directory / "config.json", replica.config)
        replica.records.rewrite(records)
    if restored.state is not None:
      state = restored.state
      logging.info("resumed from the checkpoint of epoch %d (step %d)", start_epoch, _steps(state)[0])
    wall_start = time.perf_counter() - (kept[0][-1].get("wall_seconds", 0.0) if kept[0] else 0.0)
    hosts.sync("workdir opened")  # every process sees the checkpoints as the writer left them

    with checkpoints.manager(wd.path) as mngr:
      def save(state, epoch):  # every process calls it: orbax coordinates them
        if mngr.latest_step() != epoch:
          checkpoints.save(mngr, state, epoch, data_fingerprint=data_fingerprint)

      signals.check()
      signals.raise_now = False  # from here on a signal stops the loop after its epoch
      for epoch in range(start_epoch + 1, num_epochs + 1):
        start = time.perf_counter()
        state, metrics = train_epoch(state, epoch)
        metrics, steps = jax.device_get(metrics), _steps(state)
        _check_metrics(metrics)
        seconds = time.perf_counter() - start
        for index, replica in enumerate(replicas):
          _check_finite(_select(metrics, index, ensemble), epoch, replica, nonfinite_policy, mngr, ensemble)
        for index, replica in enumerate(replicas):
          params, replica_metrics = _select((state.params, metrics), index, ensemble)
          rec = {"epoch": epoch, "step": int(steps[index]),
                 **record(params, index, epoch, replica_metrics),
                 "images_per_sec": int(replica_metrics["num_images"]) / seconds, "epoch_seconds": seconds,
                 "wall_seconds": time.perf_counter() - wall_start,
                 "nonfinite_steps": int(replica_metrics["nonfinite_steps"])}
          say(replica, f"epoch {epoch:4d}/{num_epochs}  {summary(rec)}  {rec['images_per_sec']:8,.0f} images/s")
          if writer:
            replica.records.append(rec)
            if artifacts is not None:
              artifacts(jax.device_get(params), index, replica.directory, epoch)
        if epoch % checkpoint_every == 0 or epoch == num_epochs:
          save(state, epoch)
        signum = hosts.any_process(signals.signum or 0)
        if signum:
          save(state, epoch)
          raise Interrupted(f"{signal.Signals(signum).name} received: stopped after epoch {epoch} with a "
                            f"checkpoint in {wd.path / 'checkpoints'}; run the same command to resume", signum)
      save(state, num_epochs)

    signals.raise_now = True
    signals.message = "during the final evaluation; the trained model is checkpointed: run the same command to evaluate it"
    if signals.signum:  # arrived after the last epoch's check
      raise Interrupted(f"{signal.Signals(signals.signum).name} received: stopped after the last epoch with a "
                        f"checkpoint in {wd.path / 'checkpoints'}; run the same command to evaluate it", signals.signum)
    finals, steps = [], _steps(state)
    for index, replica in enumerate(replicas):
      params = _select(state.params, index, ensemble)
      rec = {"final": True, "epoch": num_epochs, "step": int(steps[index]), **final(params, index),
             "wall_seconds": time.perf_counter() - wall_start}
      if writer:  # pictures first: the final record marks the run complete
        if artifacts is not None:
          artifacts(jax.device_get(params), index, replica.directory, None)
        replica.records.append(rec)
        replica.records.close()
      say(replica, f"final: {final_summary(rec)}; artifacts in {replica.directory}")
      finals.append(rec)
    return finals


# What `fit` reads of every epoch's metrics: images trained on, updates skipped as non-finite, the
# first such step (-1 when none); `train.make_epoch` returns them beside the loss's own.
EPOCH_METRICS = ("num_images", "nonfinite_steps", "first_nonfinite_step")


def _check_metrics(metrics) -> None:
  missing = [name for name in EPOCH_METRICS if not isinstance(metrics, dict) or name not in metrics]
  if missing:
    raise ConfigError(f"train_epoch's metrics lack {', '.join(missing)}: fit reads them every epoch; build the "
                      "epoch with jaxvae.make_epoch, or return them beside your loss's metrics")


def _check_finite(metrics: dict, epoch: int, replica: Replica, policy: str, mngr, ensemble: bool) -> None:
  if not metrics["nonfinite_steps"]:
    return
  step = int(metrics["first_nonfinite_step"])
  where = f"epoch {epoch} at step {step}" + (f" of the replica in {replica.directory}" if ensemble else "")
  if policy == "stop":
    last = mngr.latest_step()
    kept = f"the last good checkpoint is epoch {last}" if last is not None else "no checkpoint was written yet"
    raise NonFiniteError(f"non-finite loss or gradient in {where}: training stopped; {kept}; "
                         "lower --learning_rate, or pass --nonfinite_policy=skip to skip such updates")
  logging.warning("%s: skipped %d non-finite updates (the first at step %d)", where, int(metrics["nonfinite_steps"]),
                  step)


def _move_aside(directory: pathlib.Path, epochs: Sequence[int]) -> None:
  """Moves checkpoints that `checkpoints.restore` skipped to rejected_checkpoints/, so that
  training can write those epochs again and nothing is deleted."""
  for epoch in epochs:
    source = directory / "checkpoints" / str(epoch)
    if source.exists():
      target = directory / "rejected_checkpoints" / f"{epoch}.{time.strftime('%Y%m%dT%H%M%S')}"
      target.parent.mkdir(exist_ok=True)
      source.rename(target)
      logging.warning("moved the unusable checkpoint %s to %s", source, target)
