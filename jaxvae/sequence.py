"""Sequence VAEs (Bowman et al. 2016): an LSTM encoder gives q(z | x), an LSTM decoder
conditioned on z predicts each element of x from the previous ones.

Shapes: T = sequence length, L = latent dimension, H = LSTM width, V = vocabulary
size, R = pixels per row, B = batch, K = samples. All values are nats per sequence.

One module, two kinds of sequence:

* tokens (`vocab_size` > 0): x_T is int32 word ids, the sentence's words then
  `EOS`, then `PAD` up to T (see `jaxvae.text`). The decoder reads `BOS`, x_0,
  x_1, ... and predicts x_0, x_1, ...; padding is masked, so every number counts
  real tokens (the words and EOS) only.
* rows (`vocab_size` = 0): x_D is a binarized image read as T = D / R rows of R
  pixels, each row's pixels independent Bernoulli given the decoder state (an
  image of MNIST is 28 rows of 28 pixels). The decoder reads a row of zeros,
  then row 0, row 1, ...

The decoder state starts at a linear function of z. With `latent_dim` = 0 there
is no z and no encoder: the same decoder is a plain recurrent language model
(the baseline), whose log p(x) is exact (its KL is 0 and its bounds are tight).

The module is a pure function of its inputs: word dropout (Bowman's remedy for a
decoder that ignores z) is a `keep_T` mask the caller draws, and decoding
(`decode`) takes an explicit key. The ELBO and the importance-weighted bound are
those of `jaxvae.objectives`, which call `log_likelihood`.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxvae import distributions
from jaxvae import registry

# Special token ids of every vocabulary (see `jaxvae.text.Vocabulary`).
PAD, BOS, EOS, UNK = 0, 1, 2, 3


class SequenceVAE(nn.Module):
  """LSTM encoder q(z | x) = N(mean, diag(exp(logvar))) and autoregressive LSTM decoder p(x | z).

  Use through `jaxvae.objectives` (`elbo`, `iwae_bound`, ...) like any VAE, or
  `model.apply(params, x, method=model.encode)` -> (mean [L], logvar [L]) and
  `model.apply(params, x, z, method=model.log_likelihood)` -> log p(x | z).
  """

  latent_dim: int = 32  # 0: the recurrent language model without z
  hidden_dim: int = 256
  vocab_size: int = 0  # > 0: tokens; 0: Bernoulli rows of `row_dim` pixels
  embed_dim: int = 128  # tokens only
  row_dim: int = 28  # rows only

  def setup(self):
    if self.latent_dim < 0 or self.hidden_dim <= 0 or self.vocab_size < 0:
      raise ValueError(f"latent_dim >= 0, hidden_dim > 0 and vocab_size >= 0 needed, got {self.latent_dim}, "
                       f"{self.hidden_dim}, {self.vocab_size}")
    if self.vocab_size:
      self.embed = nn.Embed(self.vocab_size, self.embed_dim, name="embed")
    if self.latent_dim:
      self.encoder_rnn = nn.RNN(nn.OptimizedLSTMCell(self.hidden_dim), return_carry=True, name="encoder")
      self.posterior = nn.Dense(2 * self.latent_dim, name="posterior")
      self.initial_state = nn.Dense(2 * self.hidden_dim, name="initial_state")
    self.cell = nn.OptimizedLSTMCell(self.hidden_dim, name="decoder")
    self.decoder_rnn = nn.RNN(self.cell)
    self.out = nn.Dense(self.vocab_size or self.row_dim, name="out")

  # --- the pieces --------------------------------------------------------------------------------

  def _steps(self, x) -> jax.Array:
    """The sequence as decoder targets: tokens [T] or rows [T, R]."""
    return x if self.vocab_size else x.reshape(-1, self.row_dim)

  def _inputs(self, x, keep_T=None) -> jax.Array:
    """The decoder's inputs [T, E or R]: BOS (a row of zeros) then x shifted by one, with the
    inputs where `keep_T` is False replaced by UNK (a row of zeros): word dropout."""
    steps = self._steps(x)
    if self.vocab_size:
      inputs_T = jnp.concatenate([jnp.array([BOS], steps.dtype), steps[:-1]])
      if keep_T is not None:
        inputs_T = jnp.where(keep_T | (jnp.arange(len(inputs_T)) == 0), inputs_T, UNK)
      return self.embed(inputs_T)
    inputs_TxR = jnp.concatenate([jnp.zeros_like(steps[:1]), steps[:-1]])
    if keep_T is not None:
      inputs_TxR = jnp.where(keep_T[:, None], inputs_TxR, 0.0)
    return inputs_TxR

  def length(self, x) -> jax.Array:
    """Real elements of `x`: its tokens up to and including EOS (rows: all T rows)."""
    steps = self._steps(x)
    return jnp.sum(steps != PAD) if self.vocab_size else jnp.asarray(steps.shape[0])

  def encode(self, x) -> tuple[jax.Array, jax.Array]:
    """q(z | x) for ONE sequence: (mean [L], logvar [L]); the LSTM reads the real elements only."""
    if not self.latent_dim:
      return jnp.zeros((0,)), jnp.zeros((0,))
    steps = self._steps(x)
    inputs = self.embed(steps) if self.vocab_size else steps
    (_, h_H), _ = self.encoder_rnn(inputs[None], seq_lengths=self.length(x)[None])
    mean, logvar = jnp.split(self.posterior(h_H[0]), 2)
    return mean, logvar

  def start(self, z_L) -> tuple[jax.Array, jax.Array]:
    """The decoder's initial LSTM carry (c [H], h [H]): a function of z (zeros without z)."""
    if not self.latent_dim:
      return jnp.zeros((self.hidden_dim,)), jnp.zeros((self.hidden_dim,))
    c_H, h_H = jnp.split(self.initial_state(z_L), 2)
    return c_H, jnp.tanh(h_H)

  def logits(self, x, z_L, keep_T=None) -> jax.Array:
    """Teacher-forced decoder logits for ONE sequence: [T, V] (tokens) or [T, R] (rows)."""
    return self.out(self.decoder_rnn(self._inputs(x, keep_T), initial_carry=self.start(z_L)))

  def log_likelihood(self, x, z_L, keep_T=None) -> jax.Array:
    """log p(x | z) for ONE sequence, nats: summed over its real elements (padding adds nothing)."""
    logits = self.logits(x, z_L, keep_T)
    steps = self._steps(x)
    if self.vocab_size:
      log_p_T = -optax.softmax_cross_entropy_with_integer_labels(logits, steps)
      return jnp.sum(jnp.where(steps != PAD, log_p_T, 0.0))
    return jnp.sum(distributions.bernoulli_log_likelihood(steps, logits))

  def step(self, carry, input_element):
    """One decoder step: (carry, previous element: a token id or a row) -> (carry, logits)."""
    inputs = self.embed(input_element) if self.vocab_size else input_element
    carry, h_H = self.cell(carry, inputs)
    return carry, self.out(h_H)

  def __call__(self, x):
    """What `init` traces: the reconstruction's log-likelihood at z = the posterior mean."""
    return self.log_likelihood(x, self.encode(x)[0])


