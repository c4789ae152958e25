"""Super-resolution through the latent space: a binarized digit from the ink counts of its blocks.

The low-resolution observation of a binary image x is c = (c_b), the number of ink pixels in
each `factor` x `factor` block b (14 x 14 counts of 0..4 at factor 2, 7 x 7 counts of 0..16 at
factor 4). Under a decoder with independent Bernoulli pixels p_i = sigmoid(decode(z)_i), a
block's count is Poisson-binomial, so

  p(c | z) = prod_b PoissonBinomial(c_b; {p_i : i in b})

is exact (a dynamic programme over the block's pixels, in log space), and so is each pixel's
probability given z AND its block's count,

  P(x_i = 1 | z, c_b) = p_i PoissonBinomial_{-i}(c_b - 1) / PoissonBinomial(c_b),

which puts exactly c_b pixels' worth of ink into each block. `upscale` then averages over
p(z | c) ∝ p(c | z) p(z): its mode by Adam, the average by self-normalized importance
sampling (`latent.posterior_average`), as the inpainting tool does for masks:

  P(x_i = 1 | c) = E_{p(z | c)} P(x_i = 1 | z, c_b).

Baselines a user would try (`BASELINES`): nearest (every pixel of a block at c_b / f^2), bilinear
(the low-resolution image c / f^2 resized), and the mean training image made consistent with
the counts (independent Bernoulli pixels at the mean image's values, conditioned on each block's
count: the same formula with a fixed p instead of the decoder's). Shapes: N images, D = 784
pixels, B blocks, F = factor^2 pixels per block. Scores (`pixel_scores`, per image): nats per
pixel of the true image under the predicted probabilities, and accuracy at 0.5.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxvae import data as data_lib
from jaxvae import latent

FACTORS = (2, 4)
BASELINES = ("nearest", "bilinear", "mean image given the counts")


def _check_factor(factor: int, image_shape=data_lib.IMAGE_SHAPE) -> None:
  if factor < 2 or any(n % factor for n in image_shape):
    raise ValueError(f"factor {factor} must be at least 2 and divide the image sides {image_shape}")


def to_blocks(a_NxD: jax.Array, factor: int, image_shape=data_lib.IMAGE_SHAPE) -> jax.Array:
  """[N, D] images -> [N, B, F]: the pixels of each factor x factor block, blocks row-major."""
  _check_factor(factor, image_shape)
  h, w = image_shape
  a = jnp.reshape(a_NxD, (-1, h // factor, factor, w // factor, factor))
  return jnp.reshape(jnp.transpose(a, (0, 1, 3, 2, 4)), (a.shape[0], -1, factor * factor))


def from_blocks(a_NxBxF: jax.Array, factor: int, image_shape=data_lib.IMAGE_SHAPE) -> jax.Array:
  """The inverse of `to_blocks`: [N, B, F] -> [N, D]."""
  h, w = image_shape
  a = jnp.reshape(a_NxBxF, (-1, h // factor, w // factor, factor, factor))
  return jnp.reshape(jnp.transpose(a, (0, 1, 3, 2, 4)), (a.shape[0], h * w))


def block_counts(x_NxD: jax.Array, factor: int) -> jax.Array:
  """The low-resolution observation of binary images: ink pixels per block, [N, B] (float)."""
  return jnp.sum(to_blocks(x_NxD, factor), axis=-1)


_NEG = -1e30  # log 0, finite so that gradients through the recursion stay finite


def _log_pmfs(logits_BxF: jax.Array) -> jax.Array:
  """[F + 1, B, F + 1]: entry j the log pmf of the count of the block's first j pixels."""
  num_blocks, num_pixels = logits_BxF.shape
  start = jnp.full((num_blocks, num_pixels + 1), _NEG).at[:, 0].set(0.0)

  def add_pixel(log_pmf_BxK, logit_B):
    shifted = jnp.concatenate([jnp.full((num_blocks, 1), _NEG), log_pmf_BxK[:, :-1]], axis=1)
    new = jnp.logaddexp(log_pmf_BxK + jax.nn.log_sigmoid(-logit_B)[:, None],
                        shifted + jax.nn.log_sigmoid(logit_B)[:, None])
    return new, new

  return jnp.concatenate([start[None], jax.lax.scan(add_pixel, start, logits_BxF.T)[1]])


