r"""Semi-supervised MNIST from 100 labels: M2 and M1+M2 (Kingma et al. 2014).

  python -m experiments.semisupervised --outdir=runs/m2                    # M2 on pixels
  python -m experiments.mnist --workdir=runs/m1 --latent_dim=50 --hidden_dim=600 --num_layers=2 \
      --activation=softplus --num_epochs=100 --eval_iwae_samples=0          # M1: a VAE on all images
  python -m experiments.semisupervised --m1=runs/m1 --outdir=runs/m1m2     # M1+M2

For every seed s in --seeds: a labelled set of --num_labels training images
(num_labels / 10 per digit, drawn with key s), the other training images
unlabelled, and an M2 (`jaxvae.conditional.M2`) trained from init key s with
`conditional.m2_loss`. M2 sees dynamically binarized pixels (Bernoulli
likelihood); M1+M2 sees z1 ~ q(z1 | x) of the M1 VAE, a fresh draw every step
(Gaussian likelihood), and is tested on the posterior means. The test error is
that of argmax q(y | x) on the 10,000 test images after the last epoch (no model
selection on the test set). Writes into --outdir:

  metrics.jsonl       per seed and epoch: the three loss terms; test error every --eval_every epochs
  results.json        test error per seed, mean and sample std, the paper's number
  seed=<s>/           model.json and checkpoints/ of that seed's M2 (`conditional.load_model`)
  class_grid.png      the first seed's M2 drawing each digit (rows) from shared z (columns);
                      for M1+M2, decoded to pixels by M1's decoder
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
from jaxvae import conditional
from jaxvae import distributions
from jaxvae import plots

_OUTDIR = flags.DEFINE_string("outdir", "runs/m2", "Where metrics, results, models and pictures go.")
_M1 = flags.DEFINE_string("m1", None, "Workdir of a trained VAE (experiments.mnist): train M2 on its latent "
                          "codes (M1+M2). Default: M2 on pixels.")
_M1_UNITS = flags.DEFINE_enum("m1_units", "active", ("active", "all"), "M1+M2: the M1 latent units M2 models: "
                               "active (posterior-mean variance > 0.01 over the training images; the others are "
                               "noise from the prior, independent of x) or all.")
_NUM_LABELS = flags.DEFINE_integer("num_labels", 100, "Labelled training images, a multiple of 10.", lower_bound=10)
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2", "3", "4"], "One run per seed: label draw and init.")
_ALPHA = flags.DEFINE_float("alpha", 0.1, "Weight of the labelled cross-entropy -log q(y|x) in the loss per "
                            "example (conditional.m2_loss); the paper's 0.1 N.", lower_bound=0)
_LABELLED_WEIGHT = flags.DEFINE_float("labelled_weight", None, "Weight f of the labelled bound, 1 - f that of the "
                                      "unlabelled one (conditional.m2_loss). Default: the labelled share of the "
                                      "training images, num_labels / 60000, as in the paper.", lower_bound=0,
                                      upper_bound=1)
_NUM_EPOCHS = flags.DEFINE_integer("num_epochs", 100, "Passes over the unlabelled images.", lower_bound=1)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 100, "Unlabelled images per step.", lower_bound=1)
_LABELLED_BATCH_SIZE = flags.DEFINE_integer("labelled_batch_size", 100, "Labelled images per step, drawn with "
                                            "replacement from the labelled set.", lower_bound=1)
_LATENT_DIM = flags.DEFINE_integer("latent_dim", 50, "Dimension of M2's z.", lower_bound=1)
_HIDDEN_DIM = flags.DEFINE_integer("hidden_dim", 500, "Hidden width of encoder, decoder and classifier.",
                                   lower_bound=1)
_NUM_LAYERS = flags.DEFINE_integer("num_layers", 1, "Hidden layers of each network.", lower_bound=0)
_ACTIVATION = flags.DEFINE_enum("activation", "softplus", jaxvae.ACTIVATIONS, "Hidden activation (jax.nn).")
_LEARNING_RATE = flags.DEFINE_float("learning_rate", 3e-4, "Adam learning rate.", lower_bound=0)
_EVAL_EVERY = flags.DEFINE_integer("eval_every", 10, "Epochs between test-error records.", lower_bound=1)
_OVERWRITE = flags.DEFINE_boolean("overwrite", False, "Replace a study already in --outdir.")
_DATA_SOURCE = flags.DEFINE_enum("data_source", "auto", jaxvae.data.SOURCES, "As in experiments.mnist.")
_DATA_PATH = flags.DEFINE_string("data_path", None, "File for --data_source=npz.")

PAPER_ERROR = {"M2": 0.1197, "M1+M2": 0.0333}  # Kingma et al. 2014, Table 1, 100 labels
RESULTS = "results.json"


def parse_seeds(values) -> list[int]:
  try:
    seeds = [int(v) for v in values]
  except ValueError:
    raise jaxvae.ConfigError(f"--seeds must be non-negative integers, got {','.join(values)}") from None
  if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
    raise jaxvae.ConfigError(f"--seeds must be distinct non-negative integers, got {','.join(values)}")
  return seeds


def prepare_outdir(outdir: pathlib.Path, overwrite: bool) -> None:
  """Refuses a directory holding something else, or an earlier study without `overwrite`
  (which removes that study's outputs first)."""
  jaxvae.run.check_study_dir(outdir, "semi-supervised study", marker="metrics.jsonl")
  if (outdir / "metrics.jsonl").is_file():
    if not overwrite:
      raise jaxvae.ConfigError(f"--outdir={outdir} already holds a semi-supervised study; pass --overwrite "
                               "to replace it")
    (outdir / "metrics.jsonl").unlink()  # the marker first: a crash midway leaves a dir that is refused
    for path in [outdir / RESULTS, outdir / "class_grid.png", *outdir.glob("seed=*")]:
      shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
  outdir.mkdir(parents=True, exist_ok=True)


def make_loss(model: conditional.M2, alpha: float, labelled_fraction: float, labelled_batch_size: int, inputs: str):
  """`loss_fn(params, key, unlabelled_batch, labelled_set)` for `train.make_scan_epoch`.

  `inputs="pixels"`: batches are uint8 images, binarized afresh each step;
  `inputs="codes"`: batches are (mean, logvar) of M1's q(z1 | x), sampled each step.
  `labelled_set` is (inputs of the labelled images, labels); each step draws
  `labelled_batch_size` of them with replacement. `alpha`, `labelled_fraction`: see
  `conditional.m2_loss`.
  """

  def targets(key, batch):
    if inputs == "pixels":
      return jaxvae.train_targets(key, batch, "dynamic")
    mean, logvar = batch
    return distributions.reparameterize(key, mean, logvar)

  def loss_fn(params, key, unlabelled, labelled_set):
    u_key, l_key, pick_key, loss_key = jax.random.split(key, 4)
    labelled, labels = labelled_set
    pick = jax.random.randint(pick_key, (labelled_batch_size,), 0, labels.shape[0])
    x_l = targets(l_key, jax.tree.map(lambda a: a[pick], labelled))
    return conditional.m2_loss(model, params, loss_key, targets(u_key, unlabelled), x_l, labels[pick], alpha,
                               labelled_fraction)

  return loss_fn


def load_m1(workdir, train_x, test_x, units: str = "active"):
  """M1's (model, params), its codes (q(z1 | x) of the training images, means of the test images)
  and the indices of the latent units kept (`units`: "active" or "all")."""
  m1, m1_params, m1_config = jaxvae.load_model(workdir)
  if m1_config.model != "vae" or m1_config.num_replicas != 1:
    raise jaxvae.ConfigError(f"--m1={workdir} holds a {m1_config.model} run with {m1_config.num_replicas} "
                             "replicas; M1 must be a single VAE")
  mean, logvar = jaxvae.evaluate.posteriors(m1, m1_params, train_x)
  keep = np.arange(m1.latent_dim)
  if units == "active":  # the statistic of `jaxvae.active_units`
    keep = np.flatnonzero(np.asarray(jnp.var(mean, axis=0)) > 0.01)
    if not len(keep):
      raise jaxvae.ConfigError(f"--m1={workdir} has no active latent units; use --m1_units=all")
  test_means = jaxvae.latent_means(m1, m1_params, test_x)
  return (m1, m1_params), (mean[:, keep], logvar[:, keep]), test_means[:, keep], keep


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  jaxvae.run.quiet_library_logs()
  outdir = pathlib.Path(_OUTDIR.value)
  try:
    seeds = parse_seeds(_SEEDS.value)
    if _NUM_LABELS.value % 10:
      raise jaxvae.ConfigError(f"--num_labels must be a multiple of 10 (equal per digit), got {_NUM_LABELS.value}")
    mnist = jaxvae.load_mnist(_DATA_SOURCE.value, path=_DATA_PATH.value)
    labelled_indices = {s: jaxvae.data.balanced_subset(jaxvae.KeyStreams.from_seed(s).data, mnist.train.labels,
                                                       _NUM_LABELS.value // 10) for s in seeds}
    test_x = jnp.asarray(jaxvae.test_targets(mnist.test.images, "dynamic"))
    if _M1.value:
      train_x = jnp.asarray(jaxvae.test_targets(mnist.train.images, "dynamic"))
      m1, train_inputs, test_inputs, m1_units = load_m1(_M1.value, train_x, test_x, _M1_UNITS.value)
    prepare_outdir(outdir, _OVERWRITE.value)
  except (jaxvae.ConfigError, jaxvae.CheckpointError, jaxvae.DataError) as e:
    sys.exit(f"error: {e}")
  name, inputs = ("M1+M2", "codes") if _M1.value else ("M2", "pixels")
  if not _M1.value:
    train_inputs, test_inputs = jnp.asarray(mnist.train.images), test_x
  model = conditional.M2(latent_dim=_LATENT_DIM.value, output_dim=int(test_inputs.shape[-1]),
                         hidden_dim=_HIDDEN_DIM.value, num_layers=_NUM_LAYERS.value, activation=_ACTIVATION.value,
                         likelihood="gaussian" if _M1.value else "bernoulli", classifier_hidden_dim=_HIDDEN_DIM.value,
                         classifier_layers=max(_NUM_LAYERS.value, 1))
  optimizer = optax.adam(_LEARNING_RATE.value)
  labelled_fraction = _NUM_LABELS.value / len(mnist.train.labels)
  if _LABELLED_WEIGHT.value is not None:
    labelled_fraction = _LABELLED_WEIGHT.value
  loss_fn = make_loss(model, _ALPHA.value, labelled_fraction, _LABELLED_BATCH_SIZE.value, inputs)
  epoch_fn = jaxvae.train.make_scan_epoch(loss_fn, optimizer, _BATCH_SIZE.value)
  test_labels = np.asarray(mnist.test.labels)
  errors, first_params = {}, None
  for seed in seeds:
    keys = jaxvae.KeyStreams.from_seed(seed)
    chosen = labelled_indices[seed]
    rest = np.setdiff1d(np.arange(len(mnist.train.labels)), chosen)
    take = lambda idx: jax.tree.map(lambda a: a[idx], train_inputs)
    labelled_set = (take(chosen), jnp.asarray(mnist.train.labels[chosen]))
    unlabelled = take(rest)
    params = conditional.init_params(model, keys.init)
    state = jaxvae.TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params))
    for epoch in range(1, _NUM_EPOCHS.value + 1):
      start = time.perf_counter()
      state, metrics = jax.device_get(epoch_fn(state, unlabelled, jax.random.fold_in(keys.train, epoch),
                                               labelled_set))
      if not np.isfinite(metrics["loss"]):
        sys.exit(f"error: seed {seed}: the training loss became non-finite in epoch {epoch}; "
                 "try a lower --learning_rate")
      record = {"seed": seed, "epoch": epoch, **{k: float(v) for k, v in metrics.items()},
                "seconds": round(time.perf_counter() - start, 3)}
      if epoch % _EVAL_EVERY.value == 0 or epoch == _NUM_EPOCHS.value:
        predicted = np.asarray(conditional.predict(model, state.params, test_inputs))
        record["test_error"] = float(np.mean(predicted != test_labels))
        logging.info("%s seed %d epoch %4d/%d  -U %8.2f  -L %8.2f  CE %.4f  test error %.2f%%", name, seed, epoch,
                     _NUM_EPOCHS.value, record["neg_unlabelled_bound"], record["neg_labelled_bound"],
                     record["cross_entropy"], 100 * record["test_error"])
      jaxvae.run.append_metrics(outdir / "metrics.jsonl", record)
    errors[seed] = record["test_error"]
    conditional.save_model(outdir / f"seed={seed}", model, state.params)
    first_params = state.params if first_params is None else first_params

  values = np.asarray(list(errors.values()))
  results = {"model": name, "num_labels": _NUM_LABELS.value, "alpha": _ALPHA.value,
             "labelled_weight": labelled_fraction, "num_epochs": _NUM_EPOCHS.value,
             "m1": _M1.value, "m1_units": [int(u) for u in m1_units] if _M1.value else None,
             "test_error": {str(s): e for s, e in errors.items()},
             "mean_test_error": float(values.mean()),
             "std_test_error": float(values.std(ddof=1)) if len(values) > 1 else None,
             "paper_test_error": PAPER_ERROR[name]}
  z = jax.random.normal(jax.random.key(seeds[0]), (12, model.latent_dim))
  grid = conditional.class_grid(model, first_params, z)  # [10, 12, D]
  if _M1.value:
    m1_model, m1_params = m1
    z1 = jnp.zeros((*grid.shape[:-1], m1_model.latent_dim)).at[..., m1_units].set(grid)  # inactive units: 0
    grid = jax.nn.sigmoid(m1_model.apply(m1_params, z1, method=m1_model.decode))
  grid = np.asarray(grid)
  plots.save_image_grid(outdir / "class_grid.png", grid.reshape(-1, grid.shape[-1]), num_cols=grid.shape[1])
  (outdir / RESULTS).write_text(json.dumps(results, indent=2) + "\n")
  std = "" if results["std_test_error"] is None else f" +- {100 * results['std_test_error']:.2f}"
  print(f"{name}, {_NUM_LABELS.value} labels: test error {100 * results['mean_test_error']:.2f}%{std} over "
        f"{len(seeds)} label draws (paper: {100 * PAPER_ERROR[name]:.2f}%); saved in {outdir}")


if __name__ == "__main__":
  app.run(main)
