"""The ELBO and the importance-weighted bound, written for one example.

Shapes: D = data dimension (784), L = latent dimension, B = batch, K = number of
importance samples. All values are in nats per example.

Training variants (Burda et al. 2015; Kingma et al. 2016): `training_objective`
picks the per-example objective (the ELBO averaged over k samples, "VAE-k", or
the k-sample IWAE bound), and `KLSchedule` turns a batch of ELBO terms into a
loss with a KL weight beta, a linear warm-up of that weight and free bits.
"""

import dataclasses
import functools
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxvae import distributions
from jaxvae import models


class Elbo(NamedTuple):
  """ELBO = reconstruction - kl, each a scalar (one example) or [B] (batched)."""

  elbo: jax.Array
  reconstruction: jax.Array  # E_q[log p(x | z)], one-sample estimate
  kl: jax.Array  # KL(q(z | x) || N(0, I)), analytic
  kl_dims: jax.Array | None = None  # [L] (or [B, L]) the KL of each latent dimension, where defined


def log_likelihood(model: nn.Module, params, x_D: jax.Array, z_L: jax.Array, **decoder_inputs) -> jax.Array:
  """log p(x | z) for ONE example, nats: independent Bernoulli pixels with logits `model.decode(z)`,
  or the model's own `log_likelihood(x, z)` where the decoder reads x too (an autoregressive one,
  `jaxvae.sequence.SequenceVAE`, which also takes `decoder_inputs` such as word dropout's mask)."""
  if hasattr(model, "log_likelihood"):
    return model.apply(params, x_D, z_L, method=model.log_likelihood, **decoder_inputs)
  return distributions.bernoulli_log_likelihood(x_D, model.apply(params, z_L, method=model.decode))


def elbo(model: nn.Module, params, key: jax.Array, x_D: jax.Array, **decoder_inputs) -> Elbo:
  """Single-sample ELBO estimate for ONE example x_D (targets in [0, 1], or a sequence).

  Args:
    model: a module with `encode` (x -> mean, logvar) and `decode` (z -> logits)
      or `log_likelihood` (x, z -> log p(x | z); see `log_likelihood`).
    params: its variables, as returned by `model.init`.
    key: PRNG key for the reparameterized sample z ~ q(z | x).
    x_D: [D] one example.
    **decoder_inputs: passed to the model's `log_likelihood` (e.g. word dropout's `keep_T`).

  Returns:
    `Elbo` of scalars. For a `models.TwoLayerVAE`, see `two_layer_elbo`.
  """
  if isinstance(model, models.TwoLayerVAE):
    return two_layer_elbo(model, params, key, x_D)
  mean_L, logvar_L = model.apply(params, x_D, method=model.encode)
  z_L = distributions.reparameterize(key, mean_L, logvar_L)
  reconstruction = log_likelihood(model, params, x_D, z_L, **decoder_inputs)
  kl_L = distributions.kl_per_dimension(mean_L, logvar_L)
  kl = jnp.sum(kl_L)
  return Elbo(reconstruction - kl, reconstruction, kl, kl_L)


def _two_layer_draw(model: models.TwoLayerVAE, params, x_D, mean_H, logvar_H, key: jax.Array):
  """One draw h1 ~ q(h1 | x) (given its mean, logvar), z ~ q(z | h1) for ONE example.

  Returns (log p(x | h1), log q(h1 | x) - log p(h1 | z) per dimension [H1], z [L],
  and q(z | h1)'s mean and logvar [L]).
  """
  h1_key, z_key = jax.random.split(key)
  h1_H = distributions.reparameterize(h1_key, mean_H, logvar_H)
  mean_L, logvar_L = model.apply(params, h1_H, method=model.encode_top)
  z_L = distributions.reparameterize(z_key, mean_L, logvar_L)
  prior_mean_H, prior_logvar_H = model.apply(params, z_L, method=model.decode_top)
  log_px = distributions.bernoulli_log_likelihood(x_D, model.apply(params, h1_H, method=model.decode_h1))
  kl_h1_H = (distributions.gaussian_log_density(h1_H, mean_H, logvar_H)
             - distributions.gaussian_log_density(h1_H, prior_mean_H, prior_logvar_H))
  return log_px, kl_h1_H, z_L, mean_L, logvar_L


def two_layer_elbo(model: models.TwoLayerVAE, params, key: jax.Array, x_D: jax.Array) -> Elbo:
  """Single-sample ELBO of a two-stochastic-layer model for ONE example x_D.

  With h1 ~ q(h1 | x) and z ~ q(z | h1):
    ELBO = log p(x | h1) - [log q(h1 | x) - log p(h1 | z)] - KL(q(z | h1) || N(0, I)),
  the h1 term sampled, the top KL analytic given h1. `kl` is the sum of both
  terms and `kl_dims` [H1 + L] their per-dimension parts (h1's first), which free
  bits act on.
  """
  mean_H, logvar_H = model.apply(params, x_D, method=model.encode_h1)
  reconstruction, kl_h1_H, _, mean_L, logvar_L = _two_layer_draw(model, params, x_D, mean_H, logvar_H, key)
  kl_dims = jnp.concatenate([kl_h1_H, distributions.kl_per_dimension(mean_L, logvar_L)])
  kl = jnp.sum(kl_dims)
  return Elbo(reconstruction - kl, reconstruction, kl, kl_dims)


def reconstruction_log_likelihood(model: nn.Module, params, x_D: jax.Array) -> jax.Array:
  """log p(x | z = E_q[z | x]) for ONE example: the deterministic reconstruction's fit, nats.

  Minus this is the "reconstruction error" anomaly score, for a VAE and an AE alike.
  """
  mean_L, _ = model.apply(params, x_D, method=model.encode)
  return log_likelihood(model, params, x_D, mean_L)


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


