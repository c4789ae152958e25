"""The latent-space toolkit (jaxvae.latent, the AE objective, the classifier) on tiny models."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import stats

import jaxvae
from jaxvae import classifier
from jaxvae import latent
from tests.conftest import make_digits


def train_tiny(model_type: str, latent_dim: int = 2, epochs: int = 8):
  """A small VAE or AE trained on blobs; returns (model, params, test targets, test labels)."""
  images, _ = make_digits(512, 0)
  images = images.reshape(512, -1)
  model = jaxvae.VAE(latent_dim=latent_dim, hidden_dim=64)
  optimizer = optax.adam(3e-3)
  keys = jaxvae.KeyStreams.from_seed(0)
  state = jaxvae.create_train_state(model, optimizer, keys.init)
  epoch = jaxvae.make_train_epoch(model, optimizer, 64, "dynamic", objective=jaxvae.OBJECTIVES[model_type])
  for e in range(epochs):
    state, metrics = epoch(state, jnp.asarray(images), jax.random.fold_in(keys.data, e), keys.train)
  test_images, test_labels = make_digits(256, 1)
  return model, state.params, jnp.asarray(jaxvae.test_targets(test_images.reshape(256, -1), "dynamic")), test_labels


@pytest.fixture(scope="module")
def vae():
  return train_tiny("vae")


# Interpolation.

@pytest.mark.parametrize("method", latent.INTERPOLATIONS)
def test_interpolation_endpoints_are_the_inputs(method):
  z0, z1 = jax.random.normal(jax.random.key(0), (2, 8))
  path = latent.interpolate(z0, z1, 7, method)
  assert path.shape == (7, 8)
  np.testing.assert_allclose(path[0], z0, atol=1e-5)
  np.testing.assert_allclose(path[-1], z1, atol=1e-5)


def test_linear_interpolation_is_evenly_spaced():
  z0, z1 = jax.random.normal(jax.random.key(1), (2, 5))
  steps = np.diff(np.asarray(latent.interpolate(z0, z1, 6, "linear")), axis=0)
  np.testing.assert_allclose(steps, np.broadcast_to((z1 - z0) / 5, steps.shape), atol=1e-6)


def test_spherical_interpolation_keeps_the_norm_profile_and_turns_evenly():
  z0 = 3.0 * jnp.array([1.0, 0.0, 0.0])
  z1 = 5.0 * jnp.array([0.0, 1.0, 0.0])
  path = np.asarray(latent.interpolate(z0, z1, 5, "spherical"))
  # Norms go linearly from |z0| to |z1|, never dipping towards the origin as the linear path does.
  np.testing.assert_allclose(np.linalg.norm(path, axis=1), np.linspace(3.0, 5.0, 5), rtol=1e-6)
  linear_mid = np.linalg.norm(np.asarray(latent.interpolate(z0, z1, 5, "linear"))[2])
  assert linear_mid < 3.0 < np.linalg.norm(path[2])
  # Directions move along the great circle at constant angular speed: 90 degrees in 4 equal steps.
  units = path / np.linalg.norm(path, axis=1, keepdims=True)
  angles = np.degrees(np.arccos(np.clip(np.sum(units[1:] * units[:-1], axis=1), -1, 1)))
  np.testing.assert_allclose(angles, 22.5, atol=1e-3)
  np.testing.assert_allclose(path[:, 2], 0.0, atol=1e-6)  # stays in the plane of the endpoints


@pytest.mark.parametrize("factor", [3.0, -2.0, 0.0])  # same direction, opposite, the origin
def test_spherical_interpolation_without_a_great_circle_is_the_linear_path(factor):
  z0 = jnp.array([1.0, 2.0])
  path = latent.interpolate(z0, factor * z0, 5, "spherical")
  assert np.all(np.isfinite(path))
  np.testing.assert_allclose(path, latent.interpolate(z0, factor * z0, 5, "linear"), atol=1e-5)
  np.testing.assert_allclose(latent.interpolate(0.0 * z0, z0, 5, "spherical"), latent.interpolate(0.0 * z0, z0, 5),
                             atol=1e-6)


def test_interpolation_rejects_unknown_method():
  with pytest.raises(ValueError, match="unknown interpolation 'cubic'"):
    latent.interpolate(jnp.zeros(2), jnp.ones(2), 3, "cubic")


# The manifold grid.

def test_quantile_grid_covers_the_requested_quantiles():
  coords = latent.grid_coordinates(9, "quantile", (0.02, 0.98))
  np.testing.assert_allclose(stats.norm.cdf(np.asarray(coords)), np.linspace(0.02, 0.98, 9), atol=1e-5)
  default = latent.grid_coordinates(5)
  np.testing.assert_allclose(stats.norm.cdf(np.asarray(default)), np.linspace(0.05, 0.95, 5), atol=1e-5)


def test_linear_grid_spans_minus_three_to_three():
  np.testing.assert_allclose(latent.grid_coordinates(7, "linear"), np.linspace(-3, 3, 7), atol=1e-6)


def test_manifold_grid_is_row_major_with_z2_decreasing_down_the_rows():
  grid = np.asarray(latent.manifold_grid(4, "linear"))
  coords = np.linspace(-3, 3, 4)
  assert grid.shape == (16, 2)
  np.testing.assert_allclose(grid[:4, 0], coords, atol=1e-6)  # first row: z1 left to right
  np.testing.assert_allclose(grid[:4, 1], 3.0, atol=1e-6)  # at the top z2
  np.testing.assert_allclose(grid[::4, 1], coords[::-1], atol=1e-6)  # first column: z2 top to bottom
  assert len({tuple(p) for p in grid.round(6)}) == 16


@pytest.mark.parametrize("args,match", [(("cubic",), "unknown grid spacing"),
                                        (("quantile", (0.0, 0.9)), "0 < lo < hi < 1")])
def test_grid_rejects_bad_arguments(args, match):
  with pytest.raises(ValueError, match=match):
    latent.grid_coordinates(3, *args)


# Neighbours and classification.

def test_nearest_neighbours_match_brute_force():
  queries, refs = jax.random.normal(jax.random.key(2), (2, 300, 6))
  d2, idx = latent.nearest_neighbours(queries[:37], refs, k=4, batch_size=16)
  brute = np.sum((np.asarray(queries[:37])[:, None] - np.asarray(refs)[None]) ** 2, axis=-1)
  np.testing.assert_array_equal(idx, np.argsort(brute, axis=1)[:, :4])
  np.testing.assert_allclose(d2, np.sort(brute, axis=1)[:, :4], rtol=1e-4, atol=1e-4)


def test_knn_classifies_separated_clusters_and_breaks_ties_towards_the_nearest():
  centers = 10.0 * jnp.eye(3)
  train = jnp.repeat(centers, 20, axis=0) + 0.1 * jax.random.normal(jax.random.key(3), (60, 3))
  labels = np.repeat(np.arange(3), 20)
  test = centers + 0.1
  np.testing.assert_array_equal(latent.knn_classify(train, labels, test, k=5, num_classes=3), [0, 1, 2])
  # Two votes each: the nearest neighbour's class wins.
  refs = jnp.array([[0.0], [1.0], [2.5], [3.0]])
  assert int(latent.knn_classify(refs, np.array([1, 0, 0, 1]), jnp.array([[-0.5]]), k=4, num_classes=2)[0]) == 1


# Anomaly scores and AUROC.

def test_auroc_of_perfect_reversed_and_constant_scores():
  positives = np.array([0, 0, 1, 0, 1, 1], bool)
  assert latent.auroc(positives.astype(float) + 0.1 * np.arange(6), positives) == 1.0
  assert latent.auroc(-positives.astype(float), positives) == 0.0
  assert latent.auroc(np.zeros(6), positives) == 0.5


def test_auroc_is_the_probability_a_positive_outscores_a_negative():
  rng = np.random.default_rng(0)
  scores = rng.integers(0, 5, 200).astype(float)  # many ties
  positives = rng.random(200) < 0.3
  pos, neg = scores[positives][:, None], scores[~positives][None]
  expected = np.mean((pos > neg) + 0.5 * (pos == neg))
  assert latent.auroc(scores, positives) == pytest.approx(expected, abs=1e-12)
  with pytest.raises(ValueError, match="positives and negatives"):
    latent.auroc(scores, np.zeros(200, bool))
  with pytest.raises(ValueError, match="non-finite scores"):
    latent.auroc(np.where(positives, np.nan, scores), positives)


def test_anomaly_scores_per_model(vae):
  model, params, x, _ = vae
  scores = latent.anomaly_scores(model, params, jax.random.key(0), x, "vae", iwae_samples=50)
  assert set(scores) == {"reconstruction", "neg_elbo", "iwae_nll"}
  assert all(s.shape == (256,) and s.dtype == np.float64 and np.all(np.isfinite(s)) for s in scores.values())
  recon = jax.vmap(jaxvae.reconstruction_log_likelihood, (None, None, 0))(model, params, x)
  np.testing.assert_allclose(scores["reconstruction"], -np.asarray(recon), rtol=1e-6)
  assert scores["iwae_nll"].mean() < scores["neg_elbo"].mean()  # the tighter bound
  ae_scores = latent.anomaly_scores(model, params, jax.random.key(0), x, "ae")
  assert set(ae_scores) == {"reconstruction"}
  with pytest.raises(ValueError, match="unknown model type 'vea'"):
    latent.anomaly_scores(model, params, jax.random.key(0), x, "vea")


# Inpainting.

def test_masks_hide_what_they_say():
  half = latent.lower_half_mask(3).reshape(3, 28, 28)
  assert half[:, :14].all() and not half[:, 14:].any()
  block = latent.random_block_mask(jax.random.key(0), 50, block=12)
  hidden = ~block.reshape(50, 28, 28)
  assert np.all(hidden.sum(axis=(1, 2)) == 144)
  rows, cols = hidden.any(axis=2), hidden.any(axis=1)
  assert np.all(rows.sum(axis=1) == 12) and np.all(cols.sum(axis=1) == 12)  # one 12x12 square
  assert len({tuple(np.flatnonzero(r)[:1]) for r in rows}) > 5  # at different places


@pytest.mark.parametrize("method", latent.INPAINT_METHODS)
def test_inpainting_leaves_known_pixels_untouched_and_beats_a_coin(vae, method):
  model, params, x, _ = vae
  observed = latent.lower_half_mask(len(x))
  kwargs = dict(num_steps=50, key=jax.random.key(0), num_samples=100)
  filled = latent.inpaint(model, params, x, observed, method, **kwargs)
  assert filled.shape == x.shape
  np.testing.assert_array_equal(np.asarray(filled)[observed], np.asarray(x)[observed])
  assert np.all((filled >= 0) & (filled <= 1))
  # The hidden pixels were never read: changing them, even to NaN, changes nothing.
  for placeholder in (1.0 - x, jnp.nan):
    scrambled = jnp.where(observed, x, placeholder)
    np.testing.assert_allclose(latent.inpaint(model, params, scrambled, observed, method, **kwargs), filled,
                               atol=1e-6)
  nats = -float(latent.masked_log_likelihood(x, filled, observed))
  assert nats < np.log(2)  # better than filling every hidden pixel with 0.5


def test_masked_log_likelihood_counts_hidden_pixels_only():
  x = jnp.array([[1.0, 0.0, 1.0, 0.0]])
  probs = jnp.array([[0.9, 0.2, 0.5, 0.25]])
  observed = jnp.array([[True, False, False, True]])
  expected = (np.log(0.8) + np.log(0.5)) / 2
  assert float(latent.masked_log_likelihood(x, probs, observed)) == pytest.approx(expected, rel=1e-6)


def test_inpainting_rejects_unknown_method_and_predictive_without_key(vae):
  model, params, x, _ = vae
  with pytest.raises(ValueError, match="unknown inpainting method"):
    latent.inpaint(model, params, x, latent.lower_half_mask(len(x)), "diffuse")
  with pytest.raises(ValueError, match="needs a key"):
    latent.inpaint(model, params, x, latent.lower_half_mask(len(x)), "predictive")


def test_predictive_fill_matches_exact_posterior_average_on_a_grid(vae):
  """In 2-D, p(x_miss | x_obs) = E_{p(z|x_obs)} p(x_miss|z) can be computed by brute force on a dense grid."""
  model, params, x, _ = vae
  observed = latent.lower_half_mask(1)[0]
  coords = jnp.linspace(-9, 9, 301)  # this posterior sits in the prior's tail: mean near (-3.4, -2.5), std ~1
  grid = jnp.stack(jnp.meshgrid(coords, coords), -1).reshape(-1, 2)
  log_joint = -jax.vmap(latent.neg_log_joint, (None, None, 0, None, None))(model, params, grid, x[0], observed)
  exact = jax.nn.softmax(log_joint) @ latent.decode_means(model, params, grid)
  estimate = latent.inpaint(model, params, x[:1], observed[None], "predictive", key=jax.random.key(1),
                            num_samples=5000)[0]
  hidden = ~observed
  np.testing.assert_allclose(np.asarray(estimate)[hidden], np.asarray(exact)[hidden], atol=0.015)
  # Committing to the posterior mode instead gives a different (overconfident) answer.
  mode = latent.inpaint(model, params, x[:1], observed[None], "optimize")[0]
  assert np.max(np.abs(np.asarray(mode - exact)[hidden])) > 0.05


# The autoencoder baseline and PCA.

def test_autoencoder_objective_is_the_deterministic_reconstruction(vae):
  model, params, x, _ = vae
  terms = [jaxvae.autoencoder(model, params, jax.random.key(k), x[0]) for k in (0, 1)]
  assert float(terms[0].kl) == 0.0
  assert float(terms[0].elbo) == float(terms[0].reconstruction) == float(terms[1].elbo)  # no noise
  mean, _ = model.apply(params, x[0], method=model.encode)
  logits = model.apply(params, mean, method=model.decode)
  assert float(terms[0].elbo) == pytest.approx(float(jaxvae.bernoulli_log_likelihood(x[0], logits)), rel=1e-6)


def test_autoencoder_training_lowers_its_reconstruction_error():
  model, params, x, _ = train_tiny("ae", epochs=8)
  untrained = jaxvae.init_params(model, jaxvae.KeyStreams.from_seed(0).init)
  loss = lambda p: -float(jnp.mean(jaxvae.elbo_terms(model, p, jax.random.key(0), x,
                                                     objective=jaxvae.autoencoder).elbo))
  assert loss(params) < 0.8 * loss(untrained)


def test_pca_orders_components_by_variance():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(500, 5)) * np.array([5.0, 0.1, 2.0, 0.1, 0.1])
  projected = np.asarray(latent.pca(x, 2))
  assert projected.shape == (500, 2)
  np.testing.assert_allclose(projected.var(axis=0), [25.0, 4.0], rtol=0.15)


# The classifier that judges samples.

def test_recognisability_of_probabilities():
  confident = np.eye(10)[np.arange(100) % 10]
  result = classifier.recognisability(confident)
  assert result == {"mean_max_prob": 1.0, "confident": 1.0, "class_entropy": pytest.approx(np.log(10))}
  unsure = classifier.recognisability(np.full((4, 10), 0.1))
  assert unsure["mean_max_prob"] == pytest.approx(0.1) and unsure["confident"] == 0.0
  assert unsure["class_entropy"] == 0.0  # every argmax is class 0


def test_classifier_learns_and_round_trips(tmp_path):
  train = jaxvae.Split(*make_digits(1024, 0))
  train = jaxvae.Split(train.images.reshape(1024, -1), train.labels)
  test_images, test_labels = make_digits(256, 1)
  test_x = jnp.asarray(test_images.reshape(256, -1) / 255.0, jnp.float32)
  mnist = jaxvae.Mnist(train, jaxvae.Split(test_images.reshape(256, -1), test_labels.astype(np.int32)), "test")
  final = classifier.train_and_evaluate(classifier.ClassifierConfig(num_epochs=5), tmp_path, mnist=mnist)
  loaded_model, loaded_params = classifier.load_classifier(tmp_path)
  probs = classifier.predict_probs(loaded_model, loaded_params, test_x)
  accuracy = np.mean(np.asarray(probs).argmax(axis=1) == test_labels)
  assert accuracy > 0.9 and abs(final["test_accuracy"] - accuracy) < 0.01
  with pytest.raises(jaxvae.CheckpointError, match="no trained classifier"):
    classifier.load_classifier(tmp_path / "missing")