def poisson_binomial_log_pmf(logits_BxF: jax.Array) -> jax.Array:
  """log P(count = k), k = 0..F, of the sum of independent Bernoulli(sigmoid(logit)) pixels of
  each block: [B, F] -> [B, F + 1], by the recursion over pixels in log space."""
  return _log_pmfs(logits_BxF)[-1]


def _at(log_pmf_BxK: jax.Array, index_B: jax.Array) -> jax.Array:
  """log_pmf_BxK[b, index_b], log 0 where the index is outside 0..K-1."""
  safe = jnp.clip(index_B, 0, log_pmf_BxK.shape[1] - 1)
  value = jnp.take_along_axis(log_pmf_BxK, safe[:, None], axis=1)[:, 0]
  return jnp.where((index_B >= 0) & (index_B < log_pmf_BxK.shape[1]), value, _NEG)


def count_log_likelihood(logits_D: jax.Array, counts_B: jax.Array, factor: int) -> jax.Array:
  """log p(c | z) for ONE image: its decoder logits [D] and block counts [B], nats."""
  return jnp.sum(_at(poisson_binomial_log_pmf(to_blocks(logits_D, factor)[0]), jnp.asarray(counts_B, jnp.int32)))


def conditional_probs(logits_D: jax.Array, counts_B: jax.Array, factor: int) -> jax.Array:
  """P(x_i = 1 | logits, c_b) [D] for ONE image: independent Bernoulli(sigmoid(logits)) pixels
  conditioned on each block's count (see the module docstring). The count of the block without
  pixel i is the convolution of the pmfs of the pixels before i and after i."""
  logits_BxF = to_blocks(logits_D, factor)[0]
  counts_B = jnp.asarray(counts_B, jnp.int32)
  size = logits_BxF.shape[1] + 1
  prefix_KxBxK = _log_pmfs(logits_BxF)
  before_FxBxK = prefix_KxBxK[:-1]  # pixels < i
  after_FxBxK = _log_pmfs(logits_BxF[:, ::-1])[::-1][1:]  # pixels > i
  # log P(rest = c_b - 1) = logsumexp_k before[k] + after[c_b - 1 - k].
  index_BxK = counts_B[:, None] - 1 - jnp.arange(size)[None]
  after_at = jax.vmap(lambda a_BxK: jax.vmap(_at, in_axes=(None, 1), out_axes=1)(a_BxK, index_BxK))(after_FxBxK)
  log_rest_FxB = jax.nn.logsumexp(before_FxBxK + after_at, axis=-1)
  log_total_B = _at(prefix_KxBxK[-1], counts_B)
  log_probs_BxF = jax.nn.log_sigmoid(logits_BxF) + log_rest_FxB.T - log_total_B[:, None]
  return from_blocks(jnp.exp(jnp.minimum(log_probs_BxF, 0.0))[None], factor)[0]


def nearest(counts_NxB: jax.Array, factor: int) -> jax.Array:
  """Every pixel of a block at its ink fraction c_b / F: [N, D]."""
  fraction = counts_NxB / factor**2
  return from_blocks(jnp.repeat(fraction[..., None], factor**2, axis=-1), factor)


