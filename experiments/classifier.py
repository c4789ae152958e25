r"""Trains the MNIST classifier that judges generated digits in the latent-space studies.

  python -m experiments.classifier --workdir=runs/classifier

writes an orbax checkpoint and metrics.json (test accuracy) into --workdir; load it
with `jaxvae.classifier.load_classifier(workdir)`. An existing classifier is kept
unless --overwrite is given.
"""

import pathlib
import shutil
import sys

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

import jaxvae
from jaxvae import classifier

_WORKDIR = flags.DEFINE_string("workdir", "runs/classifier", "Where the classifier is saved.")
_NUM_EPOCHS = flags.DEFINE_integer("num_epochs", 10, "Training epochs.", lower_bound=1)
_SEED = flags.DEFINE_integer("seed", 0, "Init and data-order seed.", lower_bound=0)
_OVERWRITE = flags.DEFINE_boolean("overwrite", False, "Replace a classifier already in --workdir.")
_DATA_SOURCE = flags.DEFINE_enum("data_source", "auto", jaxvae.data.SOURCES, "As in experiments.mnist.")
_DATA_PATH = flags.DEFINE_string("data_path", None, "File for --data_source=npz.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  jaxvae.run.quiet_library_logs()
  workdir = pathlib.Path(_WORKDIR.value)
  if workdir.exists() and not workdir.is_dir():
    sys.exit(f"error: {workdir} exists and is not a directory")
  if workdir.exists() and any(workdir.iterdir()):
    if not (workdir / "metrics.json").is_file():
      sys.exit(f"error: {workdir} is not empty and holds no classifier; use another --workdir")
    if not _OVERWRITE.value:
      print(f"{workdir} already holds a classifier: {(workdir / 'metrics.json').read_text().strip()}; "
            "pass --overwrite to train a new one")
      return
  try:
    mnist = jaxvae.load_mnist(_DATA_SOURCE.value, path=_DATA_PATH.value)
  except jaxvae.DataError as e:
    sys.exit(f"error: {e}")
  model, params = classifier.train_classifier(mnist.train, jax.random.key(_SEED.value), _NUM_EPOCHS.value)
  test_x = jaxvae.data.to_unit_interval(jnp.asarray(mnist.test.images))
  probs = classifier.predict_probs(model, params, test_x)
  accuracy = float(np.mean(np.asarray(probs).argmax(axis=1) == mnist.test.labels))
  metrics = {"test_accuracy": accuracy, "num_epochs": _NUM_EPOCHS.value, "seed": _SEED.value,
             **{f"test_{k}": v for k, v in classifier.recognisability(probs).items()}}
  if workdir.exists() and _OVERWRITE.value:  # the marker first: a crash now leaves no half-replaced classifier
    (workdir / "metrics.json").unlink(missing_ok=True)
    shutil.rmtree(workdir / "checkpoints", ignore_errors=True)
  classifier.save_classifier(workdir, params, metrics)
  print(f"test accuracy {accuracy:.4f}; saved in {workdir}")


if __name__ == "__main__":
  app.run(main)
