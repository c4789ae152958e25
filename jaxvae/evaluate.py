"""Test-set ELBO and the importance-weighted NLL estimate, per example, in nats.

Each example i gets the key `split(key, N)[i]`, so results do not depend on the
evaluation batch size.
"""

import functools
import time

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxvae import models
from jaxvae import objectives


@functools.partial(jax.jit, static_argnames=("model", "batch_size", "objective"))
def elbo_terms(model: nn.Module, params, key: jax.Array, x_NxD: jax.Array, batch_size: int = 1000,
               objective=objectives.elbo):
  """Per-example single-sample ELBO (or another `objective`) over a data set, in one compiled call.

  Args:
    x_NxD: [N, D] targets in [0, 1] (e.g. `data.test_targets`).

  Returns:
    `objectives.Elbo` of [N] arrays, nats per example.
  """
  keys_N = jax.random.split(key, x_NxD.shape[0])
  one = lambda args: objective(model, params, *args)
  return jax.lax.map(one, (keys_N, x_NxD), batch_size=batch_size)


@functools.partial(jax.jit, static_argnames=("model", "batch_size"))
def posteriors(model: nn.Module, params, x_NxD: jax.Array, batch_size: int = 1000) -> tuple[jax.Array, jax.Array]:
  """q(z | x) of a whole data set, `batch_size` examples at a time: (mean, logvar), each [N, L]."""
  encode = lambda x_D: model.apply(params, x_D, method=model.encode)
  return jax.lax.map(encode, x_NxD, batch_size=batch_size)


@functools.partial(jax.jit, static_argnames=("model", "batch_size", "method"))
def latent_means(model: nn.Module, params, x_NxD: jax.Array, batch_size: int = 1000,
                 method: str = "encode") -> jax.Array:
  """Posterior means E_q[z | x] of a whole data set, encoded `batch_size` examples at a time.

  `method` names the encoder (for a `models.TwoLayerVAE`, "encode_h1" gives E_q[h1 | x]).

  Returns:
    [N, L] latent means.
  """
  encode = lambda x_D: model.apply(params, x_D, method=getattr(model, method))[0]
  return jax.lax.map(encode, x_NxD, batch_size=batch_size)


def active_units(model: nn.Module, params, x_NxD: jax.Array, threshold: float = 0.01,
                 method: str = "encode") -> int:
  """Latent dimensions whose posterior mean varies over the data: Var_x(E_q[z_l | x]) > threshold.

  The activity statistic of Burda et al. (2015), section 5.2, with their threshold 0.01.
  For a `models.TwoLayerVAE`, the top layer z, through the mean path (`model.encode`);
  `h1_active_units` counts the lower layer.
  """
  variance_L = jnp.var(latent_means(model, params, x_NxD, method=method), axis=0)
  return int(jnp.sum(variance_L > threshold))


def h1_active_units(model: models.TwoLayerVAE, params, x_NxD: jax.Array, threshold: float = 0.01) -> int:
  """`active_units` of the lower layer of a two-layer model: Var_x(E_q[h1 | x]) > threshold."""
  return active_units(model, params, x_NxD, threshold, method="encode_h1")


@functools.partial(jax.jit, static_argnames=("model", "num_samples", "chunk_size"))
def _iwae_batch(model, params, keys_B, x_BxD, num_samples, chunk_size):
  bound = functools.partial(objectives.iwae_bound, model, params, num_samples=num_samples, chunk_size=chunk_size)
  return jax.vmap(bound)(keys_B, x_BxD)


def iwae_bounds(
    model: nn.Module,
    params,
    key: jax.Array,
    x_NxD,
    num_samples: int = 5000,
    batch_size: int = 100,
    chunk_size: int = 500,
) -> np.ndarray:
  """Per-example IWAE bound with `num_samples` importance samples; -mean is the test NLL.

  Memory is bounded by batch_size * chunk_size * D floats whatever N and K are
  (100 * 500 * 784 * 4 bytes = 157 MB by default). Logs progress.

  Returns:
    [N] float64 numpy array of log p(x) lower bounds, nats.
  """
  n = x_NxD.shape[0]
  keys_N = jax.random.split(key, n)
  bounds = []
  start = last_log = time.perf_counter()
  batch_size = min(batch_size, n)
  for lo in range(0, n, batch_size):
    hi = min(lo + batch_size, n)
    # The last batch is padded to full size, so there is a single compilation.
    idx = np.minimum(np.arange(lo, lo + batch_size), n - 1)
    batch = np.asarray(_iwae_batch(model, params, keys_N[idx], x_NxD[idx], num_samples, chunk_size))
    bounds.append(batch[: hi - lo])
    if time.perf_counter() - last_log > 30:
      last_log = time.perf_counter()
      logging.info("IWAE k=%d: %d/%d images, %.0f s", num_samples, hi, n, last_log - start)
  return np.concatenate(bounds).astype(np.float64)
