"""The sequence VAE family on `loop.fit`: MNIST as 28 rows, and English sentences.

`train_and_evaluate(config, workdir)` trains a `sequence.SequenceVAE` (or, with
`model="lm"`, its decoder alone: the recurrent language model) and writes into
`workdir`, besides what every run writes (marker, config.json, metrics.jsonl,
TensorBoard scalars, checkpoints/):

  results.json   the final record: test -ELBO (± its standard error over test
                 sequences), KL, active units, the importance-sampled NLL with the
                 k used; for text also nats per token and perplexities
  mnist rows:    samples.png (prior samples, each row's pixels sampled), reconstructions.png
                 (test digits, odd rows, and greedy decodings of their posterior means),
                 interpolations.png (greedy decodings along lines between test codes)
  text:          vocabulary.txt (one word per line, line i = id i), samples.txt (greedy and
                 sampled decodings of prior z, greedy reconstructions of test sentences),
                 homotopies.txt (Bowman et al.'s decoded points between two sentences' codes)

Remedies for a decoder that ignores z (Bowman et al. 2016): a linear KL warm-up
(`kl_warmup_epochs`, `objectives.KLSchedule`), word dropout (`word_dropout`: the
share of decoder inputs replaced by UNK, or for rows zeroed) and free bits.
Every number is per sequence (nats), counting real tokens only.
"""

import dataclasses
import functools
import hashlib
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxvae import checkpoints
from jaxvae import config as config_lib
from jaxvae import data as data_lib
from jaxvae import evaluate
from jaxvae import loop
from jaxvae import objectives
from jaxvae import plots
from jaxvae import sequence
from jaxvae import text as text_lib
from jaxvae import train
from jaxvae import workdir as workdir_lib
from jaxvae.errors import ConfigError

KIND = "sequence_vae"
OUTPUTS = ("results.json", "samples.png", "reconstructions.png", "interpolations.png", "vocabulary.txt",
           "samples.txt", "homotopies.txt")
DATA = ("mnist_rows", "text")
MODELS = ("vae", "lm")
ROW_DIM = 28
NUM_PICTURES = 8  # columns of the picture grids; sentences per list
NUM_PATH = 7  # decoded points per interpolation / homotopy, ends included


