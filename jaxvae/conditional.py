"""Conditional and semi-supervised VAEs: the CVAE and M2 (Kingma et al. 2014).

The label enters the networks as a one-hot (or any probability) vector y_C:
q(z | x, y) = N(mean, exp(logvar)) and p(x | z, y). Objectives are written for
ONE example, like `objectives.elbo`, and batched with `jax.vmap`:

* `conditional_elbo(x, y)` = E_q[log p(x | z, y)] - KL(q(z | x, y) || N(0, I)),
  the CVAE objective (a bound on log p(x | y)).
* `labelled_bound(x, y)` = conditional ELBO + log p(y), p(y) uniform: M2's -L(x, y),
  a bound on log p(x, y).
* `unlabelled_bound(x)` = sum_y q(y | x) (-L(x, y)) + H(q(y | x)): M2's -U(x), a
  bound on log p(x); the ten labelled bounds are a `jax.vmap` over the classes
  and share one noise draw.
* `m2_loss`: the paper's J^alpha per example: -U over unlabelled x and -L over
  labelled (x, y), each weighted by its share of the data, plus alpha times the
  cross-entropy of q(y | x) on the labelled pairs.

M1+M2 is M2 with a Gaussian likelihood (`likelihood="gaussian"`) on the latent
codes of a VAE trained on all images (`experiments.semisupervised --m1=...`).
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxvae import distributions
from jaxvae import models
from jaxvae import registry
from jaxvae.errors import CheckpointError
from jaxvae.objectives import Elbo

LIKELIHOODS = ("bernoulli", "gaussian")
NUM_CLASSES = 10


def one_hot(labels, num_classes: int = NUM_CLASSES) -> jax.Array:
  """Integer labels [...] -> float32 one-hot vectors [..., num_classes]."""
  return jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)


class ConditionedMLP(nn.Module):
  """An MLP of (h, y): its first layer is a Dense layer on concat(h, y), written as
  Dense(h) + y @ W_y so that under `jax.vmap` over classes y (with h fixed) the
  projection of h is computed once. Same widths and initialisation as `models.MLP`."""

  hidden_dim: int
  num_layers: int
  output_dim: int
  activation: str = "relu"
  weight_init: str = "uniform"

  @nn.compact
  def __call__(self, h: jax.Array, y_C: jax.Array) -> jax.Array:
    features = self.hidden_dim if self.num_layers else self.output_dim
    fan_in = h.shape[-1] + y_C.shape[-1]
    scale = fan_in**-0.5
    if self.weight_init == "uniform":
      init = lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -scale, scale)
    else:  # lecun_normal of the concatenated input: truncated normal, variance 1 / fan_in
      init = nn.initializers.truncated_normal(scale / 0.87962566103423978)
    h = models.dense(features, fan_in, self.weight_init, "first")(h) + y_C @ self.param("first_y", init,
                                                                                        (y_C.shape[-1], features))
    if not self.num_layers:
      return h
    h = models.get_activation(self.activation)(h)
    return models.MLP(self.hidden_dim, self.num_layers - 1, self.output_dim, self.activation, self.weight_init,
                      name="mlp")(h)


class ConditionalVAE(nn.Module):
  """q(z | x, y) and p(x | z, y), y a class-probability vector [..., num_classes].

  `likelihood="bernoulli"`: the decoder gives logits [..., D] (binarized pixels);
  `"gaussian"`: mean and log-variance [..., D] each (real-valued x such as the
  latent codes of another VAE, for M1+M2).
  """

  latent_dim: int = 20
  output_dim: int = models.MNIST_DIM
  num_classes: int = NUM_CLASSES
  hidden_dim: int = 400
  num_layers: int = 1
  activation: str = "relu"
  weight_init: str = "uniform"
  likelihood: str = "bernoulli"

  def setup(self):
    if self.likelihood not in LIKELIHOODS:
      raise ValueError(f"unknown likelihood {self.likelihood!r}; choose one of {', '.join(LIKELIHOODS)}")
    out = self.output_dim * (2 if self.likelihood == "gaussian" else 1)
    self.encoder = ConditionedMLP(self.hidden_dim, self.num_layers, 2 * self.latent_dim, self.activation,
                                  self.weight_init)
    self.decoder = ConditionedMLP(self.hidden_dim, self.num_layers, out, self.activation, self.weight_init)

  def encode(self, x: jax.Array, y_C: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(x [..., D], y [..., C]) -> (mean, logvar), each [..., L]."""
    mean, logvar = jnp.split(self.encoder(x, y_C), 2, axis=-1)
    return mean, logvar

  def decode(self, z: jax.Array, y_C: jax.Array) -> jax.Array:
    """(z [..., L], y [..., C]) -> the decoder's raw output (see the class docstring)."""
    return self.decoder(z, y_C)

  def __call__(self, x: jax.Array, y_C: jax.Array) -> jax.Array:
    return self.decode(self.encode(x, y_C)[0], y_C)


