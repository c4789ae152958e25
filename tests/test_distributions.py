import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxvae


def test_kl_matches_monte_carlo():
  key_m, key_v, key_z = jax.random.split(jax.random.key(0), 3)
  mean = jax.random.normal(key_m, (5,))
  logvar = jax.random.normal(key_v, (5,)) * 0.5
  z = jaxvae.reparameterize(key_z, jnp.broadcast_to(mean, (200_000, 5)), jnp.broadcast_to(logvar, (200_000, 5)))
  mc = jnp.mean(jaxvae.gaussian_log_likelihood(z, mean, logvar) - jaxvae.standard_normal_log_density(z))
  analytic = jaxvae.kl_to_standard_normal(mean, logvar)
  assert analytic > 0
  np.testing.assert_allclose(mc, analytic, atol=0.03)


def test_kl_is_zero_at_the_prior():
  assert jaxvae.kl_to_standard_normal(jnp.zeros(7), jnp.zeros(7)) == 0.0


def test_reparameterize_is_deterministic_per_key_and_differs_across_keys():
  mean, logvar = jnp.arange(4.0), jnp.full((4,), -1.0)
  a = jaxvae.reparameterize(jax.random.key(1), mean, logvar)
  b = jaxvae.reparameterize(jax.random.key(1), mean, logvar)
  c = jaxvae.reparameterize(jax.random.key(2), mean, logvar)
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)


def test_reparameterize_is_differentiable():
  grad = jax.grad(lambda m, lv: jnp.sum(jaxvae.reparameterize(jax.random.key(0), m, lv)), argnums=(0, 1))
  g_mean, g_logvar = grad(jnp.zeros(3), jnp.zeros(3))
  np.testing.assert_array_equal(g_mean, jnp.ones(3))
  assert np.all(np.abs(g_logvar) > 0)


def test_gaussian_log_likelihood_matches_formula():
  x, mean, logvar = jnp.array([0.3, -1.0]), jnp.array([0.0, 1.0]), jnp.array([0.0, np.log(4.0)])
  expected = sum(-0.5 * np.log(2 * np.pi * v) - 0.5 * (xi - m) ** 2 / v
                 for xi, m, v in zip([0.3, -1.0], [0.0, 1.0], [1.0, 4.0]))
  np.testing.assert_allclose(jaxvae.gaussian_log_likelihood(x, mean, logvar), expected, rtol=1e-6)


@pytest.mark.parametrize("logit", [1000.0, -1000.0, 1e4, -1e4])
def test_bernoulli_term_and_gradient_finite_at_extreme_logits(logit):
  x = jnp.array([0.0, 1.0, 0.5])
  logits = jnp.full((3,), logit)
  value, grad = jax.value_and_grad(lambda l: jaxvae.bernoulli_log_likelihood(x, l))(logits)
  assert np.isfinite(value)
  assert np.all(np.isfinite(grad))
  # The wrong pixel costs |logit| nats, the right one nothing.
  np.testing.assert_allclose(value, -(1.5 * abs(logit)), rtol=1e-6)


def test_bernoulli_matches_direct_formula_at_moderate_logits():
  x = jnp.array([0.0, 1.0, 1.0, 0.25])
  logits = jnp.array([-2.0, 3.0, 0.1, 0.7])
  p = 1 / (1 + np.exp(-np.asarray(logits)))
  expected = np.sum(np.asarray(x) * np.log(p) + (1 - np.asarray(x)) * np.log(1 - p))
  np.testing.assert_allclose(jaxvae.bernoulli_log_likelihood(x, logits), expected, rtol=1e-6)
