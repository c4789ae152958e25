import jax
import jax.numpy as jnp
import numpy as np
import optax
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


def test_bernoulli_single_softplus_form_equals_two_log_sigmoids():
  # The one-exp form and optax's two-log-sigmoid cross-entropy, value and gradient, over every
  # scale of logit (0 included, where max(l, 0) has a kink) and targets in [0, 1].
  logits = jnp.concatenate([jnp.linspace(-40.0, 40.0, 801), jnp.array([0.0, 88.0, -88.0, 1e-7, -1e-7])])
  for x in (0.0, 1.0, 0.3):
    x_D = jnp.full_like(logits, x)
    value, grad = jax.vmap(jax.value_and_grad(lambda l: jaxvae.bernoulli_log_density(x, l)))(logits)
    reference = -optax.sigmoid_binary_cross_entropy(logits, x_D)
    np.testing.assert_allclose(value, reference, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(grad, x - jax.nn.sigmoid(logits), rtol=1e-6, atol=2.5e-7)  # ulp(1)


def test_bernoulli_matches_direct_formula_at_moderate_logits():
  x = jnp.array([0.0, 1.0, 1.0, 0.25])
  logits = jnp.array([-2.0, 3.0, 0.1, 0.7])
  p = 1 / (1 + np.exp(-np.asarray(logits)))
  expected = np.sum(np.asarray(x) * np.log(p) + (1 - np.asarray(x)) * np.log(1 - p))
  np.testing.assert_allclose(jaxvae.bernoulli_log_likelihood(x, logits), expected, rtol=1e-6)
