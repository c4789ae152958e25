"""The one model format: orbax checkpoints in `<workdir>/checkpoints/<epoch>/`, and `load_model`.

A checkpoint holds three items: `params` (the model's parameters, on their
own), `train` (optimizer state and step) and `meta` (epoch, data fingerprint).
Every other random input of training is derived from (seed, epoch, step), so
these are enough to continue a run exactly; `params` alone, with the model spec
in the workdir's marker (`jaxvae.json`), are enough to use the model, whatever
optimizer trained it. Orbax writes into a temporary directory and renames it
when complete, so an interrupted save never replaces a good checkpoint.

`restore` trusts nothing: a checkpoint that cannot be read or holds non-finite
parameters is skipped with a warning naming it, and the newest good one is
used; one that does not fit the model is refused.

Checkpoints written before this format (one `state` item holding params,
optimizer state and step) still restore and load.
"""

import dataclasses
import hashlib
import os
import pathlib
from typing import Any

from absl import logging
import flax
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from jaxvae import registry
from jaxvae import train
from jaxvae import workdir as workdir_lib
from jaxvae.errors import CheckpointError

ITEMS = ("params", "train", "meta", "state")  # "state": the format before params had an item of their own


def manager(workdir, max_to_keep: int = 2, read_only: bool = False) -> ocp.CheckpointManager:
  """The run's checkpoint manager. Saves that were cut off (a `kill -9` mid-write) are
  left as `*.orbax-checkpoint-tmp*` directories: they are never restored, and are
  reported here with a warning and (unless `read_only`) removed. `read_only` changes
  nothing on disk: for loading, and for reading a run before it is known to be ours to resume."""
  path = pathlib.Path(workdir).absolute() / "checkpoints"
  for partial in sorted(path.glob("*.orbax-checkpoint-tmp*")) if path.is_dir() and not read_only else []:
    logging.warning("ignoring the incomplete checkpoint %s (its save was interrupted)", partial)
  if read_only:
    options = ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0, max_to_keep=None,
                                           cleanup_tmp_directories=False)
  else:
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True, cleanup_tmp_directories=True)
  handlers = {"params": ocp.StandardCheckpointHandler(), "train": ocp.StandardCheckpointHandler(),
              "state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
  return ocp.CheckpointManager(path, options=options, item_handlers=handlers)


def all_finite(tree) -> bool:
  """Whether every array of `tree` is finite (one fused reduction)."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
  return bool(jnp.all(jnp.stack(leaves))) if leaves else True


def save(mngr: ocp.CheckpointManager, state, epoch: int, data_fingerprint: str | None = None) -> None:
  """Saves `state` (a `train.TrainState`) as checkpoint `epoch` and waits until it is on disk.

  `data_fingerprint` (see `data.fingerprint`) records which training set the state
  was trained on, so a resume on other data is refused. Non-finite params are
  never saved (`CheckpointError`).
  """
  if not all_finite(state.params):
    raise CheckpointError(f"the parameters after epoch {epoch} are not finite; not saved")
  train = {"step": state.step, "opt_state": flax.serialization.to_state_dict(state.opt_state)}
  try:
    mngr.save(epoch, args=ocp.args.Composite(
        params=ocp.args.StandardSave(flax.serialization.to_state_dict(state.params)),
        train=ocp.args.StandardSave(train),
        meta=ocp.args.JsonSave({"epoch": epoch, "data_fingerprint": data_fingerprint})), force=True)
    mngr.wait_until_finished()
  except OSError:
    raise
  except Exception as e:  # orbax wraps a full disk and other write errors in many types
    raise CheckpointError(f"could not write checkpoint {mngr.directory}/{epoch}: {str(e).splitlines()[0][:200]}") \
        from None


def _shapes(tree) -> dict:
  return {jax.tree_util.keystr(p): (tuple(np.shape(x)), np.dtype(x.dtype).name)
          for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _first_line(e: Exception) -> str:
  return (str(e).splitlines() or [type(e).__name__])[0][:200]


class _Damaged(Exception):
  """A checkpoint that cannot be used, though a better one may exist."""


def _restore_one(mngr, epoch: int, target, data_fingerprint):
  """(state, meta) of checkpoint `epoch` restored into `target`'s structure.

  Raises `CheckpointError` when it does not fit (shapes, data); `_Damaged` when it
  is unreadable or holds non-finite params.
  """
  where = f"checkpoint {mngr.directory}/{epoch}"
  try:
    stored = mngr.item_metadata(epoch)
    meta = mngr.restore(epoch, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
    legacy = stored.get("params") is None
    if legacy:
      stored_state = dict(stored["state"])
      stored = {"params": stored_state["params"], "step": stored_state["step"], "opt_state": stored_state["opt_state"]}
    else:
      stored = {"params": stored["params"], **dict(stored["train"])}
  except Exception as e:  # orbax raises many types for damaged files
    raise _Damaged(f"{where} is unreadable: {_first_line(e)}") from None
  want = _shapes(flax.serialization.to_state_dict(target))
  got = _shapes(jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), stored))
  if want != got:
    diff = sorted(k for k in want.keys() | got.keys() if want.get(k) != got.get(k))
    raise CheckpointError(f"{where} does not fit this model: {diff[0]} is {got.get(diff[0])} there, "
                          f"{want.get(diff[0])} here ({len(diff)} arrays differ)")
  trained_on = meta.get("data_fingerprint") if isinstance(meta, dict) else None
  if data_fingerprint and trained_on and trained_on != data_fingerprint:
    raise CheckpointError(f"{where} was trained on other data (fingerprint {trained_on}, now {data_fingerprint}); "
                          "resume with the data source it was trained on")
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, flax.serialization.to_state_dict(target))
  try:
    if legacy:
      restored = mngr.restore(epoch, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))).state
    else:
      items = mngr.restore(epoch, args=ocp.args.Composite(
          params=ocp.args.StandardRestore(abstract["params"]),
          train=ocp.args.StandardRestore({"step": abstract["step"], "opt_state": abstract["opt_state"]})))
      restored = {"params": items.params, **items.train}
    state = flax.serialization.from_state_dict(target, restored)
  except Exception as e:  # orbax raises many types for damaged files
    raise _Damaged(f"{where} cannot be restored: {_first_line(e)}") from None
  if not all_finite(state.params):
    raise _Damaged(f"{where} holds non-finite parameters")
  if not all_finite(state.opt_state):
    raise _Damaged(f"{where} holds a non-finite optimizer state")
  return state, meta


@dataclasses.dataclass
class Restored:
  state: Any  # None when no usable checkpoint exists
  epoch: int  # 0 when none
  rejected: list[int]  # newer checkpoints that were skipped (damaged or non-finite)


def restore(mngr: ocp.CheckpointManager, target, data_fingerprint: str | None = None) -> Restored:
  """The newest good checkpoint, restored into the structure of `target` (a `train.TrainState`).

  Newer checkpoints that are unreadable or hold non-finite params are skipped
  with a warning naming them (`Restored.rejected`). Refuses (`CheckpointError`) a
  checkpoint whose arrays differ in shape or dtype from `target`'s, or that was
  trained on data with another fingerprint, and checkpoints none of which is usable.
  """
  steps = sorted(mngr.all_steps(), reverse=True)
  rejected = []
  for epoch in steps:
    try:
      state, meta = _restore_one(mngr, epoch, target, data_fingerprint)
    except _Damaged as e:
      logging.warning("%s; skipped", e)
      rejected.append(epoch)
      continue
    return Restored(state, epoch, rejected)  # the step of a checkpoint is its epoch
  if rejected:
    raise CheckpointError(f"no usable checkpoint in {mngr.directory} (checkpoints {sorted(rejected)} are damaged or "
                          "non-finite); pass --overwrite to start the run again")
  return Restored(None, 0, [])


# --- loading a trained model, any family --------------------------------------------------------


def model_spec(model) -> dict:
  """What `module_from_spec` needs to rebuild `model`: its class and fields."""
  fields = {f.name: getattr(model, f.name) for f in dataclasses.fields(model) if f.name not in ("parent", "name")}
  return {"class": type(model).__name__, "fields": fields}


def module_from_spec(spec: dict, where: str = "model spec", model=None):
  """(model, init) from a `model_spec`: a class of jaxvae's own (`registry.MODULES`), or `model`,
  the class (or an instance of it) the caller names; `init` is None for a class jaxvae does not
  know. `CheckpointError` for an unknown class, another class than `model`, or damaged fields.
  Nothing is imported or looked up by the name the spec holds but in the registry."""
  name = spec.get("class")
  if model is not None:
    cls = model if isinstance(model, type) else type(model)
    if name != cls.__name__:
      raise CheckpointError(f"{where}: the model is a {str(name)[:80]!r}, not a {cls.__name__}")
    known = registry.MODULES.get(name)
    init = known[1] if known is not None and known[0] is cls else None
    if not isinstance(model, type):
      return model, init
  elif name in registry.MODULES:
    cls, init = registry.MODULES[name]
  else:
    raise CheckpointError(f"{where}: the model is a {str(name)[:80]!r}, a module class jaxvae does not know; "
                          "name it in code: jaxvae.load_model(workdir, model=TheClass)")
  try:
    return cls(**spec["fields"]), init
  except (KeyError, TypeError, ValueError) as e:
    raise CheckpointError(f"{where}: the fields of its {name} do not fit ({type(e).__name__}: {e})") from None


def abstract_params(model, init, num_replicas: int = 1):
  """Shapes and dtypes of `model`'s params (with a leading replica axis for an ensemble), placed
  whole on this process's devices. `CheckpointError` when the model cannot be built (a damaged spec)."""
  key = jax.random.split(jax.random.key(0), num_replicas) if num_replicas > 1 else jax.random.key(0)
  fn = jax.vmap(lambda k: init(model, k)) if num_replicas > 1 else lambda k: init(model, k)
  sharding = jax.sharding.NamedSharding(train.data_mesh(jax.local_devices()), jax.sharding.PartitionSpec())
  try:
    shapes = jax.eval_shape(fn, key)
  except Exception as e:  # a spec with fields of the wrong type fails inside the module
    raise CheckpointError(f"the model spec {model_spec(model)} cannot be built ({type(e).__name__}: {e})") from None
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes)


