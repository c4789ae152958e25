"""Semi-supervised MNIST from a few labels on `loop.fit`: M2 and M1+M2 (Kingma et al. 2014).

For every seed s: a labelled set of `num_labels` training images (num_labels / 10
per digit, drawn with key s), the other training images unlabelled, and an M2
(`conditional.M2`) trained from init key s with `conditional.m2_loss`. M2 sees
dynamically binarized pixels (Bernoulli likelihood); M1+M2 sees z1 ~ q(z1 | x)
of a trained VAE, M1 (a fresh draw every step; Gaussian likelihood), and is
tested on the posterior means. The test error is that of argmax q(y | x) on the
test images after the last epoch (no model selection on the test set).

`run_study(config, outdir)` writes into `outdir` (a study directory of its own):
  config.json         the study's settings
  seed=<s>/           one complete run per seed (resumable; `jaxvae.load_model`):
                      its metrics.jsonl (the three loss terms per epoch, the test error
                      every `eval_every` epochs), checkpoints/, final record
  results.json        test error per seed, mean and sample std, the paper's number
  class_grid.png      the first seed's M2 drawing each digit (rows) from shared z (columns);
                      for M1+M2, decoded to pixels by M1's decoder
"""

import dataclasses
import hashlib

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxvae import checkpoints
from jaxvae import conditional
from jaxvae import config as config_lib
from jaxvae import data as data_lib
from jaxvae import distributions
from jaxvae import evaluate
from jaxvae import loop
from jaxvae import models
from jaxvae import plots
from jaxvae import train
from jaxvae import workdir as workdir_lib
from jaxvae.errors import ConfigError

PAPER_ERROR = {"M2": 0.1197, "M1+M2": 0.0333}  # Kingma et al. 2014, Table 1, 100 labels
STUDY_KIND, RUN_KIND = "semisupervised study", "m2"
OUTPUTS = ("config.json", "results.json", "class_grid.png", "seed=*")


@dataclasses.dataclass(frozen=True)
class SemisupervisedConfig:
  m1: str | None = None  # workdir of a trained VAE: M2 on its latent codes (M1+M2)
  m1_units: str = "active"  # or "all": the M1 latent units M2 models
  num_labels: int = 100
  seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
  alpha: float = 0.1  # weight of the labelled cross-entropy (conditional.m2_loss)
  labelled_weight: float | None = None  # f; default num_labels / number of training images
  num_epochs: int = 100
  batch_size: int = 100
  labelled_batch_size: int = 100
  latent_dim: int = 50
  hidden_dim: int = 500
  num_layers: int = 1
  activation: str = "softplus"
  learning_rate: float = 3e-4
  eval_every: int = 10
  checkpoint_every: int = 1
  data_source: str = "auto"
  data_path: str | None = None

  def validate(self) -> "SemisupervisedConfig":
    config_lib.check_settings(self, positive=("num_labels", "num_epochs", "batch_size", "labelled_batch_size",
                                              "latent_dim", "hidden_dim", "eval_every", "checkpoint_every"),
                              nonnegative=("num_layers",), finite_positive=("learning_rate",))
    if self.num_labels % data_lib.NUM_CLASSES:
      raise ConfigError(f"--num_labels must be a multiple of 10 (equal per digit), got {self.num_labels}")
    if not self.seeds or len(set(self.seeds)) != len(self.seeds) or any(
        not isinstance(s, int) or not 0 <= s <= config_lib.LIMITS["seed"] for s in self.seeds):
      raise ConfigError(f"--seeds must be distinct non-negative integers, got {','.join(map(str, self.seeds))}")
    if not (isinstance(self.alpha, (int, float)) and np.isfinite(self.alpha) and self.alpha >= 0):
      raise ConfigError(f"alpha must be a finite number >= 0, got {self.alpha!r}")
    if self.labelled_weight is not None and not 0 <= self.labelled_weight <= 1:
      raise ConfigError(f"labelled_weight must be in [0, 1], got {self.labelled_weight!r}")
    if self.m1_units not in ("active", "all"):
      raise ConfigError(f"m1_units must be active or all, got {self.m1_units!r}")
    if self.activation not in models.ACTIVATIONS:
      raise ConfigError(f"activation must be one of {', '.join(models.ACTIVATIONS)}; got {self.activation!r}")
    return self

  @property
  def name(self) -> str:
    return "M1+M2" if self.m1 else "M2"


