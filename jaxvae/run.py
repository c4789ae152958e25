"""One complete run in a workdir: data, compiled training, evaluation, artifacts.

`train_and_evaluate(config, workdir)` writes into `workdir`:
  config.json          the `Config` of the run
  metrics.jsonl        one JSON record per epoch, then one with `"final": true`
  samples.png          8x8 Bernoulli means of decoded z ~ N(0, I) (fixed z)
  reconstructions.png  rows of 8 test images and, below each, their reconstructions
  latent.png           the test set's latent means coloured by digit (PCA when L > 2)
  interpolations.png   linear and spherical paths between pairs of test digits
  manifold.png, manifold_linear.png   (L = 2) decoded grids of z at Gaussian quantiles, on [-3, 3]
  images/epoch_NNN_{samples,reconstructions}.png   the same grids after every epoch
  checkpoints/<epoch>/ orbax checkpoints (newest two kept)
Re-running with the same config resumes from the newest checkpoint; a config
that changes the trained model is refused unless `overwrite=True`.

An ensemble (`num_replicas` R > 1) trains R models with seeds seed, ..., seed+R-1
in one compiled program. `workdir` then holds config.json and the checkpoints of
all replicas, and each replica writes its own `seed=<s>/` directory with the
files above (config.json there is the single run the replica is equivalent to).

Every batch is split over all devices (`train.data_mesh`), across processes too
after `jax.distributed.initialize`; process 0 writes the files.
"""

import dataclasses
import functools
import json
import os
import pathlib
import shutil
import signal
import threading
import time
from typing import Any

from absl import logging
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np

from jaxvae import checkpoints
from jaxvae import config as config_lib
from jaxvae import data as data_lib
from jaxvae import evaluate
from jaxvae import latent
from jaxvae import models
from jaxvae import objectives
from jaxvae import plots
from jaxvae import train

class NonFiniteError(RuntimeError):
  """Training produced a non-finite loss or gradient (with nonfinite_policy "stop")."""


class Interrupted(Exception):
  """SIGTERM or SIGINT arrived; the run saved a checkpoint and stopped."""

  def __init__(self, message: str, signum: int):
    super().__init__(message)
    self.exit_code = 128 + signum


class StopSignals:
  """While active, SIGTERM and SIGINT set `self.signum` instead of killing the process,
  so the training loop can finish its epoch, save a checkpoint and exit cleanly."""

  def __init__(self):
    self.signum = None
    self.raise_now = False  # set for phases without a safe point to stop at (the final evaluation)
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for signum in (signal.SIGTERM, signal.SIGINT):
        self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    self.signum = signum
    if self.raise_now:
      raise Interrupted(f"{signal.Signals(signum).name} received during the final evaluation; the trained model "
                        "is checkpointed: run the same command to evaluate it", signum)

  def __exit__(self, *exc):
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)


LATENT_PICTURES = ("latent.png", "interpolations.png", "manifold.png", "manifold_linear.png")
ARTIFACTS = ("checkpoints", "images", "metrics.jsonl", "samples.png", "reconstructions.png", "config.json",
             *LATENT_PICTURES)
NUM_GRID = 64
NUM_PATH = 10  # decoded points along each interpolation path
NUM_MANIFOLD = 20  # the manifold pictures are NUM_MANIFOLD x NUM_MANIFOLD decoded z


def is_writer() -> bool:
  """Whether this process writes the run's files (process 0 of a multi-process run)."""
  return jax.process_index() == 0


def _sync(name: str) -> None:
  """Waits until every process reaches this point (no-op with one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def _any_process(value: int) -> int:
  """The largest `value` over all processes (so that all take the same branch)."""
  if jax.process_count() == 1:
    return value
  return int(np.max(multihost_utils.process_allgather(np.int32(value))))


def quiet_library_logs() -> None:
  """Drops INFO records of libraries (orbax logs every checkpoint step) from absl's handler."""
  import logging as std_logging  # pylint: disable=g-import-not-at-top

  own = (str(pathlib.Path(__file__).parent), "experiments")

  def keep(record):
    return record.levelno >= std_logging.WARNING or any(part in record.pathname for part in own)

  logging.get_absl_handler().addFilter(keep)