def bilinear(counts_NxB: jax.Array, factor: int, image_shape=data_lib.IMAGE_SHAPE) -> jax.Array:
  """The low-resolution image c / F resized to full size by bilinear interpolation: [N, D]."""
  h, w = image_shape
  low = jnp.reshape(counts_NxB / factor**2, (-1, h // factor, w // factor))
  return jnp.reshape(jax.image.resize(low, (low.shape[0], h, w), "bilinear"), (low.shape[0], h * w))


def mean_image_given_counts(mean_D: jax.Array, counts_NxB: jax.Array, factor: int) -> jax.Array:
  """Independent Bernoulli pixels at the mean training image (values in [0, 1]), conditioned on
  each block's count."""
  if not bool(jnp.all((mean_D >= 0) & (mean_D <= 1))):
    raise ValueError("the mean image must hold pixel probabilities in [0, 1] (not uint8 intensities)")
  logits_D = jnp.log(jnp.clip(mean_D, 1e-6, 1 - 1e-6)) - jnp.log1p(-jnp.clip(mean_D, 1e-6, 1 - 1e-6))
  return jax.vmap(lambda c: conditional_probs(logits_D, c, factor))(counts_NxB)


def baselines(mean_D: jax.Array, counts_NxB: jax.Array, factor: int) -> dict[str, jax.Array]:
  """The `BASELINES`' pixel probabilities [N, D] from the counts."""
  return dict(zip(BASELINES, (nearest(counts_NxB, factor), bilinear(counts_NxB, factor),
                              mean_image_given_counts(mean_D, counts_NxB, factor))))


@functools.partial(jax.jit, static_argnames=("model", "factor", "num_steps", "num_samples"))
def upscale(model: nn.Module, params, keys_N: jax.Array, counts_NxB: jax.Array, factor: int, num_steps: int = 300,
            learning_rate: float = 0.05, num_samples: int = 1000) -> jax.Array:
  """P(x_i = 1 | c) [N, D] of a one-stochastic-layer VAE with Bernoulli pixels, from block
  counts [N, B]: the mode of p(z | c) by `num_steps` Adam steps from the encoding of the nearest
  upsampling, then the importance-sampled average of P(x | z, c) (module docstring), with each
  image's key of `keys_N` [N] (so the result does not depend on how images are batched)."""
  decode = lambda z: model.apply(params, z, method=model.decode)
  neg_log_joint = lambda z_L, c_B: -(count_log_likelihood(decode(z_L), c_B, factor)
                                     - 0.5 * jnp.sum(jnp.square(z_L)))
  optimizer = optax.adam(learning_rate)

  def step(carry, _):
    z_NxL, opt_state = carry
    grads = jax.grad(lambda z: jnp.sum(jax.vmap(neg_log_joint)(z, counts_NxB)))(z_NxL)
    updates, opt_state = optimizer.update(grads, opt_state)
    return (optax.apply_updates(z_NxL, updates), opt_state), None

  z0_NxL = model.apply(params, nearest(counts_NxB, factor), method=model.encode)[0]
  (z_NxL, _), _ = jax.lax.scan(step, (z0_NxL, optimizer.init(z0_NxL)), length=num_steps)

  def one(args):
    image_key, c_B, z_L = args
    values = lambda z_KxL: jax.vmap(lambda z: conditional_probs(decode(z), c_B, factor))(z_KxL)
    return latent.posterior_average(image_key, lambda z: neg_log_joint(z, c_B), z_L, values, num_samples)

  return jax.lax.map(one, (keys_N, counts_NxB, z_NxL), batch_size=8)


def pixel_scores(x_NxD, probs_NxD) -> tuple[np.ndarray, np.ndarray]:
  """Per image [N]: nats per pixel of binary images under pixel probabilities (clipped to
  [1e-6, 1 - 1e-6] so that one confident miss stays finite), and accuracy at 0.5."""
  x = np.asarray(x_NxD, np.float64)
  p = np.clip(np.asarray(probs_NxD, np.float64), 1e-6, 1 - 1e-6)
  nats = -np.mean(x * np.log(p) + (1 - x) * np.log1p(-p), axis=1)
  return nats, np.mean((p > 0.5) == (x > 0.5), axis=1)
