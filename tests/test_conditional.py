"""The CVAE and M2: bounds, their identities, training, save/load, and both experiments end to end."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxvae
from jaxvae import conditional
from tests.conftest import make_digits
from tests.test_cli import run_cli

NPZ = ("--data_source=npz",)


def tiny_m2(likelihood="bernoulli", output_dim=784):
  return conditional.M2(latent_dim=3, output_dim=output_dim, hidden_dim=16, classifier_hidden_dim=16,
                        likelihood=likelihood)


def test_conditioned_mlp_is_a_dense_layer_on_the_concatenation():
  mlp = conditional.ConditionedMLP(hidden_dim=8, num_layers=1, output_dim=5, activation="tanh")
  h, y = jax.random.normal(jax.random.key(0), (4, 7)), conditional.one_hot(jnp.array([0, 3, 9, 3]))
  params = mlp.init(jax.random.key(1), h, y)["params"]
  first = params["first"]
  concat = jnp.tanh(jnp.concatenate([h, y], -1) @ jnp.concatenate([first["kernel"], params["first_y"]]) + first["bias"])
  expected = concat @ params["mlp"]["out"]["kernel"] + params["mlp"]["out"]["bias"]
  np.testing.assert_allclose(mlp.apply({"params": params}, h, y), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("likelihood", conditional.LIKELIHOODS)
def test_bounds_are_finite_and_the_labelled_bound_adds_log_prior(likelihood):
  model = tiny_m2(likelihood, output_dim=784 if likelihood == "bernoulli" else 6)
  params = conditional.init_params(model, jax.random.key(0))
  x = jax.random.uniform(jax.random.key(1), (model.output_dim,))
  y = conditional.one_hot(4)
  terms = conditional.conditional_elbo(model, params, jax.random.key(2), x, y)
  assert np.isfinite(terms.elbo) and terms.kl >= 0
  np.testing.assert_allclose(terms.elbo, terms.reconstruction - terms.kl, rtol=1e-6)
  np.testing.assert_allclose(conditional.labelled_bound(model, params, jax.random.key(2), x, y),
                             terms.elbo - np.log(10), rtol=1e-6)
  # The label is an input: another class gives another bound.
  other = conditional.conditional_elbo(model, params, jax.random.key(2), x, conditional.one_hot(5))
  assert not np.isclose(other.elbo, terms.elbo)
  assert np.isfinite(conditional.unlabelled_bound(model, params, jax.random.key(3), x))


def test_unlabelled_bound_is_the_q_weighted_sum_of_labelled_bounds_plus_the_entropy():
  model = tiny_m2()
  params = conditional.init_params(model, jax.random.key(0))
  x = (jax.random.uniform(jax.random.key(1), (784,)) < 0.3).astype(jnp.float32)
  key = jax.random.key(7)
  q = jax.nn.softmax(model.apply(params, x, method=model.classify))
  labelled = jnp.array([conditional.labelled_bound(model, params, key, x, conditional.one_hot(c)) for c in range(10)])
  expected = jnp.sum(q * labelled) - jnp.sum(q * jnp.log(q))
  np.testing.assert_allclose(conditional.unlabelled_bound(model, params, key, x), expected, rtol=1e-5)


def test_m2_loss_combines_its_terms_with_alpha():
  model = tiny_m2()
  params = conditional.init_params(model, jax.random.key(0))
  x = (jax.random.uniform(jax.random.key(1), (6, 784)) < 0.3).astype(jnp.float32)
  labels = jnp.array([1, 2, 3])
  loss = lambda p, alpha, f: conditional.m2_loss(model, p, jax.random.key(2), x[:3], x[3:], labels, alpha, f)
  loss0, m = loss(params, 0.0, 0.25)
  np.testing.assert_allclose(loss0, 0.75 * m["neg_unlabelled_bound"] + 0.25 * m["neg_labelled_bound"], rtol=1e-6)
  np.testing.assert_allclose(loss(params, 2.0, 0.25)[0] - loss0, 2.0 * m["cross_entropy"], rtol=1e-4)
  grads = jax.grad(lambda p: loss(p, 1.0, 0.5)[0])(params)
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))


def test_a_tiny_m2_run_learns_to_classify_from_few_labels():
  images, labels = make_digits(1024, 0)
  test_images, test_labels = make_digits(256, 1)
  images, test_images = images.reshape(-1, 784), test_images.reshape(-1, 784)
  chosen = jaxvae.data.balanced_subset(jax.random.key(0), labels, 2)
  model = conditional.M2(latent_dim=4, hidden_dim=64, classifier_hidden_dim=64)
  optimizer = optax.adam(3e-3)
  params = conditional.init_params(model, jax.random.key(1))
  state = jaxvae.TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params))
  test_x = jnp.asarray(jaxvae.test_targets(test_images, "dynamic"))
  error = lambda p: float(np.mean(np.asarray(conditional.predict(model, p, test_x)) != test_labels))
  before = error(params)
  epoch = jaxvae.make_epoch(jaxvae.semisupervised.make_loss(model, 1.0, 0.5, 20, "pixels"), optimizer, 64)
  labelled = (jnp.asarray(images[chosen]), jnp.asarray(labels[chosen]))
  for i in range(15):
    state, metrics = epoch(state, jnp.asarray(images), jax.random.key(i), jax.random.key(0), labelled)
  assert np.isfinite(metrics["loss"])
  after = error(state.params)
  assert before > 0.6 and after < 0.3, (before, after)


def test_balanced_subset_draws_distinct_examples_per_class_by_key():
  labels = np.repeat(np.arange(10), 30)
  a = jaxvae.data.balanced_subset(jax.random.key(0), labels, 10)
  assert len(a) == len(set(a)) == 100 and np.all(np.bincount(labels[a]) == 10)
  np.testing.assert_array_equal(a, jaxvae.data.balanced_subset(jax.random.key(0), labels, 10))
  assert not np.array_equal(a, jaxvae.data.balanced_subset(jax.random.key(1), labels, 10))
  with pytest.raises(jaxvae.DataError, match="class 0 has 30 examples; 31 asked for"):
    jaxvae.data.balanced_subset(jax.random.key(0), labels, 31)


def test_load_model_refuses_what_is_not_a_conditional_model(tmp_path, tiny_npz):
  with pytest.raises(jaxvae.CheckpointError, match="not a jaxvae workdir"):
    conditional.load_model(tmp_path)
  config = jaxvae.Config(latent_dim=2, hidden_dim=16, num_epochs=1, batch_size=64, eval_iwae_samples=0,
                         data_source="npz", data_path=str(tiny_npz))
  jaxvae.train_and_evaluate(config, tmp_path / "vae")
  with pytest.raises(jaxvae.CheckpointError, match="not a conditional model"):
    conditional.load_model(tmp_path / "vae")


def test_class_grid_and_samples_follow_the_requested_classes():
  model = conditional.ConditionalVAE(latent_dim=3, hidden_dim=16)
  params = conditional.init_params(model, jax.random.key(0))
  z = jax.random.normal(jax.random.key(1), (4, 3))
  grid = conditional.class_grid(model, params, z)
  assert grid.shape == (10, 4, 784) and float(grid.min()) >= 0 and float(grid.max()) <= 1
  labels = jnp.array([2, 7, 7])
  samples = conditional.sample(model, params, jax.random.key(5), labels)
  z5 = jax.random.normal(jax.random.key(5), (3, 3))
  expected = jax.nn.sigmoid(model.apply(params, z5, conditional.one_hot(labels), method=model.decode))
  np.testing.assert_allclose(samples, expected, rtol=1e-6)


def test_cvae_experiment_end_to_end(tiny_npz, tmp_path):
  judge = tmp_path / "judge"
  run_cli(f"--workdir={judge}", "--num_epochs=2", *NPZ, f"--data_path={tiny_npz}", module="experiments.classifier")
  workdir = tmp_path / "cvae"
  args = (f"--workdir={workdir}", f"--classifier={judge}", "--num_epochs=2", "--latent_dim=2", "--hidden_dim=32",
          "--batch_size=64", "--num_samples=100", *NPZ, f"--data_path={tiny_npz}")
  proc = run_cli(*args, module="experiments.cvae")
  assert "of class-conditional samples classified as requested" in proc.stdout
  results = json.loads((workdir / "results.json").read_text())
  assert 0 <= results["conditional_accuracy"] <= 1 and len(results["per_digit_accuracy"]) == 10
  assert results["test_neg_conditional_elbo"] > 0 and results["num_samples"] == 100
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["epoch"] for r in records] == [1, 2, 2] and records[-1]["final"]
  assert {k: records[-1][k] for k in results} == results
  for name in ("class_grid.png", "reconstructions.png", "jaxvae.json"):
    assert (workdir / name).is_file(), name
  model, _ = conditional.load_model(workdir)
  assert model.latent_dim == 2
  # The same command again reports the finished run and changes nothing; other settings are refused.
  before = (workdir / "metrics.jsonl").read_text()
  proc = run_cli(*args, module="experiments.cvae")
  assert "is complete" in proc.stdout and (workdir / "metrics.jsonl").read_text() == before
  proc = run_cli(*args, "--latent_dim=3", check=False, module="experiments.cvae")
  assert proc.returncode != 0 and "latent_dim: 2 -> 3" in proc.stderr.strip().splitlines()[-1]
  assert json.loads((workdir / "results.json").read_text()) == results
  proc = run_cli(*args[:-2], "--data_source=npz", f"--data_path={tmp_path / 'missing.npz'}", "--overwrite",
                 check=False, module="experiments.cvae")
  assert proc.returncode != 0 and proc.stderr.strip().splitlines()[-1].startswith("error: ")
  assert json.loads((workdir / "results.json").read_text()) == results  # bad data: nothing removed


@pytest.mark.slow  # a minute: the entry point end to end (the M2 loss and its learning run by default above)
def test_semisupervised_experiment_m2_and_m1_m2(tiny_npz, tmp_path):
  data = (*NPZ, f"--data_path={tiny_npz}")
  small = ("--num_labels=20", "--num_epochs=2", "--eval_every=1", "--latent_dim=3", "--hidden_dim=16",
           "--batch_size=64", "--labelled_batch_size=20", "--seeds=0,1")
  proc = run_cli(f"--outdir={tmp_path / 'm2'}", *small, *data, module="experiments.semisupervised")
  assert "M2, 20 labels: test error" in proc.stdout
  results = json.loads((tmp_path / "m2" / "results.json").read_text())
  assert set(results["test_error"]) == {"0", "1"} and results["paper_test_error"] == 0.1197
  for seed in (0, 1):
    records = jaxvae.read_metrics(tmp_path / "m2" / f"seed={seed}" / "metrics.jsonl")
    assert [(r["seed"], r["epoch"]) for r in records] == [(seed, 1), (seed, 2), (seed, 2)] and records[-1]["final"]
    assert all("test_error" in r for r in records) and all(np.isfinite(r["loss"]) for r in records[:-1])
    assert records[-1]["test_error"] == results["test_error"][str(seed)]
  assert (tmp_path / "m2" / "class_grid.png").is_file() and (tmp_path / "m2" / "seed=1" / "jaxvae.json").is_file()

  config = jaxvae.Config(latent_dim=4, hidden_dim=16, num_epochs=1, batch_size=64, eval_iwae_samples=0,
                         data_source="npz", data_path=str(tiny_npz))
  jaxvae.train_and_evaluate(config, tmp_path / "m1")
  m1m2 = (f"--outdir={tmp_path / 'm1m2'}", f"--m1={tmp_path / 'm1'}", *small, *data)
  proc = run_cli(*m1m2, check=False, module="experiments.semisupervised")  # one epoch: no unit is active yet
  assert proc.returncode != 0 and proc.stderr.strip().splitlines()[-1] == (
      f"error: --m1={tmp_path / 'm1'} has no active latent units; use --m1_units=all")
  assert not (tmp_path / "m1m2").exists()
  proc = run_cli(*m1m2, "--m1_units=all", module="experiments.semisupervised")
  assert "M1+M2, 20 labels" in proc.stdout
  model, _ = conditional.load_model(tmp_path / "m1m2" / "seed=0")
  assert model.likelihood == "gaussian" and model.output_dim == 4
  assert (tmp_path / "m1m2" / "class_grid.png").is_file()


@pytest.mark.parametrize("flags, message", [
    (("--seeds=0,x",), "error: --seeds must be integers separated by commas, got 0,x"),
    (("--seeds=1,1",), "error: --seeds must be distinct non-negative integers, got 1,1"),
    (("--num_labels=25",), "error: --num_labels must be a multiple of 10 (equal per digit), got 25"),
    (("--num_labels=600",), "error: class 0 has"),
])
def test_semisupervised_refuses_bad_flags(tiny_npz, tmp_path, flags, message):
  proc = run_cli(f"--outdir={tmp_path / 'out'}", *flags, "--num_epochs=1", *NPZ, f"--data_path={tiny_npz}",
                 check=False, module="experiments.semisupervised")
  assert proc.returncode != 0 and proc.stderr.strip().splitlines()[-1].startswith(message)
  assert not (tmp_path / "out").exists()