@dataclasses.dataclass(frozen=True)
class SequenceConfig:
  data: str = "mnist_rows"  # or "text"
  model: str = "vae"  # or "lm": the decoder without z (a recurrent language model)
  latent_dim: int = 32
  hidden_dim: int = 256  # LSTM width, encoder and decoder
  embed_dim: int = 128  # text: word embeddings, shared by encoder and decoder
  # Remedies for posterior collapse.
  kl_warmup_epochs: int = 0  # the KL weight rises linearly from 0 to 1 over these epochs
  word_dropout: float = 0.0  # share of decoder inputs dropped (UNK; rows: zeros)
  free_bits: float = 0.0  # nats per latent dimension below which its KL is not penalized
  # Optimisation.
  num_epochs: int = 20
  batch_size: int = 128
  learning_rate: float = 1e-3
  clip_norm: float = 5.0  # global gradient-norm clipping before Adam; 0: none
  seed: int = 0
  # Evaluation and checkpoints.
  eval_iwae_samples: int = 1000  # k of the test NLL (a language model's is exact: k = 1)
  eval_batch_size: int = 100
  iwae_chunk_size: int = 250
  checkpoint_every: int = 1
  nonfinite_policy: str = "stop"
  # MNIST rows.
  data_source: str = "auto"
  data_path: str | None = None
  # Text.
  corpus: str = "wordnet"  # see text.CORPORA
  text_path: str | None = None  # lines: the file; wordnet: the directory (default /usr/share/wordnet)
  vocab_size: int = 5000  # words kept, the 4 special tokens included
  max_length: int = 25  # tokens per sentence (EOS not counted); a longer sentence is an error
  split_seed: int = 0
  valid_fraction: float = 0.05
  test_fraction: float = 0.05

  def validate(self) -> "SequenceConfig":
    config_lib.check_settings(
        self, positive=("latent_dim", "hidden_dim", "embed_dim", "num_epochs", "batch_size", "eval_batch_size",
                        "iwae_chunk_size", "checkpoint_every", "vocab_size", "max_length", "eval_iwae_samples"),
        nonnegative=("kl_warmup_epochs", "seed", "split_seed"),
        finite_positive=("learning_rate",), limits={"vocab_size": 1 << 20, "max_length": text_lib.MAX_LENGTH, "embed_dim": 1 << 16})
    choices = {"data": DATA, "model": MODELS, "corpus": text_lib.CORPORA, "data_source": data_lib.SOURCES,
               "nonfinite_policy": train.NONFINITE_POLICIES}
    for name, allowed in choices.items():
      if getattr(self, name) not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(allowed)}; got {getattr(self, name)!r}")
    for name in ("free_bits", "clip_norm", "word_dropout", "valid_fraction", "test_fraction"):
      value = getattr(self, name)
      if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")
    if self.word_dropout >= 1:
      raise ConfigError(f"word_dropout must be below 1 (the share of inputs dropped), got {self.word_dropout}")
    if self.valid_fraction + self.test_fraction >= 1 or not self.test_fraction:
      raise ConfigError("test_fraction must be positive and valid_fraction + test_fraction below 1, got "
                        f"{self.valid_fraction} + {self.test_fraction}")
    if self.vocab_size <= len(text_lib.SPECIALS):
      raise ConfigError(f"vocab_size must exceed the {len(text_lib.SPECIALS)} special tokens, got {self.vocab_size}")
    if self.model == "lm" and (self.kl_warmup_epochs or self.free_bits):
      raise ConfigError("model lm has no z and no KL term: kl_warmup_epochs and free_bits keep their defaults")
    if self.data == "mnist_rows" and self.data_source == "npz" and not self.data_path:
      raise ConfigError("data_source npz needs data_path, the .npz file to read")
    return self

  @property
  def iwae_samples(self) -> int:
    """k of the test NLL: the language model's log p(x) is exact, one sample gives it."""
    return 1 if self.model == "lm" else self.eval_iwae_samples

  def kl_schedule(self, steps_per_epoch: int) -> objectives.KLSchedule | None:
    if not (self.kl_warmup_epochs or self.free_bits):
      return None
    return objectives.KLSchedule(1.0, self.kl_warmup_epochs * steps_per_epoch, self.free_bits)


RESUMABLE = ("num_epochs", "eval_iwae_samples", "eval_batch_size", "iwae_chunk_size", "checkpoint_every",
             "nonfinite_policy", "data_source", "data_path", "text_path")


def build_model(config: SequenceConfig, vocab_size: int = 0) -> sequence.SequenceVAE:
  return sequence.SequenceVAE(latent_dim=0 if config.model == "lm" else config.latent_dim,
                              hidden_dim=config.hidden_dim, vocab_size=vocab_size, embed_dim=config.embed_dim,
                              row_dim=ROW_DIM)


def make_loss(model: sequence.SequenceVAE, kl_schedule: objectives.KLSchedule | None, word_dropout: float,
              binarize: bool):
  """The `train.make_step` loss: the batch mean of -ELBO (`objectives.elbo`), nats per sequence, or
  the `kl_schedule`'s loss; word dropout's mask and the noise come from the step key, the
  binarization of MNIST rows from the batch key."""

  def loss_fn(params, batch, batch_key, step_key, step, context):
    del context
    x = data_lib.train_targets(batch_key, batch, "dynamic") if binarize else batch
    drop_key, z_key = jax.random.split(step_key)
    num_steps = x.shape[1] // ROW_DIM if binarize else x.shape[1]
    keep = jax.random.bernoulli(drop_key, 1.0 - word_dropout, (x.shape[0], num_steps))
    one = lambda k, x, keep: objectives.elbo(model, params, k, x, keep_T=keep if word_dropout else None)
    terms = jax.vmap(one)(jax.random.split(z_key, x.shape[0]), x, keep)
    loss = -jnp.mean(terms.elbo) if kl_schedule is None else kl_schedule.loss(terms, step)
    kl_weight = jnp.float32(1.0) if kl_schedule is None else kl_schedule.weight(step)
    return loss, {"neg_elbo": -jnp.mean(terms.elbo), "kl": jnp.mean(terms.kl),
                  "reconstruction": jnp.mean(terms.reconstruction), "kl_weight": kl_weight}

  return loss_fn


