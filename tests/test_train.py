import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxvae
from tests.conftest import make_digits


def setup(binarization="dynamic"):
  images, _ = make_digits(256, 0)
  images = jnp.asarray(jaxvae.data.prepare_train_images(images.reshape(256, -1), binarization))
  model = jaxvae.VAE(latent_dim=3, hidden_dim=32)
  optimizer = optax.adam(3e-3)
  keys = jaxvae.KeyStreams.from_seed(0)
  return images, model, optimizer, keys, jaxvae.create_train_state(model, optimizer, keys.init)


def test_short_run_lowers_neg_elbo():
  images, model, optimizer, keys, state = setup()
  x = jnp.asarray(jaxvae.test_targets(np.asarray(images[:128]), "dynamic"))
  before = -float(jnp.mean(jaxvae.elbo_terms(model, state.params, keys.eval, x).elbo))
  epoch = jaxvae.make_train_epoch(model, optimizer, 32, "dynamic")
  for e in range(8):
    state, metrics = epoch(state, images, jax.random.fold_in(keys.data, e), keys.train)
  after = -float(jnp.mean(jaxvae.elbo_terms(model, state.params, keys.eval, x).elbo))
  assert int(state.step) == 8 * (256 // 32)
  assert np.isfinite(float(metrics["neg_elbo"]))
  assert after < before - 50, (before, after)


def test_compiled_epoch_equals_loop_of_steps():
  """The scanned epoch is the same computation as a Python loop of the same steps."""
  images, model, optimizer, keys, state = setup()
  state_loop = jax.tree.map(jnp.copy, state)
  epoch_key = jax.random.fold_in(keys.data, 0)
  epoch = jaxvae.make_train_epoch(model, optimizer, 64, "dynamic")
  state_scan, metrics = epoch(state, images, epoch_key, keys.train)
  step = jax.jit(jaxvae.make_train_step(model, optimizer, "dynamic"))
  indices, bin_keys = jaxvae.train.epoch_batches(epoch_key, 256, 64)
  losses = []
  for idx, bin_key in zip(indices, bin_keys):
    state_loop, m = step(state_loop, images[idx], bin_key, keys.train)
    losses.append(float(m["neg_elbo"]))
  np.testing.assert_allclose(float(metrics["neg_elbo"]), np.mean(losses), rtol=1e-5)
  for a, b in zip(jax.tree.leaves(state_scan.params), jax.tree.leaves(state_loop.params)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_epoch_drops_remainder_and_permutes():
  indices, bin_keys = jaxvae.train.epoch_batches(jax.random.key(0), 100, 32)
  assert indices.shape == (3, 32) and bin_keys.shape == (3,)
  assert len(np.unique(np.asarray(indices))) == 96
  other, _ = jaxvae.train.epoch_batches(jax.random.key(1), 100, 32)
  assert not np.array_equal(indices, other)


def test_dynamic_binarization_fresh_per_key_static_fixed():
  images = jnp.full((4, 784), 128, jnp.uint8)
  a = jaxvae.train_targets(jax.random.key(0), images, "dynamic")
  b = jaxvae.train_targets(jax.random.key(1), images, "dynamic")
  assert set(np.unique(a)) <= {0.0, 1.0} and not np.array_equal(a, b)
  static = jaxvae.data.prepare_train_images(np.asarray(images), "static")
  np.testing.assert_array_equal(static, jaxvae.data.prepare_train_images(np.asarray(images), "static"))
  assert set(np.unique(jaxvae.train_targets(jax.random.key(0), static, "static"))) <= {0.0, 1.0}
  none = jaxvae.train_targets(jax.random.key(0), images, "none")
  np.testing.assert_allclose(none, 128 / 255)


@pytest.mark.parametrize("kind", ["nan", "inf", "-inf", "inf and -inf"])
@pytest.mark.parametrize("leaf", [0, 3])
def test_guard_catches_a_nonfinite_gradient_in_any_leaf_with_a_finite_loss(kind, leaf):
  """The loss stays 0 while one element's gradient is NaN (d sqrt(x^2) at 0) or +-Inf (d +-sqrt(x) at 0)."""
  model = jaxvae.VAE(latent_dim=2, hidden_dim=8)
  optimizer = optax.adam(1e-3)
  state = jaxvae.create_train_state(model, optimizer, jax.random.key(0))
  num_leaves = len(jax.tree.leaves(state.params))
  state = state.replace(params=jax.tree.map(lambda p: p.at[(0,) * p.ndim].set(0.0), state.params))
  terms = {"nan": [lambda x: jnp.sqrt(x**2)], "inf": [jnp.sqrt], "-inf": [lambda x: -jnp.sqrt(x)],
           "inf and -inf": [jnp.sqrt, lambda x: -jnp.sqrt(x)]}[kind]

  def loss_fn(params, batch, batch_key, step_key, step, context):
    leaves = jax.tree.leaves(params)
    loss = sum(f(leaves[(leaf + i) % num_leaves].ravel()[0]) for i, f in enumerate(terms))
    return loss, {}

  step = jaxvae.train.make_step(loss_fn, optimizer, nonfinite_policy="skip")
  for run in (step, jax.jit(step)):  # op by op, and compiled as training runs it (a compiler must not drop the check)
    new, metrics = run(state, jnp.zeros((1,)), jax.random.key(1), jax.random.key(2))
    assert float(metrics["loss"]) == 0.0 and not bool(metrics["finite"])
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(state.params)))


@pytest.mark.parametrize("jit", [False, True])
def test_all_finite_reads_every_leaf(jit):
  all_finite = jax.jit(jaxvae.train.all_finite) if jit else jaxvae.train.all_finite
  tree = {"a": jnp.ones((3, 4)), "b": jnp.zeros((5,)), "c": jnp.float32(2.0), "d": jnp.ones((2, 3, 4), jnp.bfloat16),
          "e": jnp.arange(3), "f": jnp.zeros((0, 2))}
  assert bool(all_finite(tree))
  for name, index, value in (("a", (2, 1), jnp.nan), ("b", (4,), jnp.inf), ("c", (), -jnp.inf), ("d", (1, 2, 3), jnp.inf)):
    bad = dict(tree, **{name: tree[name].at[index].set(value) if index else jnp.float32(value)})
    assert not bool(all_finite(bad)), name
  # large is not non-finite (0 * 3e38 is 0; a sum of the leaf itself would overflow)
  assert bool(all_finite({"a": jnp.full((2, 1000), 3e38), "b": jnp.full((7,), 6e4, jnp.float16)}))
