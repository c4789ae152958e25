"""Train state, the compiled training step and the compiled epoch.

Keys: `fit` derives every random number from named streams of one root key
(see `KeyStreams`): the epoch's permutation and binarization from
(data stream, epoch), each step's reparameterization noise from
(train stream, global step). A resumed run therefore sees exactly the data and
noise an uninterrupted one would.
"""

import functools
from typing import Any, Callable, NamedTuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
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


def create_train_state(model: nn.Module, optimizer: optax.GradientTransformation, key: jax.Array) -> TrainState:
  params = models.init_params(model, key)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params))


def make_train_step(
    model: nn.Module, optimizer: optax.GradientTransformation, binarization: str
) -> Callable[..., tuple[TrainState, dict]]:
  """Returns `step(state, images_BxD, bin_key, train_key) -> (state, metrics)` (not jitted).

  `images_BxD` are uint8 levels (see `data.prepare_train_images`); the loss is the
  batch mean of -ELBO in nats per image. `metrics` holds batch means of
  `neg_elbo`, `reconstruction` (E_q log p(x|z)) and `kl`.
  """
  data_lib.check_binarization(binarization)

  def loss_fn(params, key, x_BxD):
    terms = objectives.batch_elbo(model, params, key, x_BxD)
    return -jnp.mean(terms.elbo), terms

  def step(state: TrainState, images_BxD, bin_key, train_key):
    x_BxD = data_lib.train_targets(bin_key, images_BxD, binarization)
    z_key = jax.random.fold_in(train_key, state.step)
    (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, z_key, x_BxD)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"neg_elbo": loss, "reconstruction": jnp.mean(terms.reconstruction), "kl": jnp.mean(terms.kl)}
    return TrainState(state.step + 1, params, opt_state), metrics

  return step


def epoch_batches(key: jax.Array, num_examples: int, batch_size: int) -> tuple[jax.Array, jax.Array]:
  """A permutation of the data cut into full batches; the remainder is dropped.

  Returns (indices [num_batches, batch_size], binarization keys [num_batches]).
  """
  perm_key, bin_key = jax.random.split(key)
  num_batches = num_examples // batch_size
  perm = jax.random.permutation(perm_key, num_examples)[: num_batches * batch_size]
  bin_keys = jax.vmap(functools.partial(jax.random.fold_in, bin_key))(jnp.arange(num_batches))
  return perm.reshape(num_batches, batch_size), bin_keys


def make_train_epoch(
    model: nn.Module, optimizer: optax.GradientTransformation, batch_size: int, binarization: str
) -> Callable[..., tuple[TrainState, dict]]:
  """Returns a jitted `epoch(state, images_NxD, epoch_key, train_key) -> (state, metrics)`.

  The whole epoch is one compiled call: `lax.scan` over the batches of a
  permutation (drawn from `epoch_key`) of the device-resident uint8 images.
  `metrics` are means over the epoch's batches. The input state is donated.
  """
  step = make_train_step(model, optimizer, binarization)

  @functools.partial(jax.jit, donate_argnums=0)
  def epoch(state: TrainState, images_NxD: jax.Array, epoch_key: jax.Array, train_key: jax.Array):
    batch_indices, bin_keys = epoch_batches(epoch_key, images_NxD.shape[0], batch_size)

    def body(state, batch):
      indices_B, bin_key = batch
      return step(state, images_NxD[indices_B], bin_key, train_key)

    state, metrics = jax.lax.scan(body, state, (batch_indices, bin_keys))
    return state, jax.tree.map(jnp.mean, metrics)

  return epoch


def make_optimizer(config) -> optax.GradientTransformation:
  """Adam with the run's learning rate (`config.learning_rate`)."""
  return optax.adam(config.learning_rate)
