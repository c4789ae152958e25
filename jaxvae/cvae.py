"""The conditional VAE family on `loop.fit`: class-conditional digits, judged by the project's classifier.

`train_and_evaluate(config, workdir)` trains a `conditional.ConditionalVAE` on
dynamically binarized MNIST (label one-hot) and writes into `workdir`, besides
what every run writes (marker, config.json, metrics.jsonl, checkpoints/):

  results.json         test conditional -ELBO (nats, the fixed binarized test set) and the
                       share of class-conditional prior samples the judge assigns to the
                       requested digit, overall and per digit (also the final record)
  class_grid.png       one row per digit 0-9, one column per z ~ N(0, I) shared by the rows
  reconstructions.png  test digits (odd rows) and their reconstructions given their label
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxvae import checkpoints
from jaxvae import classifier as classifier_lib
from jaxvae import conditional
from jaxvae import config as config_lib
from jaxvae import data as data_lib
from jaxvae import loop
from jaxvae import models
from jaxvae import plots
from jaxvae import train
from jaxvae import workdir as workdir_lib
from jaxvae.errors import ConfigError

KIND = "cvae"
OUTPUTS = ("results.json", "class_grid.png", "reconstructions.png")
GRID_COLUMNS = 12


@dataclasses.dataclass(frozen=True)
class CVAEConfig:
  latent_dim: int = 4  # small: the label, not z, must carry the digit
  hidden_dim: int = 400
  num_layers: int = 1
  activation: str = "relu"
  num_epochs: int = 50
  batch_size: int = 128
  learning_rate: float = 1e-3
  seed: int = 0
  classifier: str = "runs/classifier"  # workdir of the judge (experiments.classifier)
  num_samples: int = 10000  # class-conditional samples judged, equal per digit
  checkpoint_every: int = 1
  data_source: str = "auto"
  data_path: str | None = None

  def validate(self) -> "CVAEConfig":
    config_lib.check_settings(self, positive=("latent_dim", "hidden_dim", "num_epochs", "batch_size", "num_samples",
                                              "checkpoint_every"),
                              nonnegative=("num_layers", "seed"), finite_positive=("learning_rate",),
                              limits={"num_samples": 10**7})
    if self.num_samples < data_lib.NUM_CLASSES:
      raise ConfigError(f"num_samples must be at least {data_lib.NUM_CLASSES} (one per digit), got {self.num_samples}")
    if self.activation not in models.ACTIVATIONS:
      raise ConfigError(f"activation must be one of {', '.join(models.ACTIVATIONS)}; got {self.activation!r}")
    return self


RESUMABLE = ("num_epochs", "num_samples", "classifier", "checkpoint_every", "data_source", "data_path")


def make_loss(model: conditional.ConditionalVAE):
  """The `train.make_step` loss: the batch mean of -conditional ELBO on images binarized afresh
  with the batch key, which also draws the noise."""

  def loss_fn(params, batch, batch_key, step_key, step, context):
    del step_key, step, context
    images_BxD, labels_B = batch
    bin_key, z_key = jax.random.split(batch_key)
    x_BxD = data_lib.train_targets(bin_key, images_BxD, "dynamic")
    terms = jax.vmap(lambda k, x, y: conditional.conditional_elbo(model, params, k, x, y))(
        jax.random.split(z_key, len(x_BxD)), x_BxD, conditional.one_hot(labels_B, model.num_classes))
    return -jnp.mean(terms.elbo), {"kl": jnp.mean(terms.kl), "reconstruction": jnp.mean(terms.reconstruction)}

  return loss_fn


def judge_samples(model, params, key, judge, num_samples: int) -> dict:
  """The judge's verdict on class-conditional samples, `num_samples // 10` per digit."""
  requested = jnp.arange(num_samples // model.num_classes * model.num_classes) % model.num_classes
  probs = np.asarray(classifier_lib.predict_probs(*judge, conditional.sample(model, params, key, requested)))
  requested = np.asarray(requested)
  hit = probs.argmax(axis=1) == requested
  return {"conditional_accuracy": float(hit.mean()),
          "mean_requested_prob": float(probs[np.arange(len(requested)), requested].mean()),
          "per_digit_accuracy": [float(hit[requested == d].mean()) for d in range(model.num_classes)],
          "num_samples": int(len(requested))}


def build_model(config: CVAEConfig) -> conditional.ConditionalVAE:
  return conditional.ConditionalVAE(latent_dim=config.latent_dim, hidden_dim=config.hidden_dim,
                                    num_layers=config.num_layers, activation=config.activation)


def train_and_evaluate(config: CVAEConfig, workdir, overwrite: bool = False) -> dict:
  """Trains and evaluates a CVAE in `workdir` (see the module docstring); returns the final record."""
  config.validate()
  model = build_model(config)
  with workdir_lib.Workdir(workdir, KIND, (*workdir_lib.RUN_OUTPUTS, *OUTPUTS),
                           config=dataclasses.asdict(config), resumable=RESUMABLE,
                           marker_fields={"model": checkpoints.model_spec(model)}) as wd:
    wd.check(overwrite)
    judge_model, judge_params, judge_settings = classifier_lib.load_classifier(config.classifier, with_settings=True)
    mnist = data_lib.load_mnist(config.data_source, path=config.data_path)
    if config.batch_size > len(mnist.train.labels):
      raise ConfigError(f"batch_size {config.batch_size} exceeds the {len(mnist.train.labels)} training images")
    if len(mnist.test.labels) < GRID_COLUMNS:
      raise ConfigError(f"the test set has {len(mnist.test.labels)} images; the pictures need at least {GRID_COLUMNS}")
    optimizer = optax.adam(config.learning_rate)
    keys = train.KeyStreams.from_seed(config.seed)
    state = train.init_state(conditional.init_params(model, keys.init), optimizer)
    train_data = (jnp.asarray(mnist.train.images), jnp.asarray(mnist.train.labels))
    test_x = jnp.asarray(data_lib.test_targets(mnist.test.images, "dynamic"))
    test_labels = jnp.asarray(mnist.test.labels)
    epoch_fn = train.make_epoch(make_loss(model), optimizer, config.batch_size)

    def final(params, index):
      del index
      terms = conditional.conditional_elbo_terms(model, params, keys.eval, test_x, test_labels)
      return {"test_neg_conditional_elbo": -float(jnp.mean(terms.elbo)), "test_kl": float(jnp.mean(terms.kl)),
              "test_reconstruction": float(jnp.mean(terms.reconstruction)),
              "judge": config.classifier, "judge_test_accuracy": judge_settings.get("test_accuracy"),
              **judge_samples(model, params, keys.sample, (judge_model, judge_params), config.num_samples)}

    def artifacts(params, index, directory, epoch):
      if epoch is not None:
        return
      z = jax.random.normal(jax.random.fold_in(keys.sample, 1), (GRID_COLUMNS, model.latent_dim))
      grid = np.asarray(conditional.class_grid(model, params, z))
      plots.save_image_grid(directory / "class_grid.png", grid.reshape(-1, grid.shape[-1]), num_cols=GRID_COLUMNS)
      rows = min(4, len(test_x) // GRID_COLUMNS)
      originals = test_x[: rows * GRID_COLUMNS]
      recons = conditional.conditional_reconstructions(model, params, originals, test_labels[: len(originals)])
      as_rows = lambda images: np.asarray(images).reshape(rows, GRID_COLUMNS, -1)
      pairs = np.stack([as_rows(originals), as_rows(recons)], 1)  # each row of originals above its reconstructions
      plots.save_image_grid(directory / "reconstructions.png", pairs.reshape(-1, pairs.shape[-1]),
                            num_cols=GRID_COLUMNS)

    final_record = loop.fit(
        wd, state=state,
        train_epoch=lambda state, epoch: epoch_fn(state, train_data, jax.random.fold_in(keys.data, epoch), keys.train),
        num_epochs=config.num_epochs,
        record=lambda params, index, epoch, m: {"train_neg_elbo": float(m["loss"]), "train_kl": float(m["kl"]),
                                                "train_reconstruction": float(m["reconstruction"])},
        final=final, artifacts=artifacts,
        summary=lambda r: f"train -ELBO {r['train_neg_elbo']:8.2f}  KL {r['train_kl']:6.2f}",
        final_summary=lambda f: (f"test conditional -ELBO {f['test_neg_conditional_elbo']:.2f} nats; "
                                 f"{100 * f['conditional_accuracy']:.2f}% of class-conditional samples classified "
                                 "as requested"),
        is_complete=lambda f: (f.get("num_samples"), f.get("judge")) == (config.num_samples // 10 * 10,
                                                                          config.classifier),
        overwrite=overwrite, checkpoint_every=config.checkpoint_every,
        data_fingerprint=data_lib.fingerprint(mnist.train))[0]
    results = {k: v for k, v in final_record.items() if k not in ("final", "epoch", "step", "wall_seconds")}
    workdir_lib.write_json(wd.path / "results.json", results)
  return final_record

