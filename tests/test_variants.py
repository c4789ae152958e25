"""Training variants: the IWAE and k-sample objectives, beta, KL warm-up, free bits, the IWAE
learning-rate schedule, output-bias initialisation, and their flags."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxvae
from jaxvae import objectives
from tests.test_cli import run_cli


@pytest.fixture(scope="module")
def model_params_x():
  model = jaxvae.VAE(latent_dim=4, hidden_dim=32)
  params = jaxvae.init_params(model, jax.random.key(0))
  x = (jax.random.uniform(jax.random.key(1), (784,)) < 0.2).astype(jnp.float32)
  return model, params, x


def test_iwae_objective_with_one_sample_is_the_elbo(model_params_x):
  model, params, x = model_params_x
  key = jax.random.key(2)
  one = objectives.iwae_objective(model, params, key, x, 1)
  # The same z: log p(x | z) + log p(z) - log q(z | x), the ELBO with the KL sampled.
  np.testing.assert_allclose(one.elbo, objectives.log_importance_weights(model, params, key, x, 1)[0], rtol=1e-6)
  np.testing.assert_allclose(one.reconstruction - one.kl, one.elbo, rtol=1e-6)  # the KL as sampled
  # In expectation, the analytic-KL ELBO.
  assert_iwae_k1_is_the_elbo_in_expectation(model, params, x, jax.random.key(3))


def assert_iwae_k1_is_the_elbo_in_expectation(model, params, x, key, num=4000):
  keys = jax.random.split(key, num)
  sampled = jax.vmap(lambda k: objectives.iwae_objective(model, params, k, x, 1).elbo)(keys)
  exact = jax.vmap(lambda k: objectives.elbo(model, params, k, x).elbo)(keys)
  assert abs(float(sampled.mean() - exact.mean())) < 4 * float(sampled.std()) / np.sqrt(num)


def test_the_iwae_bound_rises_with_k_on_a_fixed_model(model_params_x):
  model, params, x = model_params_x
  keys = jax.random.split(jax.random.key(4), 400)
  means = [float(jax.vmap(lambda k, n=n: objectives.iwae_objective(model, params, k, x, n).elbo)(keys).mean())
           for n in (1, 5, 50)]
  assert means[0] < means[1] < means[2], means


def test_multi_sample_elbo_averages_single_sample_elbos(model_params_x):
  model, params, x = model_params_x
  key = jax.random.key(5)
  three = objectives.multi_sample_elbo(model, params, key, x, 3)
  singles = [objectives.elbo(model, params, k, x) for k in jax.random.split(key, 3)]
  np.testing.assert_allclose(three.elbo, np.mean([s.elbo for s in singles]), rtol=1e-6)
  np.testing.assert_allclose(three.kl, singles[0].kl, rtol=1e-6)  # analytic: the same for every z
  assert objectives.training_objective("elbo", 1) is objectives.elbo
  with pytest.raises(ValueError, match="unknown training objective 'vi'"):
    objectives.training_objective("vi")


def terms_of(reconstruction, kl_dims_BxL):
  kl_dims_BxL = jnp.asarray(kl_dims_BxL, jnp.float32)
  kl = kl_dims_BxL.sum(-1)
  return objectives.Elbo(jnp.asarray(reconstruction) - kl, jnp.asarray(reconstruction, jnp.float32), kl, kl_dims_BxL)


def test_kl_schedule_weights_warms_up_and_frees_bits():
  terms = terms_of([-100.0, -110.0], [[0.1, 3.0], [0.3, 5.0]])  # batch-mean KL per dimension: 0.2, 4.0
  plain = objectives.KLSchedule()
  np.testing.assert_allclose(plain.loss(terms, 0), -jnp.mean(terms.elbo), rtol=1e-6)
  beta = objectives.KLSchedule(beta=0.5)
  np.testing.assert_allclose(beta.loss(terms, 7), 105.0 + 0.5 * 4.2, rtol=1e-6)
  warm = objectives.KLSchedule(beta=2.0, warmup_steps=4)
  np.testing.assert_allclose([warm.weight(s) for s in range(6)], [0.5, 1.0, 1.5, 2.0, 2.0, 2.0])
  free = objectives.KLSchedule(free_bits=1.0)
  np.testing.assert_allclose(free.loss(terms, 0), 105.0 + 1.0 + 4.0, rtol=1e-6)  # max(1, 0.2) + max(1, 4)
  # A dimension under its free bits gets no gradient towards the prior; one above does.
  grad = jax.grad(lambda kl: free.loss(terms_of([-100.0, -110.0], kl), 0))(jnp.asarray([[0.1, 3.0], [0.3, 5.0]]))
  np.testing.assert_allclose(grad, [[0.0, 0.5], [0.0, 0.5]])


def test_iwae_learning_rate_schedule_stages():
  schedule = jaxvae.train.iwae_learning_rate(1e-3, steps_per_epoch=10)
  decay = 10 ** (-1 / 7)
  ends = np.cumsum([3**i for i in range(8)]) * 10  # stage i ends after sum_{j<=i} 3^j epochs
  assert ends[-1] == 32800
  for stage in range(8):
    start = 0 if stage == 0 else ends[stage - 1]
    for step in (start, ends[stage] - 1):
      np.testing.assert_allclose(schedule(step), 1e-3 * decay**stage, rtol=1e-5)
  np.testing.assert_allclose(schedule(10**6), 1e-3 * decay**7, rtol=1e-5)


def test_output_bias_starts_at_the_logit_of_the_mean_pixel():
  images = np.zeros((4, 784), np.uint8)
  images[:2, :10] = 255  # pixels 0..9 on in half the images; the rest never
  bias = jaxvae.models.data_mean_bias(images)
  np.testing.assert_allclose(bias[:10], 0.0, atol=1e-6)
  np.testing.assert_allclose(bias[10:], jax.scipy.special.logit(1e-3), rtol=1e-5)
  model = jaxvae.VAE(latent_dim=2, hidden_dim=8)
  params = jaxvae.init_params(model, jax.random.key(0), bias)
  np.testing.assert_array_equal(params["params"]["decoder"]["mlp"]["out"]["bias"], bias)
  other = jaxvae.init_params(model, jax.random.key(0))
  np.testing.assert_array_equal(other["params"]["encoder"]["mlp"]["out"]["kernel"],
                                params["params"]["encoder"]["mlp"]["out"]["kernel"])


@pytest.mark.parametrize("fields, message", [
    (dict(model="ae", train_objective="iwae"), "model ae has no KL term"),
    (dict(model="ae", beta=0.5), "model ae has no KL term"),
    (dict(train_objective="iwae", free_bits=0.5), "the iwae objective has none"),
    (dict(train_samples=0), "train_samples must be positive"),
    (dict(beta=-1.0), "beta must be >= 0"),
    (dict(adam_eps=0.0), "adam_eps must be a finite positive number"),
    (dict(lr_schedule="cosine"), "lr_schedule must be one of constant, iwae"),
    (dict(output_bias="mean"), "output_bias must be one of init, data_mean"),
])
def test_config_refuses_conflicting_variants(fields, message):
  with pytest.raises(jaxvae.ConfigError, match=message):
    jaxvae.Config(**fields).validate()


def test_a_run_with_every_variant_trains_and_records_the_kl_weight(tiny_npz, tmp_path):
  base = dict(latent_dim=2, hidden_dim=16, batch_size=64, num_epochs=2, eval_iwae_samples=0, data_source="npz",
              data_path=str(tiny_npz), output_bias="data_mean", lr_schedule="iwae", adam_eps=1e-4)
  warm = jaxvae.Config(beta=2.0, kl_warmup_epochs=2, free_bits=0.1, train_samples=2, **base)
  final = jaxvae.train_and_evaluate(warm, tmp_path / "warm")
  records = jaxvae.read_metrics(tmp_path / "warm" / "metrics.jsonl")
  steps = 512 // 64
  # Mean weight over epoch e's steps s = (e-1)*8 .. e*8-1: 2 * (s + 1) / 16.
  for record, epoch in zip(records[:2], (1, 2)):
    expected = np.mean([2.0 * (s + 1) / (2 * steps) for s in range((epoch - 1) * steps, epoch * steps)])
    assert record["kl_weight"] == pytest.approx(expected, rel=1e-5)
    assert np.isfinite(record["train_loss"]) and record["train_loss"] != record["train_neg_elbo"]
  assert np.isfinite(final["test_neg_elbo"])
  iwae = jaxvae.Config(train_objective="iwae", train_samples=5, **base)
  final = jaxvae.train_and_evaluate(iwae, tmp_path / "iwae")
  records = jaxvae.read_metrics(tmp_path / "iwae" / "metrics.jsonl")
  assert "kl_weight" not in records[0] and np.isfinite(final["test_neg_elbo"])
  # Reloads with the scheduled optimizer's state structure.
  _, _, config = jaxvae.load_model(tmp_path / "iwae")
  assert config == iwae


def test_variant_flags_reach_the_config(tiny_npz, tmp_path):
  workdir = tmp_path / "run"
  run_cli("--data_source=npz", f"--data_path={tiny_npz}", f"--workdir={workdir}", "--latent_dim=2",
          "--hidden_dim=16", "--batch_size=64", "--num_epochs=1", "--eval_iwae_samples=0", "--train_objective=iwae",
          "--train_samples=3", "--lr_schedule=iwae", "--adam_eps=1e-4", "--output_bias=data_mean")
  config = json.loads((workdir / "config.json").read_text())
  assert (config["train_objective"], config["train_samples"], config["lr_schedule"], config["adam_eps"],
          config["output_bias"]) == ("iwae", 3, "iwae", 1e-4, "data_mean")
  proc = run_cli("--data_source=npz", f"--data_path={tiny_npz}", f"--workdir={tmp_path / 'bad'}",
                 "--train_objective=iwae", "--beta=0.5", check=False)
  assert proc.returncode != 0 and proc.stderr.strip().splitlines()[-1].startswith(
      "error: beta, kl_warmup_epochs and free_bits reweight the ELBO's KL term")


@pytest.fixture(scope="module")
def two_layer_params_x():
  model = jaxvae.TwoLayerVAE(latent_dim=3, h1_dim=5, hidden_dim=32, top_hidden_dim=16)
  params = jaxvae.init_params(model, jax.random.key(0))
  x = (jax.random.uniform(jax.random.key(1), (784,)) < 0.2).astype(jnp.float32)
  return model, params, x


def test_the_two_layer_elbo_decomposes_into_its_conditionals(two_layer_params_x):
  model, params, x = two_layer_params_x
  key = jax.random.key(6)
  terms = objectives.elbo(model, params, key, x)  # dispatches to two_layer_elbo
  # The same draws by hand, through the four conditionals.
  m = model.bind(params)
  h1_key, z_key = jax.random.split(key)
  mean1, logvar1 = m.encode_h1(x)
  h1 = mean1 + jnp.exp(0.5 * logvar1) * jax.random.normal(h1_key, mean1.shape)
  mean2, logvar2 = m.encode_top(h1)
  prior_mean1, prior_logvar1 = m.decode_top(mean2 + jnp.exp(0.5 * logvar2) * jax.random.normal(z_key, mean2.shape))
  normal = jax.scipy.stats.norm.logpdf
  log_px = jnp.sum(x * jax.nn.log_sigmoid(m.decode_h1(h1)) + (1 - x) * jax.nn.log_sigmoid(-m.decode_h1(h1)))
  kl_h1 = jnp.sum(normal(h1, mean1, jnp.exp(0.5 * logvar1)) - normal(h1, prior_mean1, jnp.exp(0.5 * prior_logvar1)))
  kl_top = jnp.sum(0.5 * (jnp.exp(logvar2) + mean2**2 - 1 - logvar2))
  np.testing.assert_allclose(terms.reconstruction, log_px, rtol=1e-5)
  np.testing.assert_allclose(terms.kl, kl_h1 + kl_top, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(terms.elbo, terms.reconstruction - terms.kl, rtol=1e-6)
  assert terms.kl_dims.shape == (5 + 3,)
  np.testing.assert_allclose(jnp.sum(terms.kl_dims[5:]), kl_top, rtol=1e-5)
  # In expectation the ELBO equals E[log w] with one importance sample (sampled top KL).
  assert_iwae_k1_is_the_elbo_in_expectation(model, params, x, jax.random.key(7))


def test_the_two_layer_iwae_bound_rises_with_k(two_layer_params_x):
  model, params, x = two_layer_params_x
  keys = jax.random.split(jax.random.key(8), 200)
  means = [float(jax.vmap(lambda k, n=n: objectives.iwae_bound(model, params, k, x, n, chunk_size=8))(keys).mean())
           for n in (1, 10, 100)]
  assert means[0] < means[1] < means[2], means


def test_conv_networks_read_images_and_take_the_data_mean_bias():
  images = np.zeros((4, 784), np.uint8)
  images[:2, :10] = 255
  bias = jaxvae.models.data_mean_bias(images)
  for model in (jaxvae.VAE(latent_dim=2, hidden_dim=8, architecture="conv"),
                jaxvae.TwoLayerVAE(latent_dim=2, h1_dim=3, hidden_dim=8, top_hidden_dim=4, architecture="conv")):
    params = jaxvae.init_params(model, jax.random.key(0), bias)
    assert "conv_1" in params["params"]["encoder"] and "deconv_out" in params["params"]["decoder"]
    np.testing.assert_array_equal(params["params"]["decoder"]["bias"], bias)
    x = (jax.random.uniform(jax.random.key(1), (6, 784)) < 0.2).astype(jnp.float32)
    terms = objectives.batch_elbo(model, params, jax.random.key(2), x)
    assert terms.elbo.shape == (6,) and bool(jnp.all(jnp.isfinite(terms.elbo)))
    # One image alone gives the same logits as inside a batch.
    np.testing.assert_allclose(model.apply(params, x[0]), model.apply(params, x)[0], rtol=1e-4, atol=1e-4)
  with pytest.raises(ValueError, match="28x28 images"):
    jaxvae.init_params(jaxvae.VAE(output_dim=100, architecture="conv"), jax.random.key(0))


@pytest.mark.parametrize("fields, message", [
    (dict(stochastic_layers=3), "stochastic_layers must be 1 or 2"),
    (dict(model="ae", stochastic_layers=2), "model ae is deterministic"),
    (dict(stochastic_layers=2, h1_dim=0), "h1_dim must be positive"),
    (dict(architecture="resnet"), "architecture must be one of mlp, conv"),
])
def test_config_refuses_bad_model_shapes(fields, message):
  with pytest.raises(jaxvae.ConfigError, match=message):
    jaxvae.Config(**fields).validate()


@pytest.mark.slow  # 80 s; the two-layer and conv models' units are tested above, the CLI's loop in test_cli
def test_two_layer_and_conv_runs_train_record_and_reload(tiny_npz, tmp_path):
  workdir = tmp_path / "two"
  proc = run_cli("--data_source=npz", f"--data_path={tiny_npz}", f"--workdir={workdir}", "--stochastic_layers=2",
                 "--architecture=conv", "--latent_dim=2", "--h1_dim=4", "--hidden_dim=16", "--top_hidden_dim=8",
                 "--num_layers=1", "--batch_size=64", "--num_epochs=2", "--eval_iwae_samples=10",
                 "--free_bits=0.05")
  assert "(h1: " in proc.stdout
  final = jaxvae.read_metrics(workdir / "metrics.jsonl")[-1]
  assert final["iwae_nll"] <= final["test_neg_elbo"] and 0 <= final["h1_active_units"] <= 4
  assert (workdir / "samples.png").is_file() and (workdir / "interpolations.png").is_file()
  model, params, config = jaxvae.load_model(workdir)
  assert isinstance(model, jaxvae.TwoLayerVAE) and model.architecture == "conv" and config.h1_dim == 4
  mnist = jaxvae.load_mnist("npz", path=tiny_npz)
  test_x = jnp.asarray(jaxvae.test_targets(mnist.test.images, "dynamic"))
  reloaded = jaxvae.elbo_estimate(model, params, jaxvae.KeyStreams.from_seed(0).eval, test_x)
  assert -reloaded.elbo == pytest.approx(final["test_neg_elbo"], rel=1e-6)
