"""The run configuration: one frozen dataclass, saved as config.json in the workdir."""

import dataclasses
import json
import math
import types

from jaxvae import data as data_lib
from jaxvae import models
from jaxvae import objectives
from jaxvae import train
from jaxvae import workdir as workdir_lib
from jaxvae.errors import ConfigError

# Upper bounds of the integer settings: larger values are typos that would only fail later
# (out of memory, an integer overflow), after the workdir was created.
MAX_WIDTH = 1 << 16
LIMITS = {"latent_dim": MAX_WIDTH, "hidden_dim": MAX_WIDTH, "h1_dim": MAX_WIDTH, "top_hidden_dim": MAX_WIDTH,
          "num_layers": 64, "num_epochs": 10**7, "batch_size": 1 << 24, "num_replicas": 4096,
          "train_samples": 1 << 16, "eval_iwae_samples": 10**7, "iwae_chunk_size": 1 << 20,
          "eval_batch_size": 1 << 20, "checkpoint_every": 10**7, "kl_warmup_epochs": 10**7, "seed": 2**31 - 1}
# Optimizer settings outside these bounds make training a no-op: an update below float32's resolution
# of the parameters (a learning rate under 1e-9), or Adam's step divided by an epsilon above 1.
MIN_LEARNING_RATE = 1e-9
MAX_ADAM_EPS = 1.0


