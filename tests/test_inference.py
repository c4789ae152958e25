"""AIS, BDMC and the inference gaps against brute force on a 2-D latent space, where quadrature
gives log p(x) and the ELBO of any Gaussian."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
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
  with pytest.raises(ValueError, match="has none"):
    inference.ais(jaxvae.VAE(latent_dim=0, hidden_dim=8, output_dim=4), None, jax.random.key(0), jnp.zeros(4))
  for bad, message in ((dict(num_steps=0), "num_steps must be a positive integer"),
                       (dict(learning_rate=-1.0), "learning_rate must be a finite positive number")):
    with pytest.raises(ValueError, match=message):
      inference.GapSettings(**bad).validate()


def _grid(half_width=8.0, num=801):
  h = 2 * half_width / (num - 1)
  return jnp.stack(jnp.meshgrid(*[jnp.linspace(-half_width, half_width, num)] * 2), -1).reshape(-1, 2), h


def _quadrature_elbo(log_joint_G, grid, h, mean, logvar):
  """The exact ELBO of q = N(mean, exp(logvar)) on the grid: sum_g q(u_g) [log p(x, u_g) - log q(u_g)] h^2."""
  log_q_G = jaxvae.gaussian_log_likelihood(grid, mean, logvar)
  return jnp.sum(jnp.exp(log_q_G) * (log_joint_G - log_q_G)) * h**2


def test_optimal_gaussian_is_the_best_gaussian_and_beats_the_encoder(toy):
  """q* (stochastic gradients from the encoder's q) against the best Gaussian found by
  deterministic gradient ascent on the ELBO computed by quadrature; the gaps' ELBO estimates
  against the same quadrature; and the approximation gap log p(x) - ELBO(q*) >= 0."""
  model, params, x_NxD, _, log_px = toy
  settings = inference.GapSettings(num_steps=1000, eval_samples=4000)
  terms = inference.batch_gap_terms(model, params, jax.random.split(jax.random.key(5), 3), x_NxD, settings)
  joint = inference.joint_model(model, params)
  fine, h_fine = _grid(8.0, 401)  # for the posterior and the Gaussians near it (std ~0.3: 7 points per std)
  coarse, h_coarse = _grid(24.0, 481)  # for the encoder's broad q
  log_joint = lambda x_D, grid: (jaxvae.bernoulli_log_likelihood(x_D, model.apply(params, grid, method=model.decode))
                                 + jaxvae.standard_normal_log_density(grid))
  optimizer = optax.adam(0.05)

  @jax.jit
  def best_gaussian(log_joint_G, q):  # 1,500 deterministic Adam steps on the exact ELBO
    grad = jax.grad(lambda q: -_quadrature_elbo(log_joint_G, fine, h_fine, *q))
    def step(carry, _):
      q, state = carry
      updates, state = optimizer.update(grad(q), state)
      return (optax.apply_updates(q, updates), state), None
    return jax.lax.scan(step, (q, optimizer.init(q)), None, length=1500)[0][0]

  for n in range(3):
    log_joint_G = log_joint(x_NxD[n], fine)
    exact = lambda q: _quadrature_elbo(log_joint_G, fine, h_fine, *q)
    q_encoder = joint.encoder_gaussian(x_NxD[n])
    exact_encoder = _quadrature_elbo(log_joint(x_NxD[n], coarse), coarse, h_coarse, *q_encoder)
    q_star, trace = inference.optimal_gaussian(joint, jax.random.key(6), x_NxD[n], settings)
    best = best_gaussian(log_joint_G, q_encoder)
    assert exact(q_star) > exact(best) - 0.02, (float(exact(q_star)), float(exact(best)))
    assert exact(q_star) > exact_encoder + 1.0  # the toy's random encoder is far from its posterior
    assert exact(best) <= log_px[n] + 1e-3 and trace.shape == (1000,)
    # The report's estimates, each within its Monte-Carlo error of the quadrature.
    assert abs(terms.elbo_encoder[n] - exact_encoder) < 4 * terms.mc_stderr_encoder[n] + 0.01
    assert abs(terms.elbo_optimal[n] - exact(best)) < 4 * terms.mc_stderr_optimal[n] + 0.02


def test_two_layer_joint_model_ais_matches_quadrature():
  """A two-layer model with one-dimensional h1 and z: u = (h1, z), log p(x) by quadrature over
  both; AIS on the joint latent, BDMC's bounds and the IWAE bound against it."""
  model = jaxvae.models.TwoLayerVAE(latent_dim=1, h1_dim=1, output_dim=64, hidden_dim=16, top_hidden_dim=8)
  params = jax.tree.map(lambda p: 2.0 * p, model.init(jax.random.key(0), jnp.zeros((1, 64))))
  x_NxD, u_NxU = inference.simulate(model, params, jax.random.key(1), 3)
  assert u_NxU.shape == (3, 2)
  joint = inference.joint_model(model, params)
  grid, h = _grid()
  log_lik_NxG = jax.vmap(lambda x: jax.vmap(lambda u: joint.log_likelihood(x, u))(grid))(x_NxD)
  log_px = np.asarray(jax.nn.logsumexp(log_lik_NxG + jax.vmap(joint.log_prior)(grid)[None], axis=1) + 2 * np.log(h))
  forward, reverse = inference.batch_bdmc(model, params, jax.random.split(jax.random.key(2), 3), x_NxD, u_NxU,
                                          SETTINGS)
  estimate = np.asarray(inference.log_mean_exp(forward.log_weights))
  stderr = np.asarray(inference.log_mean_exp_stderr(forward.log_weights))
  assert np.all(np.abs(estimate - log_px) < 3 * stderr + 0.02), (estimate, stderr, log_px)
  upper = -np.asarray(inference.log_mean_exp(reverse.log_weights))
  assert np.all(upper >= log_px - 3 * np.asarray(inference.log_mean_exp_stderr(reverse.log_weights)) - 0.02)
  # The model's own density (objectives' two-layer importance weights) agrees with the joint
  # model's: with many samples the IWAE bound reaches the quadrature (its weights are heavy-tailed
  # here, so k = 2,000 is still 0.4 nats off).
  iwae = jaxvae.iwae_bounds(model, params, jax.random.key(3), x_NxD, num_samples=20000, batch_size=3)
  np.testing.assert_allclose(iwae, log_px, atol=0.1)


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


def test_elbo_estimate_reaches_its_monte_carlo_target_around_the_exact_elbo(toy):
  """The final record's test -ELBO estimator on 40 examples of the toy, against their mean ELBO
  under the encoder by quadrature: within its stated Monte-Carlo error, which is below target
  (0.05 nats here: the toy's random encoder makes each draw's ELBO vary by tens of nats)."""
  model, params, _, _, _ = toy
  x_NxD, _ = inference.simulate(model, params, jax.random.key(7), 40)
  estimate = jaxvae.elbo_estimate(model, params, jax.random.key(8), x_NxD, target_mc_stderr=0.05, max_samples=4096)
  coarse, h = _grid(24.0, 481)
  logits_GxD = model.apply(params, coarse, method=model.decode)
  mean_NxL, logvar_NxL = model.apply(params, x_NxD, method=model.encode)
  exact = np.mean([_quadrature_elbo(jaxvae.bernoulli_log_likelihood(x_NxD[n], logits_GxD)
                                    + jaxvae.standard_normal_log_density(coarse), coarse, h,
                                    mean_NxL[n], logvar_NxL[n]) for n in range(40)])
  assert estimate.mc_stderr < 0.05 and 16 < estimate.num_samples < 4096  # more than the pilot, under the cap
  assert abs(estimate.elbo - exact) < 4 * estimate.mc_stderr + 1e-3, (estimate, exact)
