"""Train state, the compiled training step and the compiled epoch.

Keys: every family derives every random number from named streams of one root key
(see `KeyStreams`): the epoch's permutation and binarization from
(data stream, epoch), each step's reparameterization noise from
(train stream, global step). A resumed run therefore sees exactly the data and
noise an uninterrupted one would.

Scale: the batch is sharded over a `jax.sharding.Mesh` of devices (axis "data",
params replicated), on one host or many (`jax.distributed`); an ensemble of
independent models (one per seed) is `jax.vmap` of the same epoch over a
leading replica axis of the state and keys.
"""

import functools
from typing import Any, Callable, NamedTuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxvae import data as data_lib
from jaxvae import models
from jaxvae import objectives


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training, as one pytree."""

  step: jax.Array  # int32 scalar: optimizer updates so far
  params: Any
  opt_state: Any


class KeyStreams(NamedTuple):
  """Independent PRNG streams split once from the root key of `--seed`."""

  init: jax.Array  # parameter initialisation
  data: jax.Array  # fold_in(data, epoch): permutation and dynamic binarization
  train: jax.Array  # fold_in(train, step): reparameterization noise of a step
  eval: jax.Array  # fixed: test ELBO / IWAE samples
  sample: jax.Array  # fixed: prior samples for the image grids

  @classmethod
  def from_seed(cls, seed: int) -> "KeyStreams":
    return cls(*jax.random.split(jax.random.key(seed), len(cls._fields)))

  @classmethod
  def from_seeds(cls, seeds) -> "KeyStreams":
    """Streams of an ensemble: each field a [R] stack, row r equal to `from_seed(seeds[r])`."""
    return jax.tree.map(lambda *keys: jnp.stack(keys), *[cls.from_seed(int(s)) for s in seeds])

  def at(self, replica: int) -> "KeyStreams":
    """The streams of one replica of an ensemble."""
    return KeyStreams(*(k[replica] for k in self))


def epoch_key(data_key: jax.Array, epoch: int) -> jax.Array:
  """The key of epoch `epoch` from the data stream: fold_in, per replica for a [R] stack of keys."""
  return jax.vmap(jax.random.fold_in, (0, None))(data_key, epoch) if data_key.ndim else jax.random.fold_in(
      data_key, epoch)


def data_mesh(devices=None) -> jax.sharding.Mesh:
  """A 1-D mesh (axis "data") over `devices`, default all devices of all processes."""
  return jax.sharding.Mesh(np.asarray(jax.devices() if devices is None else devices), ("data",))


def replicate(tree, mesh: jax.sharding.Mesh):
  """Places `tree` (host or device arrays, same values on every process) whole on every device of `mesh`."""
  return jax.device_put(tree, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))


def create_train_state(model: nn.Module, optimizer: optax.GradientTransformation, key: jax.Array,
                       output_bias_D: jax.Array | None = None) -> TrainState:
  """Initial params (from `key`; see `models.init_params` for `output_bias_D`) and optimizer
  state, built in one compiled call.

  `key` may be a [R] stack of keys (see `KeyStreams.from_seeds`): the result is then
  the state of an ensemble, every leaf with a leading replica axis of size R.
  """

  def create(key):
    return init_state(models.init_params(model, key, output_bias_D), optimizer)

  return jax.jit(jax.vmap(create) if key.ndim else create)(key)


def init_state(params, optimizer: optax.GradientTransformation) -> TrainState:
  """The state at step 0 of training `params` with `optimizer`."""
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params))


NONFINITE_POLICIES = ("stop", "skip")


def all_finite(tree) -> jax.Array:
  """Whether every element of every leaf of `tree` is finite, as a bool scalar.

  Each leaf, as a matrix, times a vector of zeros: 0 * x is 0 for every finite x,
  however large, and NaN for NaN and +-Inf, so the products' sum is NaN exactly
  when some element is not finite. The product is one matrix-vector call per
  leaf, which reads the leaf at the speed of a dot; `isfinite` followed by `all`
  took 13-15% of the Table-1 training step (README, "What the step costs"). The
  zeros come from the leaf itself (`row * 0`), so no compiler can fold the
  product away as a multiplication by a constant 0; HIGHEST precision keeps the
  dot in the leaf's own dtype (a bfloat16 pass could round 3e38 up to Inf).
  """
  total = jnp.float32(0.0)
  for leaf in jax.tree.leaves(tree):
    leaf = jnp.asarray(leaf)
    if not jnp.issubdtype(leaf.dtype, jnp.inexact) or not leaf.size:
      continue  # integers (and empty leaves) have no non-finite element
    matrix = leaf.reshape(-1, leaf.shape[-1]) if leaf.ndim else leaf.reshape(1, 1)
    zeros = matrix[0] * 0
    total = total + jnp.sum(jnp.dot(matrix, zeros, precision=jax.lax.Precision.HIGHEST)).astype(jnp.float32)
  return jnp.isfinite(total)


def make_step(loss_fn: Callable[..., tuple[jax.Array, dict]], optimizer: optax.GradientTransformation,
              nonfinite_policy: str = "stop") -> Callable[..., tuple[TrainState, dict]]:
  """Returns `step(state, batch, batch_key, train_key, context=None) -> (state, metrics)` (not jitted).

  `loss_fn(params, batch, batch_key, step_key, step, context) -> (loss, metrics)`
  is any model family's loss on one batch (a pytree of arrays): `batch_key` is
  the batch's own key (e.g. for its binarization), `step_key` =
  fold_in(train_key, step) the step's (e.g. for the reparameterization noise),
  `step` the global step (for schedules) and `context` whatever the caller passes
  through unchanged (e.g. a small labelled set). The optimizer steps on the
  gradient of `loss`. `metrics` gains `loss` and `finite`: whether the loss and
  every gradient were finite. With `nonfinite_policy="skip"` a non-finite step
  leaves params and optimizer state unchanged; with `"stop"` it is applied and
  the caller is expected to stop on `finite == False`.
  """
  if nonfinite_policy not in NONFINITE_POLICIES:
    raise ValueError(f"unknown nonfinite_policy {nonfinite_policy!r}; choose one of {', '.join(NONFINITE_POLICIES)}")

  def step(state: TrainState, batch, batch_key, train_key, context=None):
    step_key = jax.random.fold_in(train_key, state.step)
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, batch_key, step_key,
                                                                       state.step, context)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    finite = all_finite((loss, grads))
    if nonfinite_policy == "skip":
      params, opt_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old),
                                       (params, opt_state), (state.params, state.opt_state))
    return TrainState(state.step + 1, params, opt_state), {**metrics, "loss": loss, "finite": finite}

  return step


def vae_loss(model: nn.Module, binarization: str, objective: Callable[..., objectives.Elbo] = objectives.elbo,
             kl_schedule: objectives.KLSchedule | None = None) -> Callable[..., tuple[jax.Array, dict]]:
  """The ELBO family's `loss_fn` for `make_step`: a batch of uint8 images (see
  `data.prepare_train_images`) binarized with the batch key, the batch mean of
  -objective (per example, default the ELBO; see `objectives.OBJECTIVES` and
  `objectives.training_objective`) in nats per image, or with a `kl_schedule`
  its `loss` at the step's index (beta, warm-up, free bits). Metrics: batch
  means of `neg_elbo` (-objective, whatever the loss), `reconstruction` (E_q log
  p(x|z)) and `kl`, and the KL weight `kl_weight`."""
  data_lib.check_binarization(binarization)

  def loss_fn(params, images_BxD, bin_key, z_key, step, context):
    del context
    x_BxD = data_lib.train_targets(bin_key, images_BxD, binarization)
    terms = objectives.batch_elbo(model, params, z_key, x_BxD, objective)
    loss = -jnp.mean(terms.elbo) if kl_schedule is None else kl_schedule.loss(terms, step)
    kl_weight = jnp.float32(1.0) if kl_schedule is None else kl_schedule.weight(step)
    return loss, {"neg_elbo": -jnp.mean(terms.elbo), "reconstruction": jnp.mean(terms.reconstruction),
                  "kl": jnp.mean(terms.kl), "kl_weight": kl_weight}

  return loss_fn


def make_train_step(
    model: nn.Module,
    optimizer: optax.GradientTransformation,
    binarization: str,
    nonfinite_policy: str = "stop",
    objective: Callable[..., objectives.Elbo] = objectives.elbo,
    kl_schedule: objectives.KLSchedule | None = None,
) -> Callable[..., tuple[TrainState, dict]]:
  """`make_step` of the ELBO family (`vae_loss`): `step(state, images_BxD, bin_key, train_key)`."""
  return make_step(vae_loss(model, binarization, objective, kl_schedule), optimizer, nonfinite_policy)


def epoch_batches(key: jax.Array, num_examples: int, batch_size: int) -> tuple[jax.Array, jax.Array]:
  """A permutation of the data cut into full batches; the remainder is dropped.

  Returns (indices [num_batches, batch_size], batch keys [num_batches]).
  """
  perm_key, bin_key = jax.random.split(key)
  num_batches = num_examples // batch_size
  perm = jax.random.permutation(perm_key, num_examples)[: num_batches * batch_size]
  bin_keys = jax.vmap(functools.partial(jax.random.fold_in, bin_key))(jnp.arange(num_batches))
  return perm.reshape(num_batches, batch_size), bin_keys


def make_epoch(
    loss_fn: Callable[..., tuple[jax.Array, dict]],
    optimizer: optax.GradientTransformation,
    batch_size: int,
    nonfinite_policy: str = "stop",
    mesh: jax.sharding.Mesh | None = None,
    ensemble: bool = False,
) -> Callable[..., tuple[TrainState, dict]]:
  """The one compiled epoch, for any family's `loss_fn` (see `make_step`).

  Returns a jitted `epoch(state, data, epoch_key, train_key, context=None) -> (state, metrics)`:
  `lax.scan` over full batches of a permutation (drawn from `epoch_key`; see
  `epoch_batches`) of the device-resident `data`, a pytree of arrays with a
  shared leading axis N. `metrics` are means over the epoch's finite steps (NaN
  if none) of `loss` and of every metric of `loss_fn`, plus `num_images`
  (trained on), `nonfinite_steps` (count) and `first_nonfinite_step` (global
  step index, -1 if none). The input state is donated.

  With a `mesh` (see `data_mesh`) every batch is split over its "data" axis;
  pass state and data replicated on the mesh (`replicate`). `batch_size` must be
  a multiple of the mesh size. With `ensemble=True` the epoch is vmapped over a
  leading replica axis of `state`, `epoch_key` and `train_key` (data and context
  are shared); metrics then have that axis too.
  """
  step = make_step(loss_fn, optimizer, nonfinite_policy)
  if mesh is not None and batch_size % mesh.size:
    raise ValueError(f"batch_size {batch_size} is not a multiple of the {mesh.size} devices it is split over")
  batch_sharding = None if mesh is None else jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))

  def epoch(state: TrainState, data, epoch_key: jax.Array, train_key: jax.Array, context=None):
    num_examples = jax.tree.leaves(data)[0].shape[0]
    batch_indices, batch_keys = epoch_batches(epoch_key, num_examples, batch_size)

    def body(state, batch):
      indices_B, batch_key = batch
      batch_data = jax.tree.map(lambda a: a[indices_B], data)
      if batch_sharding is not None:
        batch_data = jax.tree.map(lambda a: jax.lax.with_sharding_constraint(a, batch_sharding), batch_data)
      return step(state, batch_data, batch_key, train_key, context)

    first_step = state.step
    state, metrics = jax.lax.scan(body, state, (batch_indices, batch_keys))
    finite = metrics.pop("finite")
    num_finite = jnp.sum(finite)  # an epoch without a finite step reports NaN means
    summary = {k: jnp.sum(jnp.where(finite, v, 0.0)) / jnp.where(num_finite > 0, num_finite, jnp.nan)
               for k, v in metrics.items()}
    summary["num_images"] = jnp.int32(batch_indices.size)
    summary["nonfinite_steps"] = jnp.sum(~finite)
    summary["first_nonfinite_step"] = jnp.where(jnp.all(finite), -1, first_step + jnp.argmin(finite))
    return state, summary

  if ensemble:
    one_epoch = epoch

    def epoch(state, data, epoch_key, train_key, context=None):
      return jax.vmap(one_epoch, in_axes=(0, None, 0, 0, None))(state, data, epoch_key, train_key, context)

  return jax.jit(epoch, donate_argnums=0)


def make_train_epoch(
    model: nn.Module,
    optimizer: optax.GradientTransformation,
    batch_size: int,
    binarization: str,
    nonfinite_policy: str = "stop",
    mesh: jax.sharding.Mesh | None = None,
    ensemble: bool = False,
    objective: Callable[..., objectives.Elbo] = objectives.elbo,
    kl_schedule: objectives.KLSchedule | None = None,
) -> Callable[..., tuple[TrainState, dict]]:
  """`make_epoch` of the ELBO family (`vae_loss`): `epoch(state, images_NxD, epoch_key, train_key)`."""
  return make_epoch(vae_loss(model, binarization, objective, kl_schedule), optimizer, batch_size, nonfinite_policy,
                    mesh, ensemble)


LR_SCHEDULES = ("constant", "iwae")


def iwae_learning_rate(base: float, steps_per_epoch: int, num_stages: int = 8) -> optax.Schedule:
  """Burda et al.'s schedule: stage i = 0 .. num_stages - 1 lasts 3^i epochs at base * 10^(-i/7)
  (3,280 epochs for 8 stages); the last rate stays after that."""
  boundaries, epoch = {}, 0
  for i in range(num_stages - 1):
    epoch += 3**i
    boundaries[epoch * steps_per_epoch] = 10 ** (-1 / 7)
  return optax.piecewise_constant_schedule(base, boundaries)


def make_optimizer(config, steps_per_epoch: int = 1) -> optax.GradientTransformation:
  """Adam (eps `config.adam_eps`) at `config.learning_rate`, constant or on the IWAE schedule
  (`config.lr_schedule`; its boundaries need `steps_per_epoch`, its state's structure does not)."""
  learning_rate = config.learning_rate
  if config.lr_schedule == "iwae":
    learning_rate = iwae_learning_rate(config.learning_rate, steps_per_epoch)
  return optax.adam(learning_rate, eps=config.adam_eps)