class M2(ConditionalVAE):
  """The M2 model: a `ConditionalVAE` plus the classifier q(y | x) (an MLP giving logits)."""

  classifier_hidden_dim: int = 500
  classifier_layers: int = 1

  def setup(self):
    super().setup()
    self.classifier = models.MLP(self.classifier_hidden_dim, self.classifier_layers, self.num_classes,
                                 self.activation, self.weight_init)

  def classify(self, x: jax.Array) -> jax.Array:
    """x [..., D] -> class logits [..., C] of q(y | x)."""
    return self.classifier(x)

  def __call__(self, x: jax.Array) -> jax.Array:
    y_C = jax.nn.softmax(self.classify(x))
    return self.decode(self.encode(x, y_C)[0], y_C)


def init_params(model: ConditionalVAE, key: jax.Array):
  """Initial parameters of a `ConditionalVAE` or `M2` for inputs of size `model.output_dim`."""
  x_D = jnp.zeros((model.output_dim,), jnp.float32)
  if isinstance(model, M2):
    return model.init(key, x_D)
  return model.init(key, x_D, jnp.zeros((model.num_classes,), jnp.float32))


def log_likelihood(model: ConditionalVAE, x_D: jax.Array, out: jax.Array) -> jax.Array:
  """log p(x | z, y) from the decoder output `out`, nats."""
  if model.likelihood == "gaussian":
    mean, logvar = jnp.split(out, 2, axis=-1)
    return distributions.gaussian_log_likelihood(x_D, mean, logvar)
  return distributions.bernoulli_log_likelihood(x_D, out)


def decoder_mean(model: ConditionalVAE, out: jax.Array) -> jax.Array:
  """E[x | z, y] from the decoder output: Bernoulli means (pixels in [0, 1]) or Gaussian means."""
  if model.likelihood == "gaussian":
    return jnp.split(out, 2, axis=-1)[0]
  return jax.nn.sigmoid(out)


def conditional_elbo(model: ConditionalVAE, params, key: jax.Array, x_D: jax.Array, y_C: jax.Array) -> Elbo:
  """Single-sample conditional ELBO for ONE example: a bound on log p(x | y), nats.

  Args:
    key: PRNG key of the reparameterized z ~ q(z | x, y).
    x_D: [D] targets (in [0, 1] for the Bernoulli likelihood).
    y_C: [C] one-hot label (or class probabilities).
  """
  mean_L, logvar_L = model.apply(params, x_D, y_C, method=model.encode)
  z_L = distributions.reparameterize(key, mean_L, logvar_L)
  reconstruction = log_likelihood(model, x_D, model.apply(params, z_L, y_C, method=model.decode))
  kl = distributions.kl_to_standard_normal(mean_L, logvar_L)
  return Elbo(reconstruction - kl, reconstruction, kl)


def labelled_bound(model: ConditionalVAE, params, key: jax.Array, x_D: jax.Array, y_C: jax.Array) -> jax.Array:
  """M2's -L(x, y) = conditional ELBO + log p(y) with a uniform p(y): a bound on log p(x, y). Scalar, nats."""
  return conditional_elbo(model, params, key, x_D, y_C).elbo - jnp.log(model.num_classes)


def unlabelled_bound(model: M2, params, key: jax.Array, x_D: jax.Array) -> jax.Array:
  """M2's -U(x) = sum_y q(y | x) (-L(x, y)) + H(q(y | x)): a bound on log p(x) for ONE example.

  The labelled bound of every class is computed (a vmap over the one-hot
  vectors) with the same noise `key`. Scalar, nats.
  """
  log_q_C = jax.nn.log_softmax(model.apply(params, x_D, method=model.classify))
  classes_CxC = jnp.eye(model.num_classes, dtype=jnp.float32)
  bounds_C = jax.vmap(lambda y_C: labelled_bound(model, params, key, x_D, y_C))(classes_CxC)
  q_C = jnp.exp(log_q_C)
  return jnp.sum(q_C * bounds_C) - jnp.sum(q_C * log_q_C)


