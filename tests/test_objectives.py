import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxvae
from tests.conftest import make_digits


@pytest.fixture(scope="module")
def trained():
  """A small VAE trained briefly on blobs, so bounds are not trivially equal."""
  images, _ = make_digits(512, 0)
  images = images.reshape(512, -1)
  model = jaxvae.VAE(latent_dim=4, hidden_dim=64)
  optimizer = optax.adam(3e-3)
  keys = jaxvae.KeyStreams.from_seed(0)
  state = jaxvae.create_train_state(model, optimizer, keys.init)
  epoch = jaxvae.make_train_epoch(model, optimizer, 64, "dynamic")
  for e in range(5):
    state, _ = epoch(state, jnp.asarray(images), jax.random.fold_in(keys.data, e), keys.train)
  x = jaxvae.test_targets(images[:128], "dynamic")
  return model, state.params, jnp.asarray(x)


def test_elbo_decomposes(trained):
  model, params, x = trained
  terms = jaxvae.batch_elbo(model, params, jax.random.key(0), x)
  assert terms.elbo.shape == (128,)
  np.testing.assert_allclose(terms.elbo, terms.reconstruction - terms.kl, rtol=1e-6)
  assert np.all(terms.kl >= 0)


def test_elbo_below_iwae_bounds_increasing_in_k(trained):
  model, params, x = trained
  key = jax.random.key(3)
  mean_elbo = float(jnp.mean(jaxvae.elbo_terms(model, params, key, x).elbo))
  bounds = [float(jnp.mean(jaxvae.batch_iwae_bound(model, params, key, x, num_samples=k))) for k in (1, 10, 100)]
  assert mean_elbo < bounds[1] < bounds[2]
  assert bounds[0] < bounds[1]
  # k = 1 is an unbiased ELBO estimate (sampled KL): close to the analytic-KL ELBO.
  assert abs(bounds[0] - mean_elbo) < 2.0


def test_iwae_independent_of_chunk_size(trained):
  model, params, x = trained
  bound = functools.partial(jaxvae.iwae_bound, model, params, jax.random.key(5), x[0], 37)
  np.testing.assert_allclose(bound(chunk_size=37), bound(chunk_size=8), rtol=1e-5)
  np.testing.assert_allclose(bound(chunk_size=37), bound(chunk_size=500), rtol=1e-5)


def test_evaluation_independent_of_batch_size(trained):
  model, params, x = trained
  key = jax.random.key(2)
  a = jaxvae.iwae_bounds(model, params, key, x, num_samples=20, batch_size=128)
  b = jaxvae.iwae_bounds(model, params, key, x, num_samples=20, batch_size=50, chunk_size=7)
  np.testing.assert_allclose(a, b, rtol=1e-5)
  e1 = jaxvae.elbo_terms(model, params, key, x, batch_size=128).elbo
  e2 = jaxvae.elbo_terms(model, params, key, x, batch_size=32).elbo
  np.testing.assert_allclose(e1, e2, rtol=1e-5)


def test_jit_and_no_jit_agree(trained):
  model, params, x = trained
  key = jax.random.key(9)
  eager = jaxvae.batch_elbo(model, params, key, x)
  jitted = jax.jit(jaxvae.batch_elbo, static_argnums=0)(model, params, key, x)
  for a, b in zip(eager, jitted):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)
  eager_iwae = jaxvae.batch_iwae_bound(model, params, key, x[:8], 16)
  jitted_iwae = jax.jit(jaxvae.batch_iwae_bound, static_argnums=(0, 4))(model, params, key, x[:8], 16)
  np.testing.assert_allclose(eager_iwae, jitted_iwae, rtol=1e-5)


def test_latent_means_and_active_units():
  model = jaxvae.VAE(latent_dim=4, hidden_dim=16)
  params = jaxvae.init_params(model, jax.random.key(0))
  x_NxD = jax.random.uniform(jax.random.key(1), (50, 784))
  means = jaxvae.latent_means(model, params, x_NxD, batch_size=16)  # 50 is not a multiple of 16
  np.testing.assert_allclose(means, model.apply(params, x_NxD, method=model.encode)[0], rtol=1e-5, atol=1e-6)
  variance = np.sort(np.var(np.asarray(means), axis=0))
  assert jaxvae.active_units(model, params, x_NxD, threshold=0.0) == 4
  assert jaxvae.active_units(model, params, x_NxD, threshold=float(variance[1] + variance[2]) / 2) == 2
  assert jaxvae.active_units(model, params, x_NxD, threshold=float(variance[-1]) * 2) == 0