def restore_params(workdir, abstract, epoch: int | None = None):
  """The `params` item of the newest good checkpoint (or of `epoch`) in `workdir`, without the
  optimizer state; changes nothing on disk (a run may be training there). Checkpoints of the
  earlier format are read whole, as stored, and their params returned. `abstract` (shapes,
  dtypes and placement) None: the params as stored, unchecked against a model."""
  workdir = pathlib.Path(workdir)
  if not (workdir / "checkpoints").is_dir():
    raise CheckpointError(f"{workdir}: no checkpoint")
  with manager(workdir, read_only=True) as mngr:
    steps = [epoch] if epoch is not None else sorted(mngr.all_steps(), reverse=True)
    if not steps:
      raise CheckpointError(f"{workdir}: no checkpoint")
    for step in steps:
      where = f"checkpoint {mngr.directory}/{step}"
      try:
        stored = mngr.item_metadata(step)
        if abstract is None:  # a module jaxvae cannot initialise: the params as stored
          item = "params" if stored.get("params") is not None else "state"
          restored = getattr(mngr.restore(step, args=ocp.args.Composite(**{item: ocp.args.StandardRestore()})), item)
          restored = jax.tree.map(jnp.asarray, restored if item == "params" else restored["params"])
        else:
          if stored.get("params") is not None:
            got = stored["params"]
            params = lambda: mngr.restore(step, args=ocp.args.Composite(
                params=ocp.args.StandardRestore(abstract))).params
          else:  # earlier format: params out of the state item, read as stored (no optimizer is built)
            got = dict(stored["state"])["params"]
            params = lambda: jax.device_put(mngr.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore())).state["params"], jax.tree.map(lambda a: a.sharding, abstract))
          if _shapes(abstract) != _shapes(jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), got)):
            raise CheckpointError(f"{where} does not fit the model in {workdir / workdir_lib.MARKER}")
          restored = params()
      except CheckpointError:
        raise
      except Exception as e:  # orbax raises many types for damaged files
        logging.warning("%s is unreadable (%s); skipped", where, _first_line(e))
        continue
      if not all_finite(restored):
        logging.warning("%s holds non-finite parameters; skipped", where)
        continue
      return restored
  raise CheckpointError(f"{workdir}: no usable checkpoint (every one is damaged or non-finite)")