RESUMABLE = ("num_epochs", "eval_every", "checkpoint_every", "data_source", "data_path", "seeds")
IDENTITY = ("m1_fingerprint",)  # M1's identity: checked on its own (`_check_m1`), with its own message


def make_loss(model: conditional.M2, alpha: float, labelled_fraction: float, labelled_batch_size: int, inputs: str):
  """The `train.make_step` loss of M2 on a batch of unlabelled inputs, with the labelled set as context.

  `inputs="pixels"`: batches are uint8 images, binarized afresh each step;
  `inputs="codes"`: batches are (mean, logvar) of M1's q(z1 | x), sampled each step.
  The context is (inputs of the labelled images, labels); each step draws
  `labelled_batch_size` of them with replacement. `alpha`, `labelled_fraction`: see
  `conditional.m2_loss`.
  """

  def targets(key, batch):
    if inputs == "pixels":
      return data_lib.train_targets(key, batch, "dynamic")
    mean, logvar = batch
    return distributions.reparameterize(key, mean, logvar)

  def loss_fn(params, unlabelled, batch_key, step_key, step, labelled_set):
    del step_key, step
    u_key, l_key, pick_key, loss_key = jax.random.split(batch_key, 4)
    labelled, labels = labelled_set
    pick = jax.random.randint(pick_key, (labelled_batch_size,), 0, labels.shape[0])
    x_l = targets(l_key, jax.tree.map(lambda a: a[pick], labelled))
    return conditional.m2_loss(model, params, loss_key, targets(u_key, unlabelled), x_l, labels[pick], alpha,
                               labelled_fraction)

  return loss_fn


def read_m1(workdir):
  """M1's (model, params): a single VAE run (`experiments.mnist`)."""
  m1, m1_params, m1_config = checkpoints.load_model(workdir)
  if not isinstance(m1_config, config_lib.Config) or m1_config.model != "vae" or m1_config.num_replicas != 1:
    raise ConfigError(f"--m1={workdir} does not hold a single VAE run; M1 must be one (experiments.mnist)")
  return m1, m1_params


def load_m1(workdir, train_x, test_x, units: str = "active", m1=None):
  """M1's (model, params), its codes (q(z1 | x) of the training images, means of the test images)
  and the indices of the latent units kept (`units`: "active" or "all"). `m1`: its (model, params)
  if already read (`read_m1`)."""
  m1, m1_params = m1 or read_m1(workdir)
  mean, logvar = evaluate.posteriors(m1, m1_params, train_x)
  keep = np.arange(m1.latent_dim)
  if units == "active":  # the statistic of `evaluate.active_units`
    keep = np.flatnonzero(np.asarray(jnp.var(mean, axis=0)) > 0.01)
    if not len(keep):
      raise ConfigError(f"--m1={workdir} has no active latent units; use --m1_units=all")
  test_means = evaluate.latent_means(m1, m1_params, test_x)
  return (m1, m1_params), (mean[:, keep], logvar[:, keep]), test_means[:, keep], keep


def build_model(config: SemisupervisedConfig, input_dim: int) -> conditional.M2:
  return conditional.M2(latent_dim=config.latent_dim, output_dim=input_dim, hidden_dim=config.hidden_dim,
                        num_layers=config.num_layers, activation=config.activation,
                        likelihood="gaussian" if config.m1 else "bernoulli",
                        classifier_hidden_dim=config.hidden_dim, classifier_layers=max(config.num_layers, 1))


