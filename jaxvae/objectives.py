"""The ELBO and the importance-weighted bound, written for one example.

Shapes: D = data dimension (784), L = latent dimension, B = batch, K = number of
importance samples. All values are in nats per example.
"""

import functools
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxvae import distributions


class Elbo(NamedTuple):
  """ELBO = reconstruction - kl, each a scalar (one example) or [B] (batched)."""

  elbo: jax.Array
  reconstruction: jax.Array  # E_q[log p(x | z)], one-sample estimate
  kl: jax.Array  # KL(q(z | x) || N(0, I)), analytic


def elbo(model: nn.Module, params, key: jax.Array, x_D: jax.Array) -> Elbo:
  """Single-sample ELBO estimate for ONE example x_D (targets in [0, 1]).

  Args:
    model: a module with `encode` (x -> mean, logvar) and `decode` (z -> logits).
    params: its variables, as returned by `model.init`.
    key: PRNG key for the reparameterized sample z ~ q(z | x).
    x_D: [D] one example.

  Returns:
    `Elbo` of scalars.
  """
  mean_L, logvar_L = model.apply(params, x_D, method=model.encode)
  z_L = distributions.reparameterize(key, mean_L, logvar_L)
  logits_D = model.apply(params, z_L, method=model.decode)
  reconstruction = distributions.bernoulli_log_likelihood(x_D, logits_D)
  kl = distributions.kl_to_standard_normal(mean_L, logvar_L)
  return Elbo(reconstruction - kl, reconstruction, kl)


def reconstruction_log_likelihood(model: nn.Module, params, x_D: jax.Array) -> jax.Array:
  """log p(x | z = E_q[z | x]) for ONE example: the deterministic reconstruction's fit, nats.

  Minus this is the "reconstruction error" anomaly score, for a VAE and an AE alike.
  """
  mean_L, _ = model.apply(params, x_D, method=model.encode)
  return distributions.bernoulli_log_likelihood(x_D, model.apply(params, mean_L, method=model.decode))


def autoencoder(model: nn.Module, params, key: jax.Array, x_D: jax.Array) -> Elbo:
  """The objective of the deterministic autoencoder baseline, for ONE example.

  The same networks as the VAE, but z is the encoder mean (no noise: `key` is
  unused, the log-variance outputs are ignored) and there is no KL term. `elbo`
  here is therefore just log p(x | z = encoder(x)): it is not a bound on log p(x),
  because an autoencoder defines no density of x.
  """
  del key
  reconstruction = reconstruction_log_likelihood(model, params, x_D)
  return Elbo(reconstruction, reconstruction, jnp.zeros_like(reconstruction))


# What each `Config.model` trains: a per-example objective(model, params, key, x_D) -> Elbo.
OBJECTIVES = {"vae": elbo, "ae": autoencoder}


def batch_elbo(model: nn.Module, params, key: jax.Array, x_BxD: jax.Array, objective=elbo) -> Elbo:
  """`objective` (default `elbo`) vmapped over a batch, an independent key per example.

  Returns `Elbo` of [B].
  """
  keys_B = jax.random.split(key, x_BxD.shape[0])
  return jax.vmap(functools.partial(objective, model, params))(keys_B, x_BxD)


def log_importance_weights(
    model: nn.Module, params, key: jax.Array, x_D: jax.Array, num_samples: int, chunk_size: int = 500
) -> jax.Array:
  """log w_k = log p(x, z_k) - log q(z_k | x) for K samples z_k ~ q(z | x), ONE example.

  The encoder runs once; the decoder runs on chunks of `chunk_size` samples inside
  `lax.map`, so memory is O(chunk_size * D) whatever K is.

  Returns:
    [K] log-weights in nats.
  """
  mean_L, logvar_L = model.apply(params, x_D, method=model.encode)

  def log_weight(sample_key):
    z_L = distributions.reparameterize(sample_key, mean_L, logvar_L)
    logits_D = model.apply(params, z_L, method=model.decode)
    log_px_given_z = distributions.bernoulli_log_likelihood(x_D, logits_D)
    log_pz = distributions.standard_normal_log_density(z_L)
    log_qz = distributions.gaussian_log_likelihood(z_L, mean_L, logvar_L)
    return log_px_given_z + log_pz - log_qz

  # Sample k always uses split(key, K)[k], so the result does not depend on chunk_size;
  # the last chunk is padded with repeated keys whose weights are dropped.
  chunk_size = min(chunk_size, num_samples)
  num_chunks = -(-num_samples // chunk_size)
  keys_K = jax.random.split(key, num_samples)
  keys = jnp.concatenate([keys_K, keys_K[: num_chunks * chunk_size - num_samples]])
  log_w = jax.lax.map(jax.vmap(log_weight), keys.reshape(num_chunks, chunk_size)).reshape(-1)
  return log_w[:num_samples]


def iwae_bound(
    model: nn.Module, params, key: jax.Array, x_D: jax.Array, num_samples: int, chunk_size: int = 500
) -> jax.Array:
  """Importance-weighted bound log (1/K) sum_k w_k for ONE example (Burda et al. 2015).

  K = 1 is the ELBO estimated with the sampled (not analytic) KL; the bound
  tightens as K grows, and -iwae_bound with K = 5000 is the standard test NLL
  estimate. Batch with `batch_iwae_bound`.

  Returns:
    scalar, nats.
  """
  log_w_K = log_importance_weights(model, params, key, x_D, num_samples, chunk_size)
  return jax.nn.logsumexp(log_w_K) - jnp.log(num_samples)


def batch_iwae_bound(
    model: nn.Module, params, key: jax.Array, x_BxD: jax.Array, num_samples: int, chunk_size: int = 500
) -> jax.Array:
  """`iwae_bound` vmapped over a batch with a key per example. Returns [B] nats."""
  keys_B = jax.random.split(key, x_BxD.shape[0])
  bound = functools.partial(iwae_bound, model, params, num_samples=num_samples, chunk_size=chunk_size)
  return jax.vmap(bound)(keys_B, x_BxD)
