r"""A conditional VAE on MNIST: digits drawn by class, one "style" z shared down each column.

  python -m experiments.classifier --workdir=runs/classifier   # the judge of the samples
  python -m experiments.cvae --workdir=runs/cvae

trains q(z | x, y) and p(x | z, y) (`jaxvae.conditional.ConditionalVAE`, the label
one-hot) on dynamically binarized MNIST, then writes into --workdir:

  model.json, checkpoints/   the model (`jaxvae.conditional.load_model(workdir)`)
  metrics.jsonl              one line per epoch: train -ELBO, KL, reconstruction
  results.json               test conditional -ELBO (nats, the fixed binarized test set) and the
                             share of class-conditional prior samples the judge assigns to the
                             requested digit, overall and per digit
  class_grid.png             one row per digit 0-9, one column per z ~ N(0, I) shared by the rows
  reconstructions.png        test digits (odd rows) and their reconstructions given their label

An existing run in --workdir is kept unless --overwrite is given.
"""

import json
import pathlib
import shutil
import sys
import time

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxvae
from jaxvae import classifier as classifier_lib
from jaxvae import conditional
from jaxvae import plots

_WORKDIR = flags.DEFINE_string("workdir", "runs/cvae", "Where the model, metrics and pictures go.")
_LATENT_DIM = flags.DEFINE_integer("latent_dim", 4, "Latent dimension L (small: the label, not z, must carry "
                                   "the digit).", lower_bound=1)
_HIDDEN_DIM = flags.DEFINE_integer("hidden_dim", 400, "Width of each hidden layer.", lower_bound=1)
_NUM_LAYERS = flags.DEFINE_integer("num_layers", 1, "Hidden layers in encoder and decoder each.", lower_bound=0)
_ACTIVATION = flags.DEFINE_enum("activation", "relu", jaxvae.ACTIVATIONS, "Hidden activation (jax.nn).")
_NUM_EPOCHS = flags.DEFINE_integer("num_epochs", 50, "Training epochs.", lower_bound=1)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 128, "Training batch size.", lower_bound=1)
_LEARNING_RATE = flags.DEFINE_float("learning_rate", 1e-3, "Adam learning rate.", lower_bound=0)
_SEED = flags.DEFINE_integer("seed", 0, "Root seed: init, data order, binarization, noise, samples.", lower_bound=0)
_CLASSIFIER = flags.DEFINE_string("classifier", "runs/classifier", "Workdir of experiments.classifier (the judge).")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 10000, "Class-conditional samples judged (equal per digit).",
                                    lower_bound=10)
_OVERWRITE = flags.DEFINE_boolean("overwrite", False, "Replace a CVAE run already in --workdir.")
_DATA_SOURCE = flags.DEFINE_enum("data_source", "auto", jaxvae.data.SOURCES, "As in experiments.mnist.")
_DATA_PATH = flags.DEFINE_string("data_path", None, "File for --data_source=npz.")

OUTPUTS = ("checkpoints", conditional.MODEL_FILE, "metrics.jsonl", "results.json", "class_grid.png",
           "reconstructions.png")
GRID_COLUMNS = 12


def prepare_workdir(workdir: pathlib.Path, overwrite: bool, kind: str, outputs=OUTPUTS) -> None:
  """Refuses a workdir holding something else, or (without `overwrite`) an earlier run of this
  experiment (marked by model.json); with `overwrite`, removes that run's `outputs` first."""
  jaxvae.run.check_study_dir(workdir, kind, marker=conditional.MODEL_FILE, flag="--workdir")
  if (workdir / conditional.MODEL_FILE).is_file():
    if not overwrite:
      raise jaxvae.ConfigError(f"--workdir={workdir} already holds a {kind}; pass --overwrite to replace it")
    (workdir / conditional.MODEL_FILE).unlink()  # the marker first: a crash midway leaves a dir that is refused
    for name in outputs:
      path = workdir / name
      shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
  workdir.mkdir(parents=True, exist_ok=True)