def _settings(config: SemisupervisedConfig) -> dict:
  return {**dataclasses.asdict(config), "seeds": list(config.seeds)}


def _check_m1(wd: workdir_lib.Workdir, config: SemisupervisedConfig, m1_fingerprint: str) -> None:
  """Refuses to go on with a study whose M1 changed since it started (its codes did with it)."""
  if not wd.holds_run() or not (wd.path / "config.json").exists():
    return
  before = workdir_lib.read_json_object(wd.path / "config.json", "config").get("m1_fingerprint")
  if before == m1_fingerprint:
    return
  what = (f"its parameters changed since (fingerprint {before} then, {m1_fingerprint} now), and its codes with them"
          if before else "this study recorded no fingerprint of its M1 (an earlier jaxvae wrote it), so an unchanged "
          "M1 cannot be checked")
  raise ConfigError(f"--m1={config.m1} is not known to be the M1 that {wd.path} was trained on: {what}; use another "
                    "--outdir, or --overwrite to train the study again on this M1")


def run_study(config: SemisupervisedConfig, outdir, overwrite: bool = False) -> dict:
  """Trains one M2 per seed in `outdir/seed=<s>/` (each through `loop.fit`, so each resumes),
  then writes results.json and class_grid.png; returns the results. An M1+M2 study records its
  M1's fingerprint (`checkpoints.fingerprint`) and refuses to go on when M1 changed."""
  config.validate()
  m1_read = read_m1(config.m1) if config.m1 else None
  m1_fingerprint = checkpoints.fingerprint(m1_read[1]) if config.m1 else None
  settings = {**_settings(config), "m1_fingerprint": m1_fingerprint}
  with workdir_lib.Workdir(outdir, STUDY_KIND, OUTPUTS, flag="--outdir", config=settings,
                           resumable=RESUMABLE + IDENTITY) as wd:
    wd.check(overwrite)
    if config.m1 and not overwrite:
      _check_m1(wd, config, m1_fingerprint)
    mnist = data_lib.load_mnist(config.data_source, path=config.data_path)
    labelled_indices = {s: data_lib.balanced_subset(train.KeyStreams.from_seed(s).data, mnist.train.labels,
                                                    config.num_labels // 10) for s in config.seeds}
    test_x = jnp.asarray(data_lib.test_targets(mnist.test.images, "dynamic"))
    if config.m1:
      train_x = jnp.asarray(data_lib.test_targets(mnist.train.images, "dynamic"))
      m1, train_inputs, test_inputs, m1_units = load_m1(config.m1, train_x, test_x, config.m1_units, m1_read)
    else:
      train_inputs, test_inputs = jnp.asarray(mnist.train.images), test_x
    num_unlabelled = len(mnist.train.labels) - config.num_labels
    if config.batch_size > num_unlabelled:
      raise ConfigError(f"batch_size {config.batch_size} exceeds the {num_unlabelled} unlabelled training images")
    wd.open(overwrite)
    workdir_lib.write_json(wd.path / "config.json", settings)
    model = build_model(config, int(test_inputs.shape[-1]))
    optimizer = optax.adam(config.learning_rate)
    labelled_fraction = config.num_labels / len(mnist.train.labels)
    if config.labelled_weight is not None:
      labelled_fraction = config.labelled_weight
    inputs = "codes" if config.m1 else "pixels"
    epoch_fn = train.make_epoch(make_loss(model, config.alpha, labelled_fraction, config.labelled_batch_size, inputs),
                                optimizer, config.batch_size)
    test_labels = np.asarray(mnist.test.labels)
    test_error = lambda params: float(np.mean(np.asarray(conditional.predict(model, params, test_inputs)) != test_labels))
    errors, first_params = {}, None
    # What each run trains on: the pixels, and for M1+M2 the codes of this M1 (its fingerprint and units).
    train_fingerprint = data_lib.fingerprint(mnist.train)
    if config.m1:
      codes = f"{train_fingerprint}:{m1_fingerprint}:{[int(u) for u in m1_units]}"
      train_fingerprint = hashlib.sha256(codes.encode()).hexdigest()[:16]
    for seed in config.seeds:
      keys = train.KeyStreams.from_seed(seed)
      chosen = labelled_indices[seed]
      rest = np.setdiff1d(np.arange(len(mnist.train.labels)), chosen)
      take = lambda idx: jax.tree.map(lambda a: a[idx], train_inputs)
      labelled_set = (take(chosen), jnp.asarray(mnist.train.labels[chosen]))
      unlabelled = take(rest)

      def record(params, index, epoch, m, seed=seed):
        del index
        rec = {"seed": seed, "loss": float(m["loss"]), "neg_unlabelled_bound": float(m["neg_unlabelled_bound"]),
               "neg_labelled_bound": float(m["neg_labelled_bound"]), "cross_entropy": float(m["cross_entropy"])}
        if epoch % config.eval_every == 0 or epoch == config.num_epochs:
          rec["test_error"] = test_error(params)
        return rec

      def summary(r):
        text = (f"{config.name} seed {r['seed']}  -U {r['neg_unlabelled_bound']:8.2f}  -L {r['neg_labelled_bound']:8.2f}"
                f"  CE {r['cross_entropy']:.4f}")
        return text + (f"  test error {100 * r['test_error']:.2f}%" if "test_error" in r else "")

      with workdir_lib.Workdir(wd.path / f"seed={seed}", RUN_KIND, workdir_lib.RUN_OUTPUTS, flag="--outdir",
                               config={**settings, "seed": seed}, resumable=RESUMABLE + IDENTITY + ("seed",),
                               marker_fields={"model": checkpoints.model_spec(model)}) as run_dir:
        final = loop.fit(
            run_dir, state=train.init_state(
                conditional.init_params(model, keys.init), optimizer),
            train_epoch=lambda state, epoch, keys=keys, unlabelled=unlabelled, labelled_set=labelled_set: epoch_fn(
                state, unlabelled, jax.random.fold_in(keys.train, epoch), keys.train, labelled_set),
            num_epochs=config.num_epochs, record=record,
            final=lambda params, index, seed=seed: {"seed": seed, "test_error": test_error(params)},
            summary=summary, final_summary=lambda f: f"{config.name} seed {f['seed']}: test error "
                                                     f"{100 * f['test_error']:.2f}%",
            checkpoint_every=config.checkpoint_every,
            data_fingerprint=train_fingerprint)[0]
      errors[seed] = final["test_error"]
      if first_params is None:
        first_params = checkpoints.load_model(wd.path / f"seed={seed}")[1]

    values = np.asarray(list(errors.values()))
    results = {"model": config.name, "num_labels": config.num_labels, "alpha": config.alpha,
               "labelled_weight": labelled_fraction, "num_epochs": config.num_epochs,
               "m1": config.m1, "m1_units": [int(u) for u in m1_units] if config.m1 else None,
               "test_error": {str(s): e for s, e in errors.items()},
               "mean_test_error": float(values.mean()),
               "std_test_error": float(values.std(ddof=1)) if len(values) > 1 else None,
               "paper_test_error": PAPER_ERROR[config.name]}
    z = jax.random.normal(jax.random.key(config.seeds[0]), (12, model.latent_dim))
    grid = conditional.class_grid(model, first_params, z)  # [10, 12, D]
    if config.m1:
      m1_model, m1_params = m1
      z1 = jnp.zeros((*grid.shape[:-1], m1_model.latent_dim)).at[..., m1_units].set(grid)  # inactive units: 0
      grid = jax.nn.sigmoid(m1_model.apply(m1_params, z1, method=m1_model.decode))
    grid = np.asarray(grid)
    plots.save_image_grid(wd.path / "class_grid.png", grid.reshape(-1, grid.shape[-1]), num_cols=grid.shape[1])
    workdir_lib.write_json(wd.path / "results.json", results)
  return results