@dataclasses.dataclass(frozen=True)
class Config:
  # Model.
  model: str = "vae"  # "vae", or "ae": the same networks trained as a deterministic autoencoder
  latent_dim: int = 20
  hidden_dim: int = 400
  num_layers: int = 1
  activation: str = "relu"
  weight_init: str = "uniform"  # see models.WEIGHT_INITS
  output_bias: str = "init"  # "init", or "data_mean": decoder output biases at the logit of the mean training pixel
  architecture: str = "mlp"  # or "conv": convolutions next to the image (see models.ARCHITECTURES)
  stochastic_layers: int = 1  # or 2: x <-> h1 (h1_dim units) <-> z (latent_dim units), models.TwoLayerVAE
  h1_dim: int = 100  # two layers: units of h1
  top_hidden_dim: int = 100  # two layers: width of the networks between h1 and z
  # Objective (see objectives.training_objective and objectives.KLSchedule).
  train_objective: str = "elbo"  # "elbo", or "iwae": the train_samples-sample importance-weighted bound
  train_samples: int = 1  # k: samples of z per example and step (the ELBO is averaged over them)
  beta: float = 1.0  # weight of the KL term in the training loss
  kl_warmup_epochs: int = 0  # the KL weight rises linearly from 0 to beta over these epochs
  free_bits: float = 0.0  # nats per latent dimension below which its KL is not penalized
  # Optimisation.
  num_epochs: int = 50
  batch_size: int = 128
  learning_rate: float = 1e-3
  lr_schedule: str = "constant"  # or "iwae": 3^i epochs at learning_rate * 10^(-i/7), i = 0..7
  adam_eps: float = 1e-8
  seed: int = 0
  num_replicas: int = 1  # an ensemble of independent models with seeds seed, seed+1, ... in one program
  # Data.
  binarization: str = "dynamic"
  data_source: str = "auto"
  data_dir: str | None = None  # TFDS data dir
  data_path: str | None = None  # .npz (source npz) or pickle (source offline)
  tfds_download: bool = False
  exclude_digit: int | None = None  # leave this digit out of the training set (anomaly detection)
  # Evaluation and checkpoints.
  eval_iwae_samples: int = 5000  # 0 skips the IWAE estimate
  iwae_chunk_size: int = 500  # importance samples decoded at once per example
  eval_batch_size: int = 100  # test images per IWAE call
  checkpoint_every: int = 1  # epochs between checkpoints (and always the last)
  nonfinite_policy: str = "stop"  # a non-finite loss/gradient: "stop" the run, or "skip" the update

  def validate(self) -> "Config":
    """Raises `ConfigError` naming the first invalid field; returns self."""
    for name, limit in LIMITS.items():
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
      if value > limit:
        raise ConfigError(f"{name} must be at most {limit:,}, got {value:,}")
    for name in ("learning_rate", "adam_eps", "beta", "free_bits"):
      if not isinstance(getattr(self, name), (int, float)) or not math.isfinite(getattr(self, name)):
        raise ConfigError(f"{name} must be a finite number, got {getattr(self, name)!r}")
    positive = ("latent_dim", "hidden_dim", "num_epochs", "batch_size", "num_replicas", "iwae_chunk_size",
                "eval_batch_size", "checkpoint_every", "train_samples", "h1_dim", "top_hidden_dim")
    for name in positive:
      if getattr(self, name) <= 0:
        raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
    if self.num_layers < 0:
      raise ConfigError(f"num_layers must be >= 0, got {self.num_layers}")
    check_optimizer(self.learning_rate, self.adam_eps)
    for name in ("beta", "free_bits", "kl_warmup_epochs"):
      if not getattr(self, name) >= 0:
        raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
    if self.model == "ae" and (self.train_objective != "elbo" or self.train_samples != 1 or self.kl_schedule):
      raise ConfigError("model ae has no KL term or importance weights: train_objective, train_samples, beta, "
                        "kl_warmup_epochs and free_bits keep their defaults")
    if self.stochastic_layers not in (1, 2):
      raise ConfigError(f"stochastic_layers must be 1 or 2, got {self.stochastic_layers}")
    if self.model == "ae" and self.stochastic_layers != 1:
      raise ConfigError("model ae is deterministic: it has one layer of codes (stochastic_layers 1)")
    if self.train_objective == "iwae" and self.kl_schedule:
      raise ConfigError("beta, kl_warmup_epochs and free_bits reweight the ELBO's KL term; the iwae objective "
                        "has none (use train_objective elbo)")
    if self.seed < 0:
      raise ConfigError(f"seed must be >= 0, got {self.seed}")
    if self.seed + self.num_replicas - 1 > LIMITS["seed"]:
      raise ConfigError(f"seed {self.seed} with num_replicas {self.num_replicas} gives replicas seeds up to "
                        f"{self.seed + self.num_replicas - 1:,}, past the largest seed {LIMITS['seed']:,}")
    if self.data_source == "npz" and not self.data_path:
      raise ConfigError("data_source npz needs data_path, the .npz file to read")
    if self.eval_iwae_samples < 0:
      raise ConfigError(f"eval_iwae_samples must be >= 0, got {self.eval_iwae_samples}")
    if self.exclude_digit is not None and not 0 <= self.exclude_digit < data_lib.NUM_CLASSES:
      raise ConfigError(f"exclude_digit must be a digit 0..9, got {self.exclude_digit}")
    choices = {"model": tuple(objectives.OBJECTIVES), "activation": models.ACTIVATIONS, "weight_init": models.WEIGHT_INITS,
               "binarization": data_lib.BINARIZATIONS, "data_source": data_lib.SOURCES,
               "nonfinite_policy": train.NONFINITE_POLICIES, "train_objective": objectives.TRAINING_OBJECTIVES,
               "lr_schedule": train.LR_SCHEDULES, "output_bias": models.OUTPUT_BIASES,
               "architecture": models.ARCHITECTURES}
    for name, allowed in choices.items():
      if getattr(self, name) not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(allowed)}; got {getattr(self, name)!r}")
    return self

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), indent=2, sort_keys=True)

  @classmethod
  def from_dict(cls, values, where="config") -> "Config":
    """The `Config` of a config.json's object; unknown keys or values of the wrong type are an error
    (a foreign, damaged or newer file)."""
    if not isinstance(values, dict):
      raise ConfigError(f"{where}: not a jaxvae config (not a JSON object)")
    check_types(cls, values, where)
    return cls(**values)

  @classmethod
  def from_json_file(cls, path) -> "Config":
    """Reads a config.json (see `from_dict`)."""
    return cls.from_dict(workdir_lib.read_json(path, "config", error=ConfigError), path)

  @property
  def iwae_samples(self) -> int:
    """Importance samples of the final test NLL: none for an autoencoder, which has no density."""
    return self.eval_iwae_samples if self.model == "vae" else 0

  @property
  def objective(self):
    """The per-example objective `model` is evaluated with, each epoch (see `objectives.OBJECTIVES`)."""
    return objectives.OBJECTIVES[self.model]

  @property
  def training_objective(self):
    """The per-example objective training maximizes: `objective`, or its k-sample / IWAE variant."""
    if self.model != "vae":
      return self.objective
    return objectives.training_objective(self.train_objective, self.train_samples)

  @property
  def kl_schedule(self) -> bool:
    """Whether beta, a KL warm-up or free bits change the training loss from -objective."""
    return self.beta != 1.0 or self.kl_warmup_epochs > 0 or self.free_bits > 0

  def make_kl_schedule(self, steps_per_epoch: int) -> objectives.KLSchedule | None:
    """The `objectives.KLSchedule` of the run (None when `kl_schedule` is False)."""
    if not self.kl_schedule:
      return None
    return objectives.KLSchedule(self.beta, self.kl_warmup_epochs * steps_per_epoch, self.free_bits)

  @property
  def seeds(self) -> tuple[int, ...]:
    """The seed of every replica: (seed,) for a single run."""
    return tuple(range(self.seed, self.seed + self.num_replicas))

  def replica(self, index: int) -> "Config":
    """The single-run config that replica `index` of an ensemble trains (up to float rounding)."""
    return dataclasses.replace(self, seed=self.seeds[index], num_replicas=1)