@dataclasses.dataclass
class Data:
  """A run's data on the host: training array (uint8 images or int32 tokens), eval and test targets."""

  train: np.ndarray
  valid: np.ndarray  # the per-epoch evaluation: the valid split (text) or the test set (MNIST)
  test: np.ndarray
  fingerprint: str
  vocabulary: text_lib.Vocabulary | None = None
  summary: dict = dataclasses.field(default_factory=dict)


def load_data(config: SequenceConfig) -> Data:
  """MNIST (the project's binarization: dynamic for training, one fixed draw for test) or a
  corpus split by `split_seed`, with its vocabulary built on the training split."""
  if config.data == "mnist_rows":
    mnist = data_lib.load_mnist(config.data_source, path=config.data_path)
    test = data_lib.test_targets(mnist.test.images, "dynamic")
    return Data(data_lib.prepare_train_images(mnist.train.images, "dynamic"), test, test,
                data_lib.fingerprint(mnist.train))
  sentences = text_lib.load_corpus(config.corpus, config.text_path)
  text_lib.check_lengths(sentences, config.max_length, config.text_path or config.corpus)
  parts = text_lib.split(sentences, config.split_seed, config.valid_fraction, config.test_fraction)
  vocabulary = text_lib.Vocabulary.build(parts.train, config.vocab_size)
  length = config.max_length + 1  # EOS
  train_ids = vocabulary.encode(parts.train, length)
  valid = parts.valid or parts.test  # without a valid split, the epochs are evaluated on test
  digest = hashlib.sha256(train_ids.tobytes()).hexdigest()[:16]
  summary = {"sentences": {"train": len(parts.train), "valid": len(parts.valid), "test": len(parts.test)},
             "test_unknown_rate": vocabulary.unknown_rate(parts.test),
             "mean_test_tokens": float(np.mean([len(s) + 1 for s in parts.test]))}
  return Data(train_ids, vocabulary.encode(valid, length), vocabulary.encode(parts.test, length), digest,
              vocabulary, summary)


def _elbo(model, params, key, x) -> objectives.Elbo:
  """`objectives.elbo` without its per-dimension KL: a language model has no latent dimensions,
  and `lax.map` (`evaluate.elbo_terms`) cannot batch an empty array."""
  return objectives.elbo(model, params, key, x)._replace(kl_dims=None)


def _mean_and_error(values) -> tuple[float, float]:
  values = np.asarray(values, np.float64)
  return float(values.mean()), float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else 0.0


def test_report(model, params, key, x, config: SequenceConfig) -> dict:
  """The final numbers on the test set: -ELBO, KL, active units, the k-sample NLL; nats per
  sequence with standard errors over the test sequences, and per token for text."""
  terms = evaluate.elbo_terms(model, params, key, jnp.asarray(x), batch_size=config.eval_batch_size, objective=_elbo)
  neg_elbo, neg_elbo_err = _mean_and_error(-np.asarray(terms.elbo))
  report = {"test_neg_elbo": neg_elbo, "test_neg_elbo_stderr": neg_elbo_err,
            "test_kl": float(np.mean(terms.kl)), "test_reconstruction": float(np.mean(terms.reconstruction)),
            "active_units": evaluate.active_units(model, params, jnp.asarray(x)) if model.latent_dim else 0,
            "latent_dim": model.latent_dim}
  bounds = evaluate.iwae_bounds(model, params, key, x, config.iwae_samples, config.eval_batch_size,
                                config.iwae_chunk_size)
  nll, nll_err = _mean_and_error(-bounds)
  report.update(iwae_nll=nll, iwae_nll_stderr=nll_err, iwae_samples=config.iwae_samples)
  if model.vocab_size:
    tokens = int(np.sum(np.asarray(x) != sequence.PAD))  # the words and EOS
    report.update(test_tokens=int(tokens), nll_per_token=float(-bounds.sum() / tokens),
                  perplexity=float(np.exp(-bounds.sum() / tokens)),
                  elbo_perplexity=float(np.exp(-np.asarray(terms.elbo, np.float64).sum() / tokens)))
  return report


