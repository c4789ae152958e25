"""AIS and BDMC against brute force on a 2-D latent space, where quadrature gives log p(x)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxvae
from jaxvae import inference


@pytest.fixture(scope="module")
def toy():
  """A 2-D-latent decoder with a peaked posterior, three examples drawn from it, and their
  log p(x) by quadrature on a fine grid (the integrand is smooth: error far below 1e-3 nats)."""
  model = jaxvae.VAE(latent_dim=2, hidden_dim=16, output_dim=64, activation="tanh")
  params = jax.tree.map(lambda p: 3.0 * p, model.init(jax.random.key(0), jnp.zeros((1, 64))))
  x_NxD, z_NxL = inference.simulate(model, params, jax.random.key(1), 3)
  h = 16.0 / 800
  grid = jnp.stack(jnp.meshgrid(*[jnp.linspace(-8, 8, 801)] * 2), -1).reshape(-1, 2)
  logits_GxD = model.apply(params, grid, method=model.decode)
  log_joint_NxG = (jaxvae.bernoulli_log_likelihood(x_NxD[:, None], logits_GxD[None])
                   + jaxvae.standard_normal_log_density(grid)[None])
  log_px = jax.nn.logsumexp(log_joint_NxG, axis=1) + 2 * np.log(h)
  return model, params, x_NxD, z_NxL, np.asarray(log_px)


SETTINGS = inference.AISSettings(num_steps=500, num_chains=32, num_leapfrog=5, step_size=0.2)


def test_ais_matches_quadrature(toy):
  model, params, x_NxD, _, log_px = toy
  result = inference.batch_ais(model, params, jax.random.split(jax.random.key(2), 3), x_NxD, SETTINGS)
  estimate = np.asarray(inference.log_mean_exp(result.log_weights))
  stderr = np.asarray(inference.log_mean_exp_stderr(result.log_weights))
  assert np.all(np.abs(estimate - log_px) < 3 * stderr + 0.01), (estimate, stderr, log_px)
  assert np.all(stderr < 0.1)
  assert np.all(result.acceptance > 0.4) and np.all(result.acceptance < 0.95)
  # The posterior is far from the prior: importance sampling from the prior (a one-step
  # schedule) with as many samples is far noisier.
  one_step = inference.batch_ais(model, params, jax.random.split(jax.random.key(2), 3), x_NxD, dataclasses.replace(SETTINGS, num_steps=1))
  assert np.all(inference.log_mean_exp_stderr(one_step.log_weights) > 3 * stderr)


def test_bdmc_sandwiches_the_true_log_likelihood(toy):
  model, params, x_NxD, z_NxL, log_px = toy
  forward, reverse = inference.batch_bdmc(model, params, jax.random.split(jax.random.key(3), 3), x_NxD, z_NxL, SETTINGS)
  lower = np.asarray(inference.log_mean_exp(forward.log_weights))
  upper = -np.asarray(inference.log_mean_exp(reverse.log_weights))
  # Bounds in expectation: each estimate may cross the truth by its Monte-Carlo error.
  se_lower, se_upper = (np.asarray(inference.log_mean_exp_stderr(r.log_weights)) for r in (forward, reverse))
  assert np.all(lower <= log_px + 3 * se_lower) and np.all(upper >= log_px - 3 * se_upper), (lower, upper, log_px)
  assert abs(np.mean(upper - lower)) < 0.1
  # A short schedule leaves a wider gap: the gap measures how far AIS is from converged.
  short = dataclasses.replace(SETTINGS, num_steps=5, num_chains=4)
  forward, reverse = inference.batch_bdmc(model, params, jax.random.split(jax.random.key(3), 3), x_NxD, z_NxL, short)
  gap = -inference.log_mean_exp(reverse.log_weights) - inference.log_mean_exp(forward.log_weights)
  assert np.mean(gap) > 0.5


def test_one_step_weights_are_the_likelihood_at_prior_draws(toy):
  """With the schedule [0, 1] AIS is importance sampling from the prior: w = p(x | z0)."""
  model, params, x_NxD, _, _ = toy
  settings = dataclasses.replace(SETTINGS, num_steps=1, num_chains=8)
  key = jax.random.key(4)
  result = inference.ais(model, params, key, x_NxD[0], settings)
  z_CxL = jax.random.normal(jax.random.split(key)[0], (8, 2))
  expected = jaxvae.bernoulli_log_likelihood(x_NxD[0], model.apply(params, z_CxL, method=model.decode))
  np.testing.assert_allclose(result.log_weights, expected, rtol=1e-6)


def test_schedule_and_bad_settings():
  betas = inference.sigmoid_schedule(10)
  assert betas.shape == (11,) and betas[0] == 0 and betas[-1] == 1 and np.all(np.diff(betas) > 0)
  with pytest.raises(ValueError, match="at least one step"):
    inference.sigmoid_schedule(0)
  model = jaxvae.VAE(latent_dim=2, hidden_dim=8, output_dim=4)
  params = model.init(jax.random.key(0), jnp.zeros((1, 4)))
  for bad, message in ((dict(num_steps=0), "num_steps must be a positive integer"),
                       (dict(num_chains=0), "num_chains must be a positive integer"),
                       (dict(step_size=float("nan")), "step_size must be a finite positive number"),
                       (dict(target_acceptance=1.0), "target_acceptance must lie in")):
    with pytest.raises(ValueError, match=message):
      inference.ais(model, params, jax.random.key(0), jnp.zeros(4), inference.AISSettings(**bad))
  two_layer = jaxvae.models.TwoLayerVAE(latent_dim=2, h1_dim=3, hidden_dim=8, top_hidden_dim=4, output_dim=4)
  with pytest.raises(ValueError, match="one stochastic layer"):
    inference.ais(two_layer, None, jax.random.key(0), jnp.zeros(4))


def test_kl_decomposition_matches_quadrature_on_a_two_point_data_set():
  """Two data points with q(z | x) = N(-+1, 1) in one dimension, 1,000 copies each: the average
  KL is 1/2 (analytic), the aggregate posterior the two-component mixture, and I_q(x; z) =
  H(q(z)) - H(q(z | x)) with H(q(z)) by quadrature."""
  mean = jnp.concatenate([jnp.full((1000, 1), -1.0), jnp.full((1000, 1), 1.0)])
  result = inference.kl_decomposition(jax.random.key(0), mean, jnp.zeros_like(mean))
  z = np.linspace(-12, 12, 200001)
  normal = lambda m: np.exp(-0.5 * (z - m) ** 2) / np.sqrt(2 * np.pi)
  q = 0.5 * (normal(-1.0) + normal(1.0))
  dz = z[1] - z[0]
  entropy = -np.sum(q * np.log(q)) * dz
  true_mi = entropy - 0.5 * np.log(2 * np.pi * np.e)
  true_marginal_kl = np.sum(q * (np.log(q) - np.log(normal(0.0)))) * dz
  assert result.average_kl == pytest.approx(0.5, abs=1e-6)
  assert result.mutual_information + result.marginal_kl == pytest.approx(result.average_kl, abs=1e-9)
  assert abs(result.marginal_kl - true_marginal_kl) < 3 * result.marginal_kl_stderr + 1e-3
  assert abs(result.mutual_information - true_mi) < 3 * result.marginal_kl_stderr + 1e-3
  assert 0.1 < true_mi < np.log(2) and result.marginal_kl_stderr < 0.02
  np.testing.assert_allclose(result.kl_per_dimension, [0.5], atol=1e-6)
