"""A small MNIST classifier, the project's judge of generated digits.

Trained on grayscale training images (pixel level / 255), so it reads the Bernoulli
means that the decoders produce. `recognisability` turns its probabilities into
the numbers the latent-space studies report.
"""

import functools
import json
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxvae import checkpoints
from jaxvae import data as data_lib
from jaxvae import models
from jaxvae import train


class Classifier(nn.Module):
  """MLP 784 -> hidden_dim (x num_layers, ReLU) -> 10 logits."""

  hidden_dim: int = 512
  num_layers: int = 2

  @nn.compact
  def __call__(self, x_D: jax.Array) -> jax.Array:
    return models.MLP(self.hidden_dim, self.num_layers, data_lib.NUM_CLASSES, "relu", "lecun_normal", name="mlp")(x_D)


def make_epoch(model: Classifier, optimizer: optax.GradientTransformation, batch_size: int):
  """A jitted `epoch(state, (x_NxD, labels_N), key) -> (state, {"loss": mean cross-entropy})`."""

  def loss_fn(params, key, batch, context):
    del key, context
    x_BxD, labels_B = batch
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(model.apply(params, x_BxD), labels_B)), {}

  return train.make_scan_epoch(loss_fn, optimizer, batch_size)


def train_classifier(train_split: data_lib.Split, key: jax.Array, num_epochs: int = 10, batch_size: int = 128,
                     learning_rate: float = 1e-3, log=print):
  """Trains a `Classifier` on grayscale images; returns (model, params)."""
  model, optimizer = Classifier(), optax.adam(learning_rate)
  init_key, data_key = jax.random.split(key)
  params = model.init(init_key, jnp.zeros((data_lib.NUM_PIXELS,), jnp.float32))
  state = train.TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params))
  x_NxD = jnp.asarray(data_lib.to_unit_interval(jnp.asarray(train_split.images)))
  labels_N = jnp.asarray(train_split.labels)
  epoch = make_epoch(model, optimizer, batch_size)
  for i in range(1, num_epochs + 1):
    state, metrics = epoch(state, (x_NxD, labels_N), jax.random.fold_in(data_key, i))
    log(f"classifier epoch {i}/{num_epochs}: train cross-entropy {float(metrics['loss']):.4f}")
  return model, state.params


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


def save_classifier(workdir, params, metrics: dict) -> None:
  """Writes params (an orbax checkpoint) and metrics.json (test accuracy) into `workdir`."""
  workdir = pathlib.Path(workdir)
  checkpoints.save_params(workdir, params)
  (workdir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")


def load_classifier(workdir):
  """(model, params) saved by `save_classifier`; `checkpoints.CheckpointError` if there is none."""
  workdir = pathlib.Path(workdir)
  if not (workdir / "metrics.json").is_file():
    raise checkpoints.CheckpointError(f"{workdir}: no trained classifier; train one with "
                                      f"`python -m experiments.classifier --workdir={workdir}`")
  model = Classifier()
  params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((data_lib.NUM_PIXELS,), jnp.float32))
  return model, checkpoints.load_params(workdir, params)