@functools.partial(jax.jit, static_argnames=("model", "length"))
def _decode_many(model, params, z_NxL, length, keys_N=None):
  if keys_N is None:
    return jax.vmap(lambda z: sequence.decode(model, params, z, length))(z_NxL)
  return jax.vmap(lambda z, k: sequence.decode(model, params, z, length, k))(z_NxL, keys_N)


def _pairs_and_paths(model, params, x):
  """Posterior means of the first `NUM_PICTURES` test sequences and the lines between pairs of them
  (the first and second, the third and fourth, ...): [NUM_PICTURES / 2, NUM_PATH, L]."""
  means = evaluate.latent_means(model, params, jnp.asarray(x[:NUM_PICTURES]))
  starts, ends = means[0::2], means[1::2]
  return jax.vmap(lambda a, b: sequence.homotopy(a, b, NUM_PATH))(starts, ends)  # [P, NUM_PATH, L]


def write_row_pictures(model, params, key, test_x, directory: pathlib.Path) -> None:
  """samples.png, reconstructions.png, interpolations.png (see the module docstring)."""
  num_rows = test_x.shape[1] // model.row_dim
  z = jax.random.normal(key, (NUM_PICTURES * NUM_PICTURES, model.latent_dim))
  samples, _ = _decode_many(model, params, z, num_rows, jax.random.split(jax.random.fold_in(key, 1), len(z)))
  plots.save_image_grid(directory / "samples.png", np.asarray(samples), num_cols=NUM_PICTURES)
  if not model.latent_dim:
    return
  originals = test_x[: 4 * NUM_PICTURES]
  _, recons = _decode_many(model, params, evaluate.latent_means(model, params, jnp.asarray(originals)), num_rows)
  pairs = np.stack([originals.reshape(4, NUM_PICTURES, -1), np.asarray(recons).reshape(4, NUM_PICTURES, -1)], 1)
  plots.save_image_grid(directory / "reconstructions.png", pairs.reshape(-1, originals.shape[-1]),
                        num_cols=NUM_PICTURES)
  paths = _pairs_and_paths(model, params, test_x)
  _, decoded = _decode_many(model, params, paths.reshape(-1, model.latent_dim), num_rows)
  decoded = np.asarray(decoded).reshape(*paths.shape[:2], -1)
  cells = [image for p in range(len(paths)) for image in (test_x[2 * p], *decoded[p], test_x[2 * p + 1])]
  plots.save_image_grid(directory / "interpolations.png", np.asarray(cells), num_cols=NUM_PATH + 2)


def write_text_lists(model, params, key, test_x, vocabulary: text_lib.Vocabulary, directory: pathlib.Path) -> None:
  """samples.txt and homotopies.txt (see the module docstring)."""
  length = test_x.shape[1]
  words = lambda ids_NxT: [vocabulary.decode(ids) or "(empty)" for ids in np.asarray(ids_NxT)]
  z = jax.random.normal(key, (NUM_PICTURES, model.latent_dim))
  lines = ["# Sampled decodings of z ~ N(0, I) (each word drawn from p(w | previous words, z))"]
  lines += words(_decode_many(model, params, z, length, jax.random.split(jax.random.fold_in(key, 1), len(z))))
  if model.latent_dim:
    lines += ["", "# Greedy decodings of the same z"] + words(_decode_many(model, params, z, length))
    originals = test_x[:NUM_PICTURES]
    recons = words(_decode_many(model, params, evaluate.latent_means(model, params, jnp.asarray(originals)), length))
    lines += ["", "# Test sentences and the greedy decoding of their posterior mean"]
    lines += [f"{a}\n  -> {b}" for a, b in zip(words(originals), recons)]
    paths = _pairs_and_paths(model, params, test_x)
    decoded = _decode_many(model, params, paths.reshape(-1, model.latent_dim), length)
    decoded = np.asarray(decoded).reshape(*paths.shape[:2], -1)
    homotopies = [f"# Greedy decodings of {NUM_PATH} evenly spaced points on the line between the posterior "
                  "means of two test sentences (first and last lines: the sentences)"]
    for p in range(len(paths)):
      homotopies += ["", f"  {words(test_x[2 * p:2 * p + 1])[0]}", *words(decoded[p]),
                     f"  {words(test_x[2 * p + 1:2 * p + 2])[0]}"]
    (directory / "homotopies.txt").write_text("\n".join(homotopies) + "\n")
  (directory / "samples.txt").write_text("\n".join(lines) + "\n")