def read_metrics(path) -> list[dict]:
  """The records of a metrics.jsonl; a line cut off by a kill is dropped with a warning."""
  path = pathlib.Path(path)
  if not path.is_file():
    return []
  records = []
  for number, line in enumerate(path.read_text().splitlines(), 1):
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError:
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


def check_workdir(config: config_lib.Config, workdir: pathlib.Path, overwrite: bool) -> None:
  """Refuses a workdir that holds something else. Changes nothing."""
  if workdir.exists() and not workdir.is_dir():
    raise config_lib.ConfigError(f"workdir {workdir} exists and is not a directory")
  config_path = workdir / "config.json"
  if config_lib.replica_of(workdir) is not None:
    raise config_lib.ConfigError(f"{workdir} is one replica of the ensemble in {workdir.parent}; run the "
                                 "ensemble's command there, or use another --workdir")
  if overwrite:
    return
  if config_path.exists():
    saved = config_lib.Config.from_json_file(config_path)
    changed = [f"{f.name}: {getattr(saved, f.name)!r} -> {getattr(config, f.name)!r}"
               for f in dataclasses.fields(config)
               if f.name not in config_lib.RESUMABLE_FIELDS and getattr(saved, f.name) != getattr(config, f.name)]
    if changed:
      raise config_lib.ConfigError(
          f"{workdir} holds a run with other settings ({'; '.join(changed)}); "
          "use another --workdir, or --overwrite to replace that run")
  elif workdir.exists() and any(workdir.iterdir()):
    raise config_lib.ConfigError(f"{workdir} is not empty and holds no jaxvae run; use another --workdir")


def check_study_dir(outdir: pathlib.Path, kind: str, marker: str = "results.json",
                    flag: str = "--outdir") -> pathlib.Path:
  """Refuses an output directory that is a file, a training run's workdir, or a non-empty
  directory without `marker` (the file an earlier `kind` writes, whose outputs a new one
  then replaces). Errors name the directory as `flag`=outdir. Changes nothing; returns `outdir`."""
  name = f"{flag}={outdir}"
  if outdir.exists() and not outdir.is_dir():
    raise config_lib.ConfigError(f"{name} exists and is not a directory")
  if (outdir / "config.json").exists():
    raise config_lib.ConfigError(f"{name} holds a training run; use another directory")
  if outdir.is_dir() and any(outdir.iterdir()) and not (outdir / marker).is_file():
    raise config_lib.ConfigError(f"{name} is not empty and holds no {kind}; use another directory")
  return outdir


def replica_dir(config: config_lib.Config, workdir: pathlib.Path, index: int) -> pathlib.Path:
  """Where replica `index` writes its metrics and pictures: `workdir` itself for a single run."""
  return workdir if config.num_replicas == 1 else workdir / f"seed={config.seeds[index]}"


def remove_artifacts(workdir: pathlib.Path) -> None:
  """Deletes what a previous run wrote into `workdir` (for --overwrite); leaves other files."""
  replicas = [d for d in workdir.glob("seed=*") if (d / "config.json").is_file()]
  for target in [workdir / name for name in ARTIFACTS] + replicas:
    if target.is_dir():
      shutil.rmtree(target)
    elif target.exists():
      target.unlink()


@functools.partial(jax.jit, static_argnums=0)
def _grid_images(model, params, z_NxL, x_MxD):
  """Bernoulli means of decoded z and of the reconstructions (posterior means) of x."""
  vae = model.bind(params)
  return jax.nn.sigmoid(vae.decode(z_NxL)), jax.nn.sigmoid(vae.decode(vae.encode(x_MxD)[0]))