def init_params(model: SequenceVAE, key: jax.Array, example=None):
  """Initial params; `example` is one sequence of the right shape (default: a 28-row image
  for rows, 32 tokens for tokens; the params do not depend on T)."""
  if example is None:
    example = jnp.ones((32,), jnp.int32) if model.vocab_size else jnp.zeros((28 * model.row_dim,))
  return model.init(key, example)


@functools.partial(jax.jit, static_argnames=("model", "length"))
def decode(model: SequenceVAE, params, z_L, length: int, key=None):
  """Decodes ONE sequence of `length` elements from z, greedily (`key` None) or by sampling.

  Tokens: each step feeds back the most likely (or a sampled) token, never PAD,
  BOS or UNK; after EOS the rest is PAD. Returns tokens [length].
  Rows: each step feeds back the row's pixels thresholded at 1/2 (or sampled).
  Returns (fed-back rows [length * R], their Bernoulli means [length * R]).
  """
  carry = model.apply(params, z_L, method=model.start)
  keys = jax.random.split(key if key is not None else jax.random.key(0), length)
  if model.vocab_size:
    banned = jnp.zeros(model.vocab_size, bool).at[jnp.array([PAD, BOS, UNK])].set(True)

    def token_step(state, step_key):
      carry, previous, done = state
      carry, logits = model.apply(params, carry, previous, method=model.step)
      logits = jnp.where(banned, -jnp.inf, logits)
      token = jnp.argmax(logits) if key is None else jax.random.categorical(step_key, logits)
      token = jnp.where(done, PAD, token).astype(jnp.int32)
      return (carry, token, done | (token == EOS)), token

    _, tokens = jax.lax.scan(token_step, (carry, jnp.int32(BOS), jnp.bool_(False)), keys)
    return tokens

  def row_step(state, step_key):
    carry, previous = state
    carry, logits = model.apply(params, carry, previous, method=model.step)
    probs = jax.nn.sigmoid(logits)
    row = (probs > 0.5) if key is None else jax.random.bernoulli(step_key, probs)
    row = row.astype(jnp.float32)
    return (carry, row), (row, probs)

  _, (rows, probs) = jax.lax.scan(row_step, (carry, jnp.zeros((model.row_dim,))), keys)
  return rows.reshape(-1), probs.reshape(-1)


def homotopy(z0_L, z1_L, num: int) -> jax.Array:
  """`num` evenly spaced points on the line from z0 to z1, ends included: [num, L] (Bowman's homotopy)."""
  t = jnp.linspace(0.0, 1.0, num)[:, None]
  return (1 - t) * z0_L + t * z1_L


registry.register(SequenceVAE, init_params)