def load_vocabulary(workdir) -> text_lib.Vocabulary:
  """The vocabulary of a text run (its vocabulary.txt): ids of `load_model`'s model."""
  path = pathlib.Path(workdir) / "vocabulary.txt"
  try:
    return text_lib.Vocabulary(tuple(path.read_text(encoding="utf-8").split("\n")[:-1]))
  except (OSError, UnicodeDecodeError) as e:
    raise ConfigError(f"{path}: unreadable vocabulary ({type(e).__name__})") from None


def train_and_evaluate(config: SequenceConfig, workdir, overwrite: bool = False) -> dict:
  """Trains and evaluates `config` in `workdir` (see the module docstring); returns the final record."""
  config.validate()
  data = load_data(config) if config.data == "text" else None  # the vocabulary sizes the model
  model = build_model(config, len(data.vocabulary) if data is not None else 0)
  with workdir_lib.Workdir(workdir, KIND, (*workdir_lib.RUN_OUTPUTS, *OUTPUTS), config=dataclasses.asdict(config),
                           resumable=RESUMABLE, marker_fields={"model": checkpoints.model_spec(model)}) as wd:
    wd.check(overwrite)
    data = data or load_data(config)
    if config.batch_size > len(data.train):
      raise ConfigError(f"batch_size {config.batch_size} exceeds the {len(data.train)} training sequences")
    needed = NUM_PICTURES if data.vocabulary is not None else 4 * NUM_PICTURES  # 4 rows of reconstructions
    if len(data.test) < needed:
      raise ConfigError(f"the test set has {len(data.test)} sequences; the pictures and lists need at least {needed}")
    steps_per_epoch = len(data.train) // config.batch_size
    adam = optax.adam(config.learning_rate)
    optimizer = optax.chain(optax.clip_by_global_norm(config.clip_norm), adam) if config.clip_norm else adam
    keys = train.KeyStreams.from_seed(config.seed)
    state = train.init_state(sequence.init_params(model, keys.init, jnp.asarray(data.test[0])), optimizer)
    outputs = max(model.vocab_size, model.row_dim)  # the decoder's outputs per position
    evaluate.check_iwae_memory(model, state.params, jax.ShapeDtypeStruct(data.test.shape[1:], data.test.dtype),
                               config.iwae_samples, config.eval_batch_size, config.iwae_chunk_size, len(data.test),
                               per_sample_floats=data.test.shape[1] * (3 * outputs + 8 * model.hidden_dim))
    kl_schedule = config.kl_schedule(steps_per_epoch)
    epoch_fn = train.make_epoch(make_loss(model, kl_schedule, config.word_dropout, config.data == "mnist_rows"),
                                optimizer, config.batch_size, config.nonfinite_policy)
    train_x, valid_x = jnp.asarray(data.train), jnp.asarray(data.valid)
    eval_name = "valid" if config.data == "text" and config.valid_fraction else "test"

    def record(params, index, epoch, metrics):
      del index, epoch
      terms = evaluate.elbo_terms(model, params, keys.eval, valid_x, batch_size=config.eval_batch_size,
                                  objective=_elbo)
      return {"train_neg_elbo": float(metrics["neg_elbo"]), "train_kl": float(metrics["kl"]),
              "train_reconstruction": float(metrics["reconstruction"]), "kl_weight": float(metrics["kl_weight"]),
              f"{eval_name}_neg_elbo": -float(jnp.mean(terms.elbo)), f"{eval_name}_kl": float(jnp.mean(terms.kl))}

    def final(params, index):
      del index
      return {**test_report(model, params, keys.eval, data.test, config), **data.summary}

    def artifacts(params, index, directory, epoch):
      del index
      if data.vocabulary is not None and not (directory / "vocabulary.txt").is_file():
        (directory / "vocabulary.txt").write_text("".join(w + "\n" for w in data.vocabulary.words), "utf-8")
      if epoch is not None:
        return
      if data.vocabulary is None:
        write_row_pictures(model, params, keys.sample, data.test, directory)
      else:
        write_text_lists(model, params, keys.sample, data.test, data.vocabulary, directory)

    def final_summary(f):
      text = (f"test -ELBO {f['test_neg_elbo']:.2f} ± {f['test_neg_elbo_stderr']:.2f}, KL {f['test_kl']:.2f}, "
              f"NLL (k={f['iwae_samples']}) {f['iwae_nll']:.2f} ± {f['iwae_nll_stderr']:.2f} nats")
      if "perplexity" in f:
        text += f", perplexity {f['perplexity']:.1f}"
      return text + f", {f['active_units']}/{f['latent_dim']} active units"

    final_record = loop.fit(
        wd, state=state,
        train_epoch=lambda state, epoch: epoch_fn(state, train_x, train.epoch_key(keys.data, epoch), keys.train),
        num_epochs=config.num_epochs, record=record, final=final, artifacts=artifacts,
        summary=lambda r: (f"train -ELBO {r['train_neg_elbo']:8.2f}  KL {r['train_kl']:6.2f}  "
                           f"{eval_name} -ELBO {r[f'{eval_name}_neg_elbo']:8.2f}"),
        final_summary=final_summary,
        is_complete=lambda f: f.get("iwae_samples") == config.iwae_samples,
        overwrite=overwrite, checkpoint_every=config.checkpoint_every, nonfinite_policy=config.nonfinite_policy,
        data_fingerprint=data.fingerprint)[0]
    results = {k: v for k, v in final_record.items() if k not in ("final",)}
    workdir_lib.write_json(wd.path / "results.json", results)
  return final_record


