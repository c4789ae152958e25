"""A small MNIST classifier, the project's judge of generated digits.

Trained on grayscale training images (pixel level / 255), so it reads the Bernoulli
means that the decoders produce. `recognisability` turns its probabilities into
the numbers the latent-space studies report.
"""

import dataclasses
import functools
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxvae import checkpoints
from jaxvae import config as config_lib
from jaxvae import data as data_lib
from jaxvae import errors
from jaxvae import loop
from jaxvae import models
from jaxvae import records
from jaxvae import train
from jaxvae import workdir as workdir_lib
from jaxvae import registry


class Classifier(nn.Module):
  """MLP 784 -> hidden_dim (x num_layers, ReLU) -> 10 logits."""

  hidden_dim: int = 512
  num_layers: int = 2

  @nn.compact
  def __call__(self, x_D: jax.Array) -> jax.Array:
    return models.MLP(self.hidden_dim, self.num_layers, data_lib.NUM_CLASSES, "relu", "lecun_normal", name="mlp")(x_D)


def init_params(model: Classifier, key: jax.Array):
  return model.init(key, jnp.zeros((data_lib.NUM_PIXELS,), jnp.float32))


def loss(model: Classifier):
  """The `train.make_step` loss: mean cross-entropy of a batch (x_BxD, labels_B)."""

  def loss_fn(params, batch, batch_key, step_key, step, context):
    del batch_key, step_key, step, context
    x_BxD, labels_B = batch
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(model.apply(params, x_BxD), labels_B)), {}

  return loss_fn


@dataclasses.dataclass(frozen=True)
class ClassifierConfig:
  num_epochs: int = 10
  batch_size: int = 128
  learning_rate: float = 1e-3
  seed: int = 0
  checkpoint_every: int = 1
  data_source: str = "auto"
  data_path: str | None = None

  def validate(self) -> "ClassifierConfig":
    config_lib.check_settings(self, positive=("num_epochs", "batch_size", "checkpoint_every"), nonnegative=("seed",),
                              finite_positive=("learning_rate",))
    return self


KIND = "classifier"
RESUMABLE = ("num_epochs", "checkpoint_every", "data_source", "data_path")


def train_and_evaluate(config: ClassifierConfig, workdir, overwrite: bool = False, mnist=None) -> dict:
  """Trains the judge on grayscale training images in `workdir` through `loop.fit`; the final
  record holds its test accuracy. `mnist`: the data, if already loaded (else from `config`)."""
  config.validate()
  model = Classifier()
  with workdir_lib.Workdir(workdir, KIND, workdir_lib.RUN_OUTPUTS,
                           config=dataclasses.asdict(config), resumable=RESUMABLE,
                           marker_fields={"model": checkpoints.model_spec(model)}) as wd:
    wd.check(overwrite)
    mnist = mnist or data_lib.load_mnist(config.data_source, path=config.data_path)
    if config.batch_size > len(mnist.train.labels):
      raise errors.ConfigError(f"batch_size {config.batch_size} exceeds the {len(mnist.train.labels)} training images")
    optimizer = optax.adam(config.learning_rate)
    init_key, data_key = jax.random.split(jax.random.key(config.seed))
    state = train.init_state(init_params(model, init_key), optimizer)
    train_data = (data_lib.to_unit_interval(jnp.asarray(mnist.train.images)), jnp.asarray(mnist.train.labels))
    test_x = data_lib.to_unit_interval(jnp.asarray(mnist.test.images))
    epoch_fn = train.make_epoch(loss(model), optimizer, config.batch_size)

    def final(params, index):
      del index
      probs = predict_probs(model, params, test_x)
      accuracy = float(np.mean(np.asarray(probs).argmax(axis=1) == mnist.test.labels))
      return {"test_accuracy": accuracy, **{f"test_{k}": v for k, v in recognisability(probs).items()}}

    return loop.fit(
        wd, state=state,
        train_epoch=lambda state, epoch: epoch_fn(state, train_data, jax.random.fold_in(data_key, epoch), data_key),
        num_epochs=config.num_epochs, record=lambda params, index, epoch, m: {"train_cross_entropy": float(m["loss"])},
        final=final, summary=lambda r: f"train cross-entropy {r['train_cross_entropy']:.4f}",
        final_summary=lambda f: f"test accuracy {f['test_accuracy']:.4f}", overwrite=overwrite,
        checkpoint_every=config.checkpoint_every, data_fingerprint=data_lib.fingerprint(mnist.train))[0]


@functools.partial(jax.jit, static_argnums=0)
def predict_probs(model: Classifier, params, x_NxD: jax.Array) -> jax.Array:
  """Class probabilities [N, 10] of images with pixels in [0, 1]."""
  return jax.nn.softmax(model.apply(params, x_NxD))


def recognisability(probs_NxC) -> dict[str, float]:
  """How recognisable a set of images is to the classifier, from its probabilities [N, C].

  mean_max_prob: mean over images of the top class probability; confident: share
  of images with a top probability > 0.9; class_entropy: entropy (nats) of the
  histogram of predicted classes, log(10) = 2.30 when every digit is equally
  common (a generator that makes only a few digits scores low).
  """
  probs_NxC = np.asarray(probs_NxC, np.float64)
  top_N = probs_NxC.max(axis=1)
  counts = np.bincount(probs_NxC.argmax(axis=1), minlength=probs_NxC.shape[1]) / len(probs_NxC)
  nonzero = counts[counts > 0]
  return {"mean_max_prob": float(top_N.mean()), "confident": float(np.mean(top_N > 0.9)),
          "class_entropy": float(-np.sum(nonzero * np.log(nonzero))) + 0.0}  # + 0.0: no -0.0


def load_classifier(workdir, with_settings: bool = False):
  """(model, params) of a classifier trained by `train_and_evaluate`; with `with_settings`, also
  its final record. `errors.CheckpointError` if there is none."""
  workdir = pathlib.Path(workdir)
  marker = workdir_lib.read_marker(workdir) if workdir.is_dir() else None
  if marker is None or marker["kind"] != KIND:
    raise errors.CheckpointError(f"{workdir}: no trained classifier; train one with "
                                 f"`python -m experiments.classifier --workdir={workdir}`")
  model, params, _ = checkpoints.load_model(workdir)
  finals = [r for r in records.read_metrics(workdir / records.METRICS) if r.get("final")]
  if not finals:
    raise errors.CheckpointError(f"{workdir}: the classifier's training has not finished; run its command again")
  settings = finals[-1]
  return (model, params, settings) if with_settings else (model, params)


registry.register(Classifier, init_params)