def fingerprint(params) -> str:
  """The identity of a trained model: a hash of its parameters' names, shapes, dtypes and values.
  A study or run that depends on a model records it, and refuses to go on when it changed."""
  digest = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    array = np.asarray(jax.device_get(leaf))
    digest.update(f"{jax.tree_util.keystr(path)}:{array.shape}:{array.dtype.str};".encode())
    digest.update(np.ascontiguousarray(array).tobytes())
  return digest.hexdigest()[:16]


def load_model(workdir, epoch: int | None = None, model=None):
  """Loads a trained model of any family (VAE, AE, two-layer, CVAE, M2, classifier, sequence VAE) from its workdir.

  Only the params are read (never the optimizer state), from the newest good
  checkpoint. `workdir` must hold jaxvae's marker (jaxvae.json) with a model spec.
  A module class jaxvae does not know (a model of your own trained through `fit`)
  is named in code: `load_model(workdir, model=MyVAE)` rebuilds `MyVAE(**fields)`
  from the spec (or takes the instance passed) and returns its params as stored;
  a marker never makes jaxvae import or run anything by name. `workdir` may also
  be the `seed=<s>/` directory of one replica of an ensemble; the ensemble's own
  workdir gives params with a leading replica axis (replica r:
  `jax.tree.map(lambda a: a[r], params)`). Nothing on disk changes.

  Returns:
    (model, params, config): for a VAE run, `model.apply(params, x, method=model.encode)`
    gives (mean, logvar) and `model.apply(params, z, method=model.decode)` the logits,
    or `vae = model.bind(params)` then `vae.encode(x)`, `vae.decode(z)`; `config` is its
    `Config`. For the other families `config` is the dict of the run's settings.
  """
  from jaxvae import config as config_lib  # pylint: disable=g-import-not-at-top

  workdir = pathlib.Path(workdir)
  if not workdir.is_dir():
    raise CheckpointError(f"{workdir}: no such directory")
  marker = workdir_lib.read_marker(workdir)
  if marker is None:
    raise CheckpointError(f"{workdir}: not a jaxvae workdir (no {workdir_lib.MARKER})")
  if marker["kind"] == "replica":
    index, parent = marker["index"], workdir.absolute().parent
    parent_marker = workdir_lib.read_marker(parent)
    if parent_marker is None or "model" not in parent_marker:
      raise CheckpointError(f"{workdir / workdir_lib.MARKER}: a replica whose ensemble ({parent}) holds no model")
    num_replicas = parent_marker.get("num_replicas", 1)
    if index >= num_replicas:
      raise CheckpointError(f"{workdir / workdir_lib.MARKER}: replica index {index} is out of range (the ensemble "
                            f"in {parent} has {num_replicas} replicas)")
    model, params, _ = load_model(parent, epoch, model)
    config = config_lib.Config.from_json_file(workdir / "config.json")
    return model, jax.tree.map(lambda a: a[index], params), config
  if "model" not in marker:
    raise CheckpointError(f"{workdir} holds a jaxvae {marker['kind']} (no trained model)")
  model, init = module_from_spec(marker["model"], str(workdir / workdir_lib.MARKER), model)
  num_replicas = marker.get("num_replicas", 1)
  params = restore_params(workdir, None if init is None else abstract_params(model, init, num_replicas), epoch)
  settings = None
  if os.path.lexists(workdir / "config.json"):
    settings = workdir_lib.read_json_object(workdir / "config.json", "config", error=CheckpointError)
  if marker["kind"] == "vae" and settings is not None:
    return model, params, config_lib.Config.from_dict(settings, workdir / "config.json")
  return model, params, settings
