"""Super-resolution from block counts: the Poisson-binomial terms against enumeration, the
conditional pixels against Bayes' rule by enumeration, and the baselines' shapes and sums."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxvae
from jaxvae import superres


def _enumerate_block(p_F):
  """Every binary pattern of one block with its probability under independent Bernoulli(p)."""
  patterns = np.array(list(itertools.product([0, 1], repeat=len(p_F))), np.float64)
  return patterns, np.prod(np.where(patterns == 1, p_F, 1 - p_F), axis=1)


def test_poisson_binomial_pmf_and_conditionals_match_enumeration():
  logits_BxF = 3.0 * jax.random.normal(jax.random.key(0), (5, 4))
  p_BxF = np.asarray(jax.nn.sigmoid(logits_BxF), np.float64)
  log_pmf = np.asarray(superres.poisson_binomial_log_pmf(logits_BxF))
  logits_D = superres.from_blocks(jnp.tile(logits_BxF, (40, 1))[:196][None], 2)[0]  # every block one of the five
  x_D = (jax.random.uniform(jax.random.key(1), (784,)) < 0.4).astype(jnp.float32)
  counts_B = superres.block_counts(x_D[None], 2)[0]
  probs_D = np.asarray(superres.conditional_probs(logits_D, counts_B, 2))
  blocks = np.asarray(superres.to_blocks(logits_D[None], 2)[0])
  probs_BxF = np.asarray(superres.to_blocks(jnp.asarray(probs_D)[None], 2)[0])
  for b in range(5):
    patterns, weights = _enumerate_block(p_BxF[b])
    pmf = np.bincount(patterns.sum(1).astype(int), weights, minlength=5)
    np.testing.assert_allclose(np.exp(log_pmf[b]), pmf, atol=1e-6)
  for b in range(196):
    patterns, weights = _enumerate_block(np.asarray(jax.nn.sigmoid(blocks[b]), np.float64))
    given = patterns.sum(1) == counts_B[b]
    expected = weights[given] @ patterns[given] / weights[given].sum()  # Bayes' rule over the patterns
    np.testing.assert_allclose(probs_BxF[b], expected, atol=2e-5)
  np.testing.assert_allclose(superres.block_counts(jnp.asarray(probs_D)[None], 2)[0], counts_B, atol=1e-4)
  assert superres.count_log_likelihood(logits_D, counts_B, 2) < 0
  grad = jax.grad(superres.count_log_likelihood)(logits_D, counts_B, 2)
  assert np.all(np.isfinite(grad)) and np.any(grad != 0)


def test_blocks_round_trip_and_baselines_keep_the_counts():
  x = (jax.random.uniform(jax.random.key(2), (3, 784)) < 0.3).astype(jnp.float32)
  for factor in superres.FACTORS:
    np.testing.assert_array_equal(superres.from_blocks(superres.to_blocks(x, factor), factor), x)
    counts = superres.block_counts(x, factor)
    assert counts.shape == (3, (28 // factor) ** 2) and float(counts.sum()) == float(x.sum())
    fills = superres.baselines(jnp.full(784, 0.2), counts, factor)
    assert list(fills) == list(superres.BASELINES)
    for name in ("nearest", "mean image given the counts"):  # these two put each block's ink back in it
      np.testing.assert_allclose(superres.block_counts(fills[name], factor), counts, atol=1e-3)
    assert fills["bilinear"].shape == (3, 784)
    nats, accuracy = superres.pixel_scores(x, fills["mean image given the counts"])
    assert nats.shape == accuracy.shape == (3,) and np.all(nats > 0)
  with pytest.raises(ValueError, match="must be at least 2 and divide"):
    superres.to_blocks(x, 3)
  with pytest.raises(ValueError, match="not uint8 intensities"):
    superres.mean_image_given_counts(jnp.full(784, 33.0), counts, 4)


def test_upscale_is_consistent_with_the_counts_and_independent_of_batching():
  model = jaxvae.VAE(latent_dim=2, hidden_dim=16)
  params = model.init(jax.random.key(3), jnp.zeros((1, 784)))
  x = (jax.random.uniform(jax.random.key(4), (4, 784)) < 0.2).astype(jnp.float32)
  counts = superres.block_counts(x, 4)
  keys = jax.random.split(jax.random.key(5), 4)
  probs = superres.upscale(model, params, keys, counts, 4, num_steps=20, num_samples=50)
  np.testing.assert_allclose(superres.block_counts(probs, 4), counts, atol=1e-3)
  assert np.all((probs >= 0) & (probs <= 1))
  half = superres.upscale(model, params, keys[2:], counts[2:], 4, num_steps=20, num_samples=50)
  np.testing.assert_allclose(half, probs[2:], atol=1e-5)