def m2_loss(model: M2, params, key: jax.Array, x_u_BxD: jax.Array, x_l_BxD: jax.Array, labels_B: jax.Array,
            alpha: float, labelled_fraction: float) -> tuple[jax.Array, dict]:
  """The M2 training loss on a batch of unlabelled images and a batch of labelled ones.

  Kingma et al.'s J^alpha = sum_u U(x_u) + sum_l [L(x_l, y_l) - alpha N / N_l log q(y_l | x_l)],
  divided by the number of examples N, estimated from the two batches:

    loss = (1 - f) mean_u[-U] + f mean_l[-L] + alpha mean_l[-log q(y_l | x_l)],

  with f = `labelled_fraction` = N_l / N (the share of labelled examples in the
  data). The paper's alpha = 0.1 N for the summed objective is alpha = 0.1 here.
  Every example gets its own noise key.

  Returns:
    (loss, metrics): metrics holds `neg_unlabelled_bound`, `neg_labelled_bound` and
    `cross_entropy`, batch means in nats.
  """
  u_key, l_key = jax.random.split(key)
  unlabelled = jax.vmap(functools.partial(unlabelled_bound, model, params))(
      jax.random.split(u_key, x_u_BxD.shape[0]), x_u_BxD)
  labelled = jax.vmap(functools.partial(labelled_bound, model, params))(
      jax.random.split(l_key, x_l_BxD.shape[0]), x_l_BxD, one_hot(labels_B, model.num_classes))
  logits = model.apply(params, x_l_BxD, method=model.classify)
  cross_entropy = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels_B))
  metrics = {"neg_unlabelled_bound": -jnp.mean(unlabelled), "neg_labelled_bound": -jnp.mean(labelled),
             "cross_entropy": cross_entropy}
  loss = -(1 - labelled_fraction) * jnp.mean(unlabelled) - labelled_fraction * jnp.mean(labelled)
  return loss + alpha * cross_entropy, metrics


@functools.partial(jax.jit, static_argnames=("model", "batch_size"))
def predict(model: M2, params, x_NxD: jax.Array, batch_size: int = 1000) -> jax.Array:
  """argmax_y q(y | x) for a data set [N, D], in batches. Returns int32 [N]."""
  classify = lambda x_D: jnp.argmax(model.apply(params, x_D, method=model.classify)).astype(jnp.int32)
  return jax.lax.map(classify, x_NxD, batch_size=batch_size)


@functools.partial(jax.jit, static_argnames=("model",))
def class_grid(model: ConditionalVAE, params, z_NxL: jax.Array) -> jax.Array:
  """E[x | z, y] for every class y (rows) and every z (columns): [C, N, D]."""
  classes_CxC = jnp.eye(model.num_classes, dtype=jnp.float32)
  decode = lambda y_C: decoder_mean(model, model.apply(params, z_NxL, jnp.broadcast_to(y_C, (len(z_NxL), len(y_C))),
                                                       method=model.decode))
  return jax.vmap(decode)(classes_CxC)


@functools.partial(jax.jit, static_argnames=("model", "batch_size"))
def conditional_reconstructions(model: ConditionalVAE, params, x_NxD: jax.Array, labels_N: jax.Array,
                                batch_size: int = 1000) -> jax.Array:
  """E[x | z = E_q[z | x, y], y] for labelled examples: the CVAE's reconstructions, [N, D]."""

  def one(args):
    x_D, y_C = args
    mean_L, _ = model.apply(params, x_D, y_C, method=model.encode)
    return decoder_mean(model, model.apply(params, mean_L, y_C, method=model.decode))

  return jax.lax.map(one, (x_NxD, one_hot(labels_N, model.num_classes)), batch_size=batch_size)


@functools.partial(jax.jit, static_argnames=("model", "batch_size"))
def conditional_elbo_terms(model: ConditionalVAE, params, key: jax.Array, x_NxD: jax.Array, labels_N: jax.Array,
                           batch_size: int = 1000) -> Elbo:
  """Per-example conditional ELBO over a labelled data set ([N] arrays, nats); example i uses split(key, N)[i]."""
  keys_N = jax.random.split(key, x_NxD.shape[0])
  one = lambda args: conditional_elbo(model, params, *args)
  return jax.lax.map(one, (keys_N, x_NxD, one_hot(labels_N, model.num_classes)), batch_size=batch_size)


@functools.partial(jax.jit, static_argnames=("model",))
def sample(model: ConditionalVAE, params, key: jax.Array, labels_N: jax.Array) -> jax.Array:
  """E[x | z, y] for z ~ N(0, I) and the requested classes `labels_N` (int [N]): [N, D]."""
  z_NxL = jax.random.normal(key, (labels_N.shape[0], model.latent_dim))
  return decoder_mean(model, model.apply(params, z_NxL, one_hot(labels_N, model.num_classes), method=model.decode))




def load_model(workdir) -> tuple[ConditionalVAE, dict]:
  """(model, params) of a trained CVAE or M2 (`jaxvae.cvae`, `jaxvae.semisupervised`); see
  `checkpoints.load_model`. Raises `CheckpointError` when the directory holds no such model."""
  from jaxvae import checkpoints  # pylint: disable=g-import-not-at-top

  model, params, _ = checkpoints.load_model(workdir)
  if not isinstance(model, ConditionalVAE):
    raise CheckpointError(f"{workdir}: not a conditional model (it holds a {type(model).__name__})")
  return model, params


registry.register(ConditionalVAE, init_params)
registry.register(M2, init_params)
