"""Orbax checkpoints of the train state in `<workdir>/checkpoints/<epoch>/`.

A checkpoint holds params, optimizer state and step (`state`) and the epoch
(`meta`). Every other random input is derived from (seed, epoch, step), so
restoring these is enough to continue a run exactly. Orbax writes into a
temporary directory and renames it when complete, so an interrupted save never
replaces a good checkpoint.
"""

import pathlib

import flax
import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxvae import config as config_lib
from jaxvae import train


class CheckpointError(ValueError):
  """A checkpoint is missing, corrupted or does not fit the model."""


def manager(workdir, max_to_keep: int = 2) -> ocp.CheckpointManager:
  path = pathlib.Path(workdir).absolute() / "checkpoints"
  return ocp.CheckpointManager(path, options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True))


def save(mngr: ocp.CheckpointManager, state: train.TrainState, epoch: int) -> None:
  """Saves `state` as checkpoint `epoch` and waits until it is on disk."""
  mngr.save(epoch, args=ocp.args.Composite(
      state=ocp.args.StandardSave(flax.serialization.to_state_dict(state)),
      meta=ocp.args.JsonSave({"epoch": epoch})), force=True)
  mngr.wait_until_finished()


def restore(mngr: ocp.CheckpointManager, target: train.TrainState, epoch: int | None = None):
  """Restores checkpoint `epoch` (default: the newest) into the structure of `target`.

  Returns:
    (state, epoch), or (None, 0) when there is no checkpoint.
  """
  epoch = mngr.latest_step() if epoch is None else epoch
  if epoch is None:
    return None, 0
  target_dict = flax.serialization.to_state_dict(target)
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target_dict)
  try:
    restored = mngr.restore(epoch, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    state = flax.serialization.from_state_dict(target, restored.state)
  except Exception as e:  # orbax raises many types for damaged or foreign files
    raise CheckpointError(
        f"checkpoint {mngr.directory}/{epoch} cannot be restored into this model: {str(e).splitlines()[0][:200]}"
    ) from None
  mismatched = [jax.tree_util.keystr(path)
                for (path, want), got in zip(jax.tree_util.tree_flatten_with_path(target)[0], jax.tree.leaves(state))
                if np.shape(want) != np.shape(got)]
  if mismatched:
    raise CheckpointError(f"checkpoint {mngr.directory}/{epoch} has other shapes at {', '.join(mismatched[:3])}")
  return state, int(restored.meta["epoch"])


def load_model(workdir, epoch: int | None = None):
  """Loads a trained VAE from a workdir written by `train.train_and_evaluate`.

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
  model = config_lib.build_model(config)
  optimizer = train.make_optimizer(config)
  target = jax.eval_shape(lambda: train.create_train_state(model, optimizer, jax.random.key(0)))
  mngr = manager(workdir)
  if mngr.latest_step() is None:
    raise CheckpointError(f"{workdir}: no checkpoint")
  state, _ = restore(mngr, target, epoch)
  return model, state.params, config