def make_loss(model: conditional.ConditionalVAE):
  """`loss_fn(params, key, (images_B, labels_B), context)` for `train.make_scan_epoch`: the batch
  mean of -conditional ELBO on freshly binarized images."""

  def loss_fn(params, key, batch, context):
    del context
    images_BxD, labels_B = batch
    bin_key, z_key = jax.random.split(key)
    x_BxD = jaxvae.train_targets(bin_key, images_BxD, "dynamic")
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


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  jaxvae.run.quiet_library_logs()
  workdir = pathlib.Path(_WORKDIR.value)
  try:
    jaxvae.run.check_study_dir(workdir, "CVAE run", marker=conditional.MODEL_FILE, flag="--workdir")
    judge = classifier_lib.load_classifier(_CLASSIFIER.value)
    mnist = jaxvae.load_mnist(_DATA_SOURCE.value, path=_DATA_PATH.value)
    prepare_workdir(workdir, _OVERWRITE.value, "CVAE run")  # after every input is known to be good
  except (jaxvae.ConfigError, jaxvae.CheckpointError, jaxvae.DataError) as e:
    sys.exit(f"error: {e}")
  model = conditional.ConditionalVAE(latent_dim=_LATENT_DIM.value, hidden_dim=_HIDDEN_DIM.value,
                                     num_layers=_NUM_LAYERS.value, activation=_ACTIVATION.value)
  optimizer = optax.adam(_LEARNING_RATE.value)
  keys = jaxvae.KeyStreams.from_seed(_SEED.value)
  params = conditional.init_params(model, keys.init)
  state = jaxvae.TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params))
  (workdir / conditional.MODEL_FILE).write_text(json.dumps(conditional.model_fields(model), indent=2) + "\n")
  train_data = (jnp.asarray(mnist.train.images), jnp.asarray(mnist.train.labels))
  epoch_fn = jaxvae.train.make_scan_epoch(make_loss(model), optimizer, _BATCH_SIZE.value)
  for epoch in range(1, _NUM_EPOCHS.value + 1):
    start = time.perf_counter()
    state, metrics = jax.device_get(epoch_fn(state, train_data, jax.random.fold_in(keys.data, epoch)))
    if not np.isfinite(metrics["loss"]):
      sys.exit(f"error: the training loss became non-finite in epoch {epoch}; try a lower --learning_rate")
    record = {"epoch": epoch, "train_neg_elbo": float(metrics["loss"]), "train_kl": float(metrics["kl"]),
              "train_reconstruction": float(metrics["reconstruction"]),
              "seconds": round(time.perf_counter() - start, 3)}
    jaxvae.run.append_metrics(workdir / "metrics.jsonl", record)
    logging.info("epoch %4d/%d  train -ELBO %8.2f  KL %6.2f", epoch, _NUM_EPOCHS.value, record["train_neg_elbo"],
                 record["train_kl"])
  params = state.params
  conditional.save_model(workdir, model, params)

  test_x = jnp.asarray(jaxvae.test_targets(mnist.test.images, "dynamic"))
  terms = conditional.conditional_elbo_terms(model, params, keys.eval, test_x, jnp.asarray(mnist.test.labels))
  results = {"test_neg_conditional_elbo": -float(jnp.mean(terms.elbo)), "test_kl": float(jnp.mean(terms.kl)),
             "test_reconstruction": float(jnp.mean(terms.reconstruction)),
             "judge_test_accuracy": json.loads((pathlib.Path(_CLASSIFIER.value) / "metrics.json").read_text())[
                 "test_accuracy"],
             **judge_samples(model, params, keys.sample, judge, _NUM_SAMPLES.value)}
  z = jax.random.normal(jax.random.fold_in(keys.sample, 1), (GRID_COLUMNS, model.latent_dim))
  grid = np.asarray(conditional.class_grid(model, params, z))
  plots.save_image_grid(workdir / "class_grid.png", grid.reshape(-1, grid.shape[-1]), num_cols=GRID_COLUMNS)
  originals = test_x[: 4 * GRID_COLUMNS]
  labels = jnp.asarray(mnist.test.labels[: len(originals)])
  recons = conditional.conditional_reconstructions(model, params, originals, labels)
  rows = lambda images: np.asarray(images).reshape(4, GRID_COLUMNS, -1)
  pairs = np.stack([rows(originals), rows(recons)], 1)  # each row of originals above its reconstructions
  plots.save_image_grid(workdir / "reconstructions.png", pairs.reshape(-1, pairs.shape[-1]), num_cols=GRID_COLUMNS)
  (workdir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
  print(f"test conditional -ELBO {results['test_neg_conditional_elbo']:.2f} nats; "
        f"{100 * results['conditional_accuracy']:.2f}% of class-conditional samples classified as requested; "
        f"saved in {workdir}")


if __name__ == "__main__":
  app.run(main)