def write_grids(model, params, z_NxL, test_x_NxD, directory: pathlib.Path, prefix: str = "") -> None:
  """Prior samples (fixed z) and test reconstructions (posterior means) as PNG grids."""
  originals = test_x_NxD[: NUM_GRID // 2]
  samples, recons = _grid_images(model, params, z_NxL, originals)
  pairs = np.stack([np.asarray(originals).reshape(-1, 8, originals.shape[-1]),
                    np.asarray(recons).reshape(-1, 8, originals.shape[-1])], axis=1)
  plots.save_image_grid(directory / f"{prefix}samples.png", samples, num_cols=8)
  plots.save_image_grid(directory / f"{prefix}reconstructions.png", pairs.reshape(-1, originals.shape[-1]), num_cols=8)


@functools.partial(jax.jit, static_argnums=0)
def _latent_picture_arrays(model, params, x_NxD, starts_P, ends_P):
  """Latent means [N, L], decoded paths [methods, P, NUM_PATH, D], manifold grids [spacings, M*M, D] (L = 2)."""
  z_NxL = evaluate.latent_means(model, params, x_NxD)
  paths = jnp.stack([jax.vmap(lambda a, b, m=m: latent.interpolate(a, b, NUM_PATH, m))(z_NxL[starts_P], z_NxL[ends_P])
                     for m in latent.INTERPOLATIONS])
  grids = None
  if model.latent_dim == 2:
    grids = jnp.stack([latent.manifold_grid(NUM_MANIFOLD, spacing) for spacing in latent.GRID_SPACINGS])
    grids = latent.decode_means(model, params, grids)
  return z_NxL, latent.decode_means(model, params, paths), grids


def write_latent_pictures(model, params, test_x_NxD, test_labels_N, directory: pathlib.Path, title: str) -> None:
  """latent.png, interpolations.png and (for a 2-D latent space) manifold*.png; see the module docstring."""
  test_x_NxD = np.asarray(test_x_NxD)
  starts, ends = interpolation_pairs(test_labels_N)
  z_NxL, paths_MxPxTxD, grids = jax.device_get(_latent_picture_arrays(model, params, test_x_NxD, starts, ends))
  two_d = z_NxL.shape[1] == 2
  plots.save_latent_scatter(directory / "latent.png", [latent_scatter_panel(title, z_NxL, test_labels_N)],
                            ("z1", "z2") if two_d else ("PC 1", "PC 2"))
  cells = []  # per pair: a row for the linear path, one for the spherical, between the two originals
  for p, (start, end) in enumerate(zip(starts, ends)):
    for paths_PxTxD in paths_MxPxTxD:
      cells += [test_x_NxD[start], *paths_PxTxD[p], test_x_NxD[end]]
  plots.save_image_grid(directory / "interpolations.png", np.asarray(cells), num_cols=NUM_PATH + 2)
  if two_d:
    for name, grid in zip(("manifold.png", "manifold_linear.png"), grids):
      plots.save_image_grid(directory / name, grid, num_cols=NUM_MANIFOLD, scale=1)


def latent_scatter_panel(title: str, z_NxL, labels_N) -> tuple[str, np.ndarray, np.ndarray]:
  """A `plots.save_latent_scatter` panel of latent means: themselves when 2-D, else their 2-D PCA."""
  if z_NxL.shape[1] == 2:
    return f"{title}: test set latent means", z_NxL, labels_N
  return f"{title}: test set latent means, 2-D PCA", np.asarray(latent.pca(z_NxL)), labels_N


def interpolation_pairs(labels_N, num_pairs: int = 6) -> tuple[np.ndarray, np.ndarray]:
  """Indices of `num_pairs` test digits and of partners with another label: the first test
  image of digit d and the first of digit (d + 5) mod 10, for d = 0, 1, ..."""
  labels_N = np.asarray(labels_N)
  first = {d: int(np.argmax(labels_N == d)) for d in np.unique(labels_N)}
  digits = sorted(first)
  pairs = [(first[d], first[digits[(i + len(digits) // 2) % len(digits)]]) for i, d in enumerate(digits)]
  starts, ends = zip(*pairs[:num_pairs])
  return np.asarray(starts), np.asarray(ends)


def test_elbo(model, params, key, test_x, objective=objectives.elbo) -> dict:
  """Test-set means of -ELBO (or -objective), KL and reconstruction term, nats per image."""
  terms = jax.tree.map(lambda a: float(jnp.mean(a)), evaluate.elbo_terms(model, params, key, test_x,
                                                                        objective=objective))
  return {"test_neg_elbo": -terms.elbo, "test_kl": terms.kl, "test_reconstruction": terms.reconstruction}


@dataclasses.dataclass
class _Replica:
  """One of the models a run trains, and where its records and pictures go."""

  config: config_lib.Config  # its single-run config (num_replicas=1)
  directory: pathlib.Path
  keys: train.KeyStreams
  grid_z: jax.Array

  @property
  def metrics_path(self) -> pathlib.Path:
    return self.directory / "metrics.jsonl"

  @property
  def label(self) -> str:
    return f"seed {self.config.seed}: "


@dataclasses.dataclass
class _Run:
  """What stays fixed while a run trains: settings, data on device, compiled epoch, checkpoints."""

  config: config_lib.Config
  workdir: pathlib.Path
  model: Any
  keys: train.KeyStreams  # for an ensemble, every stream is a [R] stack
  replicas: list[_Replica]
  train_images: jax.Array
  test_x: jax.Array  # replicated on the mesh, for the evaluations every process runs
  test_x_host: np.ndarray  # the same on the host, for the pictures process 0 draws alone
  test_labels: np.ndarray
  epoch_fn: Any
  mngr: Any
  data_fingerprint: str
  wall_start: float

  @property
  def ensemble(self) -> bool:
    return self.config.num_replicas > 1

  def select(self, tree, index: int):
    """Replica `index`'s part of a state or metrics tree."""
    return jax.tree.map(lambda a: a[index], tree) if self.ensemble else tree

  @property
  def loss_name(self) -> str:
    """What the records' `*_neg_elbo` hold: -ELBO, or for an AE the reconstruction NLL -log p(x | z)."""
    return "-ELBO" if self.config.model == "vae" else "-log p(x|z)"

  def _log(self, replica: _Replica, text: str) -> None:
    if is_writer():
      print((replica.label if self.ensemble else "") + text, flush=True)

  def train_epoch(self, state: train.TrainState, epoch: int) -> train.TrainState:
    """Runs epoch `epoch`, logs and records it, writes its grids and (when due) a checkpoint."""
    config = self.config
    start = time.perf_counter()
    state, metrics = self.epoch_fn(state, self.train_images, train.epoch_key(self.keys.data, epoch), self.keys.train)
    metrics = jax.device_get(metrics)
    seconds = time.perf_counter() - start
    for index, replica in enumerate(self.replicas):
      replica_metrics = self.select(metrics, index)
      if replica_metrics["nonfinite_steps"]:
        step = int(replica_metrics["first_nonfinite_step"])
        where = f"epoch {epoch} at step {step}" + (f" of the replica with seed {replica.config.seed}"
                                                   if self.ensemble else "")
        if config.nonfinite_policy == "stop":
          last = self.mngr.latest_step()
          kept = f"the last good checkpoint is epoch {last}" if last is not None else "no checkpoint was written yet"
          raise NonFiniteError(
              f"non-finite loss or gradient in {where}: training stopped; {kept}; "
              "lower --learning_rate, or pass --nonfinite_policy=skip to skip such updates")
        logging.warning("%s: skipped %d non-finite updates (the first at step %d)", where,
                        int(replica_metrics["nonfinite_steps"]), step)
    for index, replica in enumerate(self.replicas):
      replica_metrics, (params, step) = self.select((metrics, (state.params, state.step)), index)
      record = {
          "epoch": epoch, "step": int(step), "train_neg_elbo": float(replica_metrics["neg_elbo"]),
          "train_kl": float(replica_metrics["kl"]), "train_reconstruction": float(replica_metrics["reconstruction"]),
          **({"train_loss": float(replica_metrics["loss"]), "kl_weight": float(replica_metrics["kl_weight"])}
             if config.kl_schedule else {}),
          **test_elbo(self.model, params, replica.keys.eval, self.test_x, config.objective),
          "images_per_sec": int(replica_metrics["num_images"]) / seconds, "epoch_seconds": seconds,
          "wall_seconds": time.perf_counter() - self.wall_start,
          "nonfinite_steps": int(replica_metrics["nonfinite_steps"]),
      }
      self._log(replica, f"epoch {epoch:4d}/{config.num_epochs}  train {self.loss_name} "
                f"{record['train_neg_elbo']:8.2f}  test {self.loss_name} {record['test_neg_elbo']:8.2f}  KL {record['test_kl']:6.2f}  "
                f"{record['images_per_sec']:8,.0f} images/s")
      if is_writer():
        append_metrics(replica.metrics_path, record)
        write_grids(self.model, jax.device_get(params), replica.grid_z, self.test_x_host,
                    replica.directory / "images", f"epoch_{epoch:03d}_")
    if epoch % config.checkpoint_every == 0 or epoch == config.num_epochs:
      self.save(state, epoch)
    return state

  def save(self, state: train.TrainState, epoch: int) -> None:
    if self.mngr.latest_step() != epoch:
      checkpoints.save(self.mngr, state, epoch, data_fingerprint=self.data_fingerprint)

  def final_evaluation(self, state: train.TrainState) -> list[dict]:
    """The final record of every replica (test ELBO, IWAE NLL), written and returned."""
    config = self.config
    finals = []
    for index, replica in enumerate(self.replicas):
      params, step = self.select((state.params, state.step), index)
      final = {"final": True, "epoch": config.num_epochs, "step": int(step),
               **test_elbo(self.model, params, replica.keys.eval, self.test_x, config.objective),
               "active_units": evaluate.active_units(self.model, params, self.test_x)}
      if config.stochastic_layers == 2:
        final["h1_active_units"] = evaluate.h1_active_units(self.model, params, self.test_x)
      if config.iwae_samples:
        start = time.perf_counter()
        bounds = evaluate.iwae_bounds(self.model, params, replica.keys.eval, self.test_x,
                                      config.iwae_samples, config.eval_batch_size, config.iwae_chunk_size)
        final.update(iwae_nll=float(-bounds.mean()), iwae_nll_stderr=float(bounds.std(ddof=1) / np.sqrt(len(bounds))),
                     iwae_samples=config.iwae_samples, iwae_seconds=time.perf_counter() - start)
      final["wall_seconds"] = time.perf_counter() - self.wall_start
      if is_writer():  # pictures first: the final record marks the run complete
        local_params = jax.device_get(params)
        write_grids(self.model, local_params, replica.grid_z, self.test_x_host, replica.directory)
        write_latent_pictures(self.model, local_params, self.test_x_host, self.test_labels, replica.directory,
                              f"{config.model.upper()}, L={config.latent_dim}")
        append_metrics(replica.metrics_path, final)
      summary = (f"test {self.loss_name} {final['test_neg_elbo']:.2f} nats, "
                 f"{final['active_units']}/{config.latent_dim} active units")
      if "h1_active_units" in final:
        summary += f" (h1: {final['h1_active_units']}/{config.h1_dim})"
      if "iwae_nll" in final:
        summary += (f", IWAE NLL (k={config.iwae_samples}) {final['iwae_nll']:.2f} "
                    f"± {final['iwae_nll_stderr']:.2f}")
      self._log(replica, f"final: {summary}; artifacts in {replica.directory}")
      finals.append(final)
    return finals


def _is_complete(records: list[dict], config: config_lib.Config, epoch: int) -> bool:
  return bool(records and records[-1].get("final") and records[-1]["epoch"] == epoch == config.num_epochs
              and records[-1].get("iwae_samples", 0) == config.iwae_samples)


def train_and_evaluate(config: config_lib.Config, workdir, overwrite: bool = False) -> dict | list[dict]:
  """Trains and evaluates `config` in `workdir` (see the module docstring).

  Returns the final metrics record, or for an ensemble the list of every replica's.
  Every check (settings, workdir, data, checkpoint) runs before anything in `workdir` changes.
  """
  config.validate()
  workdir = pathlib.Path(workdir)
  check_workdir(config, workdir, overwrite)
  mnist = data_lib.load_mnist(config.data_source, config.data_dir, config.tfds_download, config.data_path)
  train_split = data_lib.without_digit(mnist.train, config.exclude_digit)
  num_train = len(train_split.labels)
  if config.batch_size > num_train:
    raise config_lib.ConfigError(f"batch_size {config.batch_size} exceeds the {num_train} training images")
  mesh = train.data_mesh()
  if config.batch_size % mesh.size:
    raise config_lib.ConfigError(f"batch_size {config.batch_size} is not a multiple of the {mesh.size} devices "
                                 "each batch is split over")
  ensemble = config.num_replicas > 1

  model = config_lib.build_model(config)
  steps_per_epoch = num_train // config.batch_size
  optimizer = train.make_optimizer(config, steps_per_epoch)
  keys = train.KeyStreams.from_seeds(config.seeds) if ensemble else train.KeyStreams.from_seed(config.seed)
  output_bias = models.data_mean_bias(train_split.images) if config.output_bias == "data_mean" else None
  state = train.replicate(train.create_train_state(model, optimizer, keys.init, output_bias), mesh)
  fingerprint = data_lib.fingerprint(train_split)
  _sync("inputs checked")  # no process changes the workdir before all have checked it
  if overwrite:
    if is_writer():
      remove_artifacts(workdir)
    _sync("old run removed")
  with checkpoints.manager(workdir) as mngr:  # closed on every exit, errors included
    restored, start_epoch = checkpoints.restore(mngr, state, data_fingerprint=fingerprint)
    if start_epoch > config.num_epochs:
      raise config_lib.ConfigError(
          f"{workdir} holds a checkpoint of epoch {start_epoch}, past --num_epochs={config.num_epochs}")
    # Only now, with the checkpoint (if any) known to fit, does anything in workdir change.
    replicas = []
    for index in range(config.num_replicas):
      replica_keys = keys.at(index) if ensemble else keys
      replicas.append(_Replica(config=config.replica(index), directory=replica_dir(config, workdir, index),
                               keys=replica_keys,
                               grid_z=jax.random.normal(replica_keys.sample, (NUM_GRID, config.latent_dim))))
    all_records = [read_metrics(r.metrics_path) for r in replicas]
    if all(_is_complete(records, config, start_epoch) for records in all_records):
      finals = [records[-1] for records in all_records]
      if is_writer():
        for replica, final in zip(replicas, finals):
          print(f"{replica.directory} is complete: {json.dumps(final)}", flush=True)
      return finals if ensemble else finals[0]
    _sync("completion checked")
    kept = [[r for r in records if not r.get("final") and r["epoch"] <= start_epoch] for records in all_records]
    if is_writer():
      workdir.mkdir(parents=True, exist_ok=True)
      (workdir / "config.json").write_text(config.to_json() + "\n")
      for replica, records in zip(replicas, kept):
        replica.directory.mkdir(exist_ok=True)
        if ensemble:
          (replica.directory / "config.json").write_text(replica.config.to_json() + "\n")
        write_metrics(replica.metrics_path, records)
    records = kept[0]
    if restored is not None:
      state = restored
      logging.info("resumed from checkpoint of epoch %d (step %s)", start_epoch, np.asarray(state.step))

    train_images = train.replicate(data_lib.prepare_train_images(train_split.images, config.binarization), mesh)
    test_x_host = data_lib.test_targets(mnist.test.images, config.binarization)
    epoch_fn = train.make_train_epoch(model, optimizer, config.batch_size, config.binarization,
                                      config.nonfinite_policy, mesh=mesh, ensemble=ensemble,
                                      objective=config.training_objective,
                                      kl_schedule=config.make_kl_schedule(steps_per_epoch))
    start = time.perf_counter()
    epoch_fn = epoch_fn.lower(state, train_images, keys.data, keys.train).compile()
    logging.info("compiled the training epoch in %.1f s (batch split over %d devices)",
                 time.perf_counter() - start, mesh.size)
    run = _Run(config=config, workdir=workdir, model=model, keys=keys, replicas=replicas, train_images=train_images,
               test_x=train.replicate(test_x_host, mesh), test_x_host=test_x_host, test_labels=mnist.test.labels,
               epoch_fn=epoch_fn, mngr=mngr, data_fingerprint=fingerprint,
               wall_start=time.perf_counter() - (records[-1]["wall_seconds"] if records else 0.0))

    with StopSignals() as signals:
      for epoch in range(start_epoch + 1, config.num_epochs + 1):
        state = run.train_epoch(state, epoch)
        signum = _any_process(signals.signum or 0)
        if signum:
          run.save(state, epoch)
          raise Interrupted(f"{signal.Signals(signum).name} received: stopped after epoch {epoch} with a "
                            f"checkpoint in {workdir / 'checkpoints'}; run the same command to resume", signum)
      signals.raise_now = True
      finals = run.final_evaluation(state)
      return finals if ensemble else finals[0]