# What each `Config.model` is evaluated with (per epoch, on the test set): a per-example
# objective(model, params, key, x_D) -> Elbo. `training_objective` gives what it trains on.
OBJECTIVES = {"vae": elbo, "ae": autoencoder}


def multi_sample_elbo(model: nn.Module, params, key: jax.Array, x_D: jax.Array, num_samples: int) -> Elbo:
  """The ELBO averaged over `num_samples` draws of z for ONE example: Burda et al.'s "VAE" with k
  samples. The same bound as `elbo`, with a lower-variance gradient (the encoder runs once)."""
  terms = jax.vmap(lambda k: elbo(model, params, k, x_D))(jax.random.split(key, num_samples))
  return jax.tree.map(lambda a: jnp.mean(a, axis=0), terms)


def importance_sampler(model: nn.Module, params, x_D: jax.Array):
  """For ONE example, a function sample_key -> (log w, log p(x | z)) at one draw from q.

  log w = log p(x, z) - log q(z | x) (for a `models.TwoLayerVAE`, z = (h1, z) and
  log w = log p(x | h1) + log p(h1 | z) + log p(z) - log q(h1 | x) - log q(z | h1)).
  The first encoder runs once, here, for all draws.
  """
  if isinstance(model, models.TwoLayerVAE):
    mean_H, logvar_H = model.apply(params, x_D, method=model.encode_h1)

    def two_layer_sample(sample_key):
      log_px, kl_h1_H, z_L, mean_L, logvar_L = _two_layer_draw(model, params, x_D, mean_H, logvar_H, sample_key)
      log_pz = distributions.standard_normal_log_density(z_L)
      log_qz = distributions.gaussian_log_likelihood(z_L, mean_L, logvar_L)
      return log_px - jnp.sum(kl_h1_H) + log_pz - log_qz, log_px

    return two_layer_sample
  mean_L, logvar_L = model.apply(params, x_D, method=model.encode)

  def sample(sample_key):
    z_L = distributions.reparameterize(sample_key, mean_L, logvar_L)
    log_px = log_likelihood(model, params, x_D, z_L)
    log_pz = distributions.standard_normal_log_density(z_L)
    log_qz = distributions.gaussian_log_likelihood(z_L, mean_L, logvar_L)
    return log_px + log_pz - log_qz, log_px

  return sample


def iwae_objective(model: nn.Module, params, key: jax.Array, x_D: jax.Array, num_samples: int) -> Elbo:
  """The k-sample importance-weighted bound as a training objective for ONE example (IWAE).

  `elbo` holds the bound log (1/k) sum_k w_k (with k = 1, the ELBO with a sampled
  rather than analytic KL: the same in expectation); `reconstruction` and `kl`
  hold the mean of log p(x | z_k) and of log p(x | z_k) - log w_k (a sampled
  KL), for the logs. Sample k uses split(key, k)[k], as in `log_importance_weights`.
  """
  log_w_K, log_px_K = jax.vmap(importance_sampler(model, params, x_D))(jax.random.split(key, num_samples))
  bound = jax.nn.logsumexp(log_w_K) - jnp.log(num_samples)
  mean_log_px = jnp.mean(log_px_K)
  return Elbo(bound, mean_log_px, mean_log_px - jnp.mean(log_w_K))


TRAINING_OBJECTIVES = ("elbo", "iwae")


def training_objective(name: str, num_samples: int = 1):
  """The per-example objective(model, params, key, x_D) -> Elbo that training maximizes.

  "elbo": the ELBO (`elbo` for one sample, `multi_sample_elbo` for more);
  "iwae": the `num_samples`-sample IWAE bound (`iwae_objective`).
  """
  if name not in TRAINING_OBJECTIVES:
    raise ValueError(f"unknown training objective {name!r}; choose one of {', '.join(TRAINING_OBJECTIVES)}")
  if name == "iwae":
    return functools.partial(iwae_objective, num_samples=num_samples)
  return elbo if num_samples == 1 else functools.partial(multi_sample_elbo, num_samples=num_samples)


@dataclasses.dataclass(frozen=True)
class KLSchedule:
  """The loss of a batch of ELBO terms with a reweighted, possibly floored KL term.

  loss(step) = -mean_B reconstruction + weight(step) * KL_term, where
  weight(step) = beta * min(1, (step + 1) / warmup_steps) (beta throughout when
  warmup_steps = 0: a linear KL warm-up, Sonderby et al. 2016), and KL_term is the
  batch-mean KL, or with free bits lambda > 0, sum_l max(lambda, mean_B KL_l): a
  dimension whose KL is below lambda nats is not pushed further towards the prior
  (Kingma et al. 2016). beta = 1, no warm-up, no free bits is -mean ELBO.
  """

  beta: float = 1.0
  warmup_steps: int = 0
  free_bits: float = 0.0

  def weight(self, step: jax.Array) -> jax.Array:
    """The KL weight at (0-based) optimizer step `step`."""
    if not self.warmup_steps:
      return jnp.asarray(self.beta, jnp.float32)
    return self.beta * jnp.minimum(1.0, (step + 1) / self.warmup_steps)

  def kl_term(self, terms_B: Elbo) -> jax.Array:
    if not self.free_bits:
      return jnp.mean(terms_B.kl)
    return jnp.sum(jnp.maximum(self.free_bits, jnp.mean(terms_B.kl_dims, axis=0)))

  def loss(self, terms_B: Elbo, step: jax.Array) -> jax.Array:
    return -jnp.mean(terms_B.reconstruction) + self.weight(step) * self.kl_term(terms_B)


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
  sampler = importance_sampler(model, params, x_D)
  log_weight = lambda sample_key: sampler(sample_key)[0]

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
