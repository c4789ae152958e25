"""Real-MNIST checks that take a minute or more: `python -m pytest -m slow`."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxvae

pytestmark = pytest.mark.slow


def test_two_epochs_on_real_mnist_learn_digits(tmp_path):
  config = jaxvae.Config(num_epochs=2, eval_iwae_samples=100, data_source="offline")
  final = jaxvae.train_and_evaluate(config, tmp_path / "run")
  # After two epochs the 784-400-20 VAE is far below the ~544 nats of its initialisation.
  assert final["test_neg_elbo"] < 120
  assert final["iwae_nll"] < final["test_neg_elbo"]


def test_iwae_5000_samples_in_bounded_memory():
  """k = 5000 on a batch of 100 real test images runs in chunks without exhausting memory."""
  mnist = jaxvae.load_mnist("offline")
  x = jnp.asarray(jaxvae.test_targets(mnist.test.images[:100], "dynamic"))
  model = jaxvae.VAE()
  params = jaxvae.init_params(model, jax.random.key(0))
  bounds = jaxvae.iwae_bounds(model, params, jax.random.key(1), x, num_samples=5000)
  elbo = jaxvae.elbo_terms(model, params, jax.random.key(1), x).elbo
  assert bounds.shape == (100,) and np.all(np.isfinite(bounds))
  assert bounds.mean() > float(elbo.mean())