# The entry points' flags (experiments.mnist_rows, experiments.sentences): help per field.
FLAG_HELP = {
    "model": "vae, or lm: the same decoder without z (a recurrent language model, the baseline).",
    "latent_dim": "Latent dimension L.",
    "hidden_dim": "LSTM width of encoder and decoder.",
    "kl_warmup_epochs": "KL annealing: the KL weight rises linearly from 0 to 1 over these epochs.",
    "word_dropout": "Share of the decoder's inputs dropped (Bowman et al.'s word dropout).",
    "free_bits": "Nats per latent dimension below which its KL is not penalized.",
    "num_epochs": "Training epochs.",
    "batch_size": "Training batch size.",
    "learning_rate": "Adam learning rate.",
    "clip_norm": "Global gradient-norm clipping before Adam (0: none).",
    "seed": "Root seed: init, data order, binarization, noise, word dropout, samples.",
    "eval_iwae_samples": "k of the test NLL's importance-weighted bound (lm: exact, k = 1).",
    "eval_batch_size": "Test sequences per evaluation call.",
    "iwae_chunk_size": "Importance samples decoded at once per sequence.",
    "checkpoint_every": "Epochs between checkpoints (and always the last).",
    "nonfinite_policy": "A non-finite loss or gradient: stop the run, or skip the update.",
}
ROWS_HELP = {
    **FLAG_HELP,
    "word_dropout": "Share of the decoder's input rows zeroed (word dropout for pixel rows).",
    "data_source": "As in experiments.mnist.",
    "data_path": "File for --data_source=npz or offline.",
}
TEXT_HELP = {
    **FLAG_HELP,
    "embed_dim": "Word embedding size (shared by encoder and decoder).",
    "corpus": "wordnet: WordNet 3.0's example sentences (apt-get install wordnet-base); lines: --text_path, one "
              "sentence per line, tokens separated by spaces (ptb.train.txt format).",
    "text_path": "lines: the file; wordnet: the directory of its data.* files (default /usr/share/wordnet).",
    "vocab_size": "Words kept (most frequent in the training split), the 4 special tokens included.",
    "max_length": "Most tokens a sentence may have (EOS not counted); a longer one is an error.",
    "split_seed": "Seed of the fixed train / valid / test split.",
    "valid_fraction": "Share of sentences held out for validation.",
    "test_fraction": "Share of sentences held out for the test numbers.",
}
CHOICES = {"model": MODELS, "corpus": text_lib.CORPORA, "data_source": data_lib.SOURCES,
           "nonfinite_policy": train.NONFINITE_POLICIES}
