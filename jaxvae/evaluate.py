"""Test-set ELBO and the importance-weighted NLL estimate, per example, in nats.

Each example i gets the key `split(key, N)[i]`, so results do not depend on the
evaluation batch size. `elbo_terms` draws one z per example (the per-epoch curve);
`elbo_estimate` draws as many as its Monte-Carlo error target needs and states both
of its errors (over images and over draws).
"""

import contextlib
import functools
import os
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxvae import models
from jaxvae import objectives
from jaxvae import progress as progress_lib
from jaxvae.errors import ConfigError


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


class ElboEstimate(NamedTuple):
  """A data set's mean ELBO terms, each image's ELBO averaged over `num_samples` draws of z; nats
  per example. Two errors: over images (the test set is a sample of the data distribution) and
  over the draws of z (how far the number is from the checkpoint's exact mean ELBO on these images)."""

  elbo: float
  reconstruction: float
  kl: float
  stderr: float  # over images: std of the per-image means / sqrt(N)
  mc_stderr: float  # over draws: sqrt(sum_n Var_z[ELBO_n] / S) / N
  num_samples: int  # S draws per image


@functools.partial(jax.jit, static_argnames=("model", "num_samples", "objective"))
def _elbo_moments(model, params, key, x_NxD, num_samples, objective):
  """Per image: the mean ELBO terms over `num_samples` draws (a key per image, split per draw) and
  the draws' ELBO variance. ([N] Elbo of means, [N] variances)."""
  def one(args):
    key, x_D = args
    terms = jax.vmap(lambda k: objective(model, params, k, x_D))(jax.random.split(key, num_samples))
    return objectives.Elbo(*(jnp.mean(t) for t in terms[:3])), jnp.var(terms.elbo, ddof=1)
  batch = max(1, min(x_NxD.shape[0], 2**14 // num_samples))  # images per step: at most ~16k draws at once
  return jax.lax.map(one, (jax.random.split(key, x_NxD.shape[0]), x_NxD), batch_size=batch)


def elbo_estimate(model: nn.Module, params, key: jax.Array, x_NxD: jax.Array, target_mc_stderr: float = 0.01,
                  pilot_samples: int = 16, max_samples: int = 1024, objective=objectives.elbo) -> ElboEstimate:
  """The data set's mean ELBO with its Monte-Carlo error below `target_mc_stderr` nats.

  A pilot of `pilot_samples` draws per image measures the draws' variance; the estimate then takes
  S = the fewest draws that bring the error of the mean under 0.8 x the target (at least the pilot's,
  at most `max_samples`), drawn afresh, so the estimate is unbiased and its `mc_stderr` is stated
  (above the target only if `max_samples` capped S). Deterministic given `key`.
  """
  if pilot_samples < 2 or max_samples < pilot_samples or not target_mc_stderr > 0:
    raise ValueError(f"need 2 <= pilot_samples <= max_samples and a positive target, got {pilot_samples}, "
                     f"{max_samples}, {target_mc_stderr}")
  pilot_key, key = jax.random.split(key)
  n = x_NxD.shape[0]
  _, variance_N = _elbo_moments(model, params, pilot_key, x_NxD, pilot_samples, objective)
  # Planned for 0.8 x the target: the pilot's variance is itself an estimate.
  needed = float(np.sum(np.asarray(variance_N, np.float64))) / (0.8 * n * target_mc_stderr) ** 2
  num_samples = int(min(max(pilot_samples, np.ceil(needed)), max_samples))
  terms_N, variance_N = _elbo_moments(model, params, key, x_NxD, num_samples, objective)
  elbo_N, reconstruction_N, kl_N = (np.asarray(t, np.float64) for t in terms_N[:3])
  return ElboEstimate(
      elbo=float(elbo_N.mean()), reconstruction=float(reconstruction_N.mean()), kl=float(kl_N.mean()),
      stderr=float(elbo_N.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan"),
      mc_stderr=float(np.sqrt(np.sum(np.asarray(variance_N, np.float64)) / num_samples) / n),
      num_samples=num_samples)


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
    progress: str | None = "IWAE",
) -> np.ndarray:
  """Per-example IWAE bound with `num_samples` importance samples; -mean is the test NLL.

  Memory is bounded by batch_size * chunk_size * D floats whatever N and K are
  (100 * 500 * 784 * 4 bytes = 157 MB by default; `iwae_memory` measures it).
  Prints progress every 30 s under the label `progress` (None: silent).

  Returns:
    [N] float64 numpy array of log p(x) lower bounds, nats.
  """
  n = x_NxD.shape[0]
  keys_N = jax.random.split(key, n)
  bounds = []
  batch_size = min(batch_size, n)
  with progress_lib.Progress(f"{progress} k={num_samples:,}", n) if progress else contextlib.nullcontext() as shown:
    for lo in range(0, n, batch_size):
      hi = min(lo + batch_size, n)
      # The last batch is padded to full size, so there is a single compilation.
      idx = np.minimum(np.arange(lo, lo + batch_size), n - 1)
      batch = np.asarray(_iwae_batch(model, params, keys_N[idx], x_NxD[idx], num_samples, chunk_size))
      bounds.append(batch[: hi - lo])
      if shown is not None:
        shown.advance(hi - lo)
  return np.concatenate(bounds).astype(np.float64)


def available_memory() -> int:
  """Bytes the evaluation may use on the first local device: its memory limit on an accelerator,
  else the host's available memory (MemAvailable), else its physical memory."""
  device = jax.local_devices()[0]
  stats = device.memory_stats() if device.platform != "cpu" else None
  if stats and stats.get("bytes_limit"):
    return int(stats["bytes_limit"])
  try:
    with open("/proc/meminfo", encoding="ascii") as meminfo:
      for line in meminfo:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except (OSError, ValueError, IndexError):
    pass
  return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def iwae_memory(model: nn.Module, params, example: jax.ShapeDtypeStruct, num_samples: int, batch_size: int,
                chunk_size: int) -> int:
  """Bytes of working memory one compiled `iwae_bounds` batch of examples shaped like `example`
  needs, by XLA's own account of the program (its arguments, temporaries and outputs), compiled
  for these shapes but not run."""
  keys = jax.ShapeDtypeStruct((batch_size,), jax.random.key(0).dtype)
  x = jax.ShapeDtypeStruct((batch_size, *example.shape), example.dtype)
  compiled = _iwae_batch.lower(model, params, keys, x, num_samples, chunk_size).compile()
  stats = compiled.memory_analysis()
  return int(stats.temp_size_in_bytes + stats.output_size_in_bytes + stats.argument_size_in_bytes)


def check_iwae_memory(model: nn.Module, params, example: jax.ShapeDtypeStruct, num_samples: int, batch_size: int,
                      chunk_size: int, num_examples: int | None = None, per_sample_floats: int | None = None,
                      fraction: float = 0.5) -> None:
  """Refuses (`ConfigError`), before any training, IWAE settings whose evaluation of `num_examples`
  examples shaped like `example` would need more than `fraction` of `available_memory()`. `params`
  may be shapes (`jax.eval_shape`). With `per_sample_floats`, the caller's upper bound of the floats
  one importance sample of one example holds (its activations), settings far below the limit pass
  at once; otherwise the program is compiled (not run) and measured (`iwae_memory`)."""
  if not num_samples:
    return
  budget = fraction * available_memory()
  chunk = min(chunk_size, num_samples)
  batch = min(batch_size, num_examples or batch_size)  # as `iwae_bounds` batches them
  if per_sample_floats is not None and 4 * batch * chunk * per_sample_floats <= budget / 4:
    return
  need = iwae_memory(model, params, example, num_samples, batch, chunk_size)
  if need > budget:
    raise ConfigError(
        f"the final IWAE estimate at eval_batch_size {batch_size} and iwae_chunk_size {chunk_size} would need "
        f"{need / 2**30:,.1f} GiB at once, more than half of the {available_memory() / 2**30:,.1f} GiB this "
        "machine has: lower eval_batch_size or iwae_chunk_size (the memory grows with their product)")
