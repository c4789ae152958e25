"""Orbax checkpoints of the train state in `<workdir>/checkpoints/<epoch>/`.

A checkpoint holds params, optimizer state and step (`state`) and the epoch
(`meta`). Every other random input is derived from (seed, epoch, step), so
restoring these is enough to continue a run exactly. Orbax writes into a
temporary directory and renames it when complete, so an interrupted save never
replaces a good checkpoint.
"""

import pathlib

from absl import logging
import flax
import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxvae import config as config_lib
from jaxvae import train


class CheckpointError(ValueError):
  """A checkpoint is missing, corrupted or does not fit the model."""


def manager(workdir, max_to_keep: int = 2) -> ocp.CheckpointManager:
  """The run's checkpoint manager. Saves that were cut off (a `kill -9` mid-write) are
  left as `*.orbax-checkpoint-tmp*` directories: they are never restored, and are
  reported here with a warning and removed."""
  path = pathlib.Path(workdir).absolute() / "checkpoints"
  for partial in sorted(path.glob("*.orbax-checkpoint-tmp*")) if path.is_dir() else []:
    logging.warning("ignoring the incomplete checkpoint %s (its save was interrupted)", partial)
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True, cleanup_tmp_directories=True)
  handlers = {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
  return ocp.CheckpointManager(path, options=options, item_handlers=handlers)


def save(mngr: ocp.CheckpointManager, state: train.TrainState, epoch: int, data_fingerprint: str | None = None) -> None:
  """Saves `state` as checkpoint `epoch` and waits until it is on disk.

  `data_fingerprint` (see `data.fingerprint`) records which training set the state
  was trained on, so a resume on other data is refused.
  """
  mngr.save(epoch, args=ocp.args.Composite(
      state=ocp.args.StandardSave(flax.serialization.to_state_dict(state)),
      meta=ocp.args.JsonSave({"epoch": epoch, "data_fingerprint": data_fingerprint})), force=True)
  mngr.wait_until_finished()


def restore(mngr: ocp.CheckpointManager, target: train.TrainState, epoch: int | None = None,
            data_fingerprint: str | None = None):
  """Restores checkpoint `epoch` (default: the newest) into the structure of `target`.

  Refuses (`CheckpointError`) a checkpoint that is unreadable, whose arrays differ in
  shape or dtype from `target`'s, or that was trained on data with another
  fingerprint (when both are known).

  Returns:
    (state, epoch), or (None, 0) when there is no checkpoint.
  """
  epoch = mngr.latest_step() if epoch is None else epoch
  if epoch is None:
    return None, 0
  where = f"checkpoint {mngr.directory}/{epoch}"
  target_dict = flax.serialization.to_state_dict(target)
  # Compare shapes with the stored metadata first: a foreign checkpoint is refused
  # before any array is read.
  try:
    stored = dict(mngr.item_metadata(epoch)["state"])
    shapes = lambda tree: {jax.tree_util.keystr(p): (tuple(np.shape(x)), np.dtype(x.dtype).name)
                           for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}
    want, got = shapes(target_dict), shapes(jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), stored))
    meta = mngr.restore(epoch, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
  except Exception as e:  # orbax raises many types for damaged files
    raise CheckpointError(f"{where} is unreadable: {str(e).splitlines()[0][:200]}") from None
  if want != got:
    diff = sorted(k for k in want.keys() | got.keys() if want.get(k) != got.get(k))
    raise CheckpointError(f"{where} does not fit this model: {diff[0]} is {got.get(diff[0])} there, "
                          f"{want.get(diff[0])} here ({len(diff)} arrays differ)")
  trained_on = meta.get("data_fingerprint")
  if data_fingerprint and trained_on and trained_on != data_fingerprint:
    raise CheckpointError(f"{where} was trained on other data (fingerprint {trained_on}, now {data_fingerprint}); "
                          "resume with the data source it was trained on")
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target_dict)
  try:
    restored = mngr.restore(epoch, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
    state = flax.serialization.from_state_dict(target, restored.state)
  except Exception as e:  # orbax raises many types for damaged files
    raise CheckpointError(f"{where} cannot be restored: {str(e).splitlines()[0][:200]}") from None
  return state, int(meta["epoch"])


def load_model(workdir, epoch: int | None = None):
  """Loads a trained VAE from a workdir written by `run.train_and_evaluate`.

  `workdir` may also be the `seed=<s>/` directory of one replica of an ensemble;
  the ensemble's own workdir gives params with a leading replica axis (replica r:
  `jax.tree.map(lambda a: a[r], params)`).

  Returns:
    (model, params, config): `model.apply(params, x, method=model.encode)` gives
    (mean, logvar) and `model.apply(params, z, method=model.decode)` the logits;
    or `vae = model.bind(params)` then `vae.encode(x)`, `vae.decode(z)`.
  """
  workdir = pathlib.Path(workdir)
  config_path = workdir / "config.json"
  if not config_path.is_file():
    raise CheckpointError(f"{workdir}: no config.json; not a jaxvae workdir")
  config = config_lib.Config.from_json_file(config_path)
  replica = config_lib.replica_of(workdir)
  if replica is not None:
    model, params, _ = load_model(workdir.absolute().parent, epoch)
    return model, jax.tree.map(lambda a: a[replica[1]], params), config
  model = config_lib.build_model(config)
  optimizer = train.make_optimizer(config)
  key = jax.random.split(jax.random.key(0), config.num_replicas) if config.num_replicas > 1 else jax.random.key(0)
  # Restored replicated on this process's devices, whatever topology the run was trained on.
  sharding = jax.sharding.NamedSharding(train.data_mesh(jax.local_devices()), jax.sharding.PartitionSpec())
  target = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
                        jax.eval_shape(lambda k: train.create_train_state(model, optimizer, k), key))
  with manager(workdir) as mngr:
    if mngr.latest_step() is None:
      raise CheckpointError(f"{workdir}: no checkpoint")
    state, _ = restore(mngr, target, epoch)
  return model, state.params, config


def save_params(workdir, params) -> None:
  """Writes `params` alone as the checkpoint `<workdir>/checkpoints/0` (models trained outside
  `run.train_and_evaluate`: the judging classifier, the CVAE, M2)."""
  state = train.TrainState(np.zeros((), np.int32), params, ())
  with manager(workdir, max_to_keep=1) as mngr:
    save(mngr, state, 0)


def load_params(workdir, abstract_params):
  """Params saved by `save_params`, restored into the structure of `abstract_params` (e.g. from
  `jax.eval_shape` of the model's init). `CheckpointError` when absent or not of that shape."""
  target = train.TrainState(jax.ShapeDtypeStruct((), np.int32), abstract_params, ())
  target = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype), target)
  with manager(workdir, max_to_keep=1) as mngr:
    state, _ = restore(mngr, target)
  if state is None:
    raise CheckpointError(f"{workdir}: no checkpoint")
  return state.params