# Fields that may change when a run is resumed: evaluation and bookkeeping, and where the
# data is read from (checkpoints carry a fingerprint of the training set, so a resume on
# other data is refused all the same).
RESUMABLE_FIELDS = ("num_epochs", "eval_iwae_samples", "iwae_chunk_size", "eval_batch_size", "checkpoint_every",
                    "data_dir", "data_path", "data_source", "tfds_download", "nonfinite_policy")


def build_model(config: Config) -> models.VAE | models.TwoLayerVAE:
  """The (untrained) module `config` describes."""
  shared = dict(latent_dim=config.latent_dim, output_dim=data_lib.NUM_PIXELS, hidden_dim=config.hidden_dim,
                num_layers=config.num_layers, activation=config.activation, weight_init=config.weight_init,
                architecture=config.architecture)
  if config.stochastic_layers == 2:
    return models.TwoLayerVAE(h1_dim=config.h1_dim, top_hidden_dim=config.top_hidden_dim, **shared)
  return models.VAE(**shared)


def check_settings(settings, positive=(), nonnegative=(), finite_positive=(), limits=None) -> None:
  """Range checks of a family's settings dataclass; `ConfigError` naming the first bad field.

  `positive` / `nonnegative`: integer fields (each also bounded by `limits`, default
  `LIMITS` by name or 10**7); `finite_positive`: float fields that must be finite and > 0.
  """
  limits = {**LIMITS, **(limits or {})}
  for name in (*positive, *nonnegative):
    value = getattr(settings, name)
    if not isinstance(value, int) or isinstance(value, bool):
      raise ConfigError(f"{name} must be an integer, got {value!r}")
    low = 1 if name in positive else 0
    if value < low:
      raise ConfigError(f"{name} must be {'positive' if low else '>= 0'}, got {value}")
    if value > limits.get(name, 10**7):
      raise ConfigError(f"{name} must be at most {limits.get(name, 10**7):,}, got {value:,}")
  for name in finite_positive:
    value = getattr(settings, name)
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
      raise ConfigError(f"{name} must be a finite positive number, got {value!r}")
  if "learning_rate" in finite_positive:
    check_optimizer(settings.learning_rate)


def check_optimizer(learning_rate, adam_eps=None) -> None:
  """Refuses optimizer settings that are not numbers, or that would make training a no-op (see
  `MIN_LEARNING_RATE`, `MAX_ADAM_EPS`), with `ConfigError`."""
  settings = {"learning_rate": learning_rate, **({"adam_eps": adam_eps} if adam_eps is not None else {})}
  for name, value in settings.items():
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
      raise ConfigError(f"{name} must be a finite positive number, got {value!r}")
  if learning_rate < MIN_LEARNING_RATE:
    raise ConfigError(f"learning_rate {learning_rate:g} is below {MIN_LEARNING_RATE:g}: its updates would not "
                      "change float32 parameters, so training would do nothing")
  if adam_eps is not None and adam_eps > MAX_ADAM_EPS:
    raise ConfigError(f"adam_eps {adam_eps:g} is above {MAX_ADAM_EPS:g}: it would divide Adam's steps down to "
                      "nothing (it only guards the division; 1e-8 to 1e-4 are usual)")


def _type_ok(value, kind) -> bool:
  if isinstance(kind, types.UnionType):
    return any(_type_ok(value, k) for k in kind.__args__)
  if kind is type(None):
    return value is None
  if kind is float:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
  if kind is int:
    return isinstance(value, int) and not isinstance(value, bool)
  if getattr(kind, "__origin__", None) is tuple:  # tuple[int, ...], stored as a JSON list
    return isinstance(value, (list, tuple)) and all(_type_ok(v, kind.__args__[0]) for v in value)
  return isinstance(value, kind)


def check_types(cls, values: dict, where) -> None:
  """Refuses (`ConfigError`, naming the first) keys that are not fields of the settings dataclass
  `cls` and values whose JSON type does not fit their field."""
  fields = {f.name: f.type for f in dataclasses.fields(cls)}
  unknown = sorted(set(values) - set(fields))
  if unknown:
    raise ConfigError(f"{where}: not a jaxvae config (unknown keys {unknown})")
  for name, value in values.items():
    if not _type_ok(value, fields[name]):
      kind = fields[name]
      raise ConfigError(f"{where}: {name} must be {getattr(kind, '__name__', kind)}, got {str(value)[:60]}")
