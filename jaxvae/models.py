"""Flax linen encoder and decoder. Pure functions of their inputs: no sampling here.

The VAE module only maps x -> (mean, logvar) and z -> logits; sampling lives in
`jaxvae.distributions.reparameterize`, with an explicit key, so every module call
is deterministic and can be jitted, vmapped and differentiated freely.

Two architectures for the networks that touch the image ("mlp", "conv") and
two depths of the latent hierarchy: `VAE` (one stochastic layer) and
`TwoLayerVAE` (Burda et al. 2015's two stochastic layers).
"""

import functools
from typing import Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxvae import registry

ACTIVATIONS = ("relu", "tanh", "elu", "gelu", "silu", "softplus", "leaky_relu", "sigmoid")
# "uniform": weights and biases ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)), PyTorch's nn.Linear default;
# on MNIST (784-400-20, 10 epochs) it reaches a test -ELBO about 0.6 nats lower than
# "lecun_normal" (Flax's default, zero biases). See README.md.
WEIGHT_INITS = ("uniform", "lecun_normal")
# "data_mean": the decoder's output biases start at the logit of the mean training pixel, so the
# untrained model already predicts the average image (Burda et al. 2015).
OUTPUT_BIASES = ("init", "data_mean")
# The networks between x and the first latent layer: Dense layers, or two stride-2 convolutions
# (28 -> 14 -> 7, 32 and 64 channels) before the Dense layers of the encoder, mirrored by
# transposed convolutions after those of the decoder.
ARCHITECTURES = ("mlp", "conv")
# The `matmul_dtype` of the models: None keeps float32 throughout; "bfloat16" rounds the operands
# of the matmuls (Dense layers forward and backward, convolutions forward) to bfloat16, which
# accumulate in float32, while params, activations, biases, the loss and the optimizer stay float32
# (`matmul_options`, `bf16_matmul`). On GPUs and TPUs bfloat16 matmuls run on the tensor cores at
# several times the float32 rate; on CPUs they are slower.
MATMUL_DTYPES = ("bfloat16",)
MNIST_SHAPE = (28, 28, 1)
MNIST_DIM = 28 * 28


def get_activation(name: str) -> Callable[[jax.Array], jax.Array]:
  """Returns the `jax.nn` function called `name` (one of `ACTIVATIONS`)."""
  if name not in ACTIVATIONS:
    raise ValueError(f"unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}")
  return getattr(jax.nn, name)


def _matmul(x: jax.Array, w: jax.Array, out_dtype) -> jax.Array:
  """x [..., K] @ w [K, N] as one dot_general, its result in `out_dtype`."""
  return jax.lax.dot_general(x, w, (((x.ndim - 1,), (0,)), ((), ())), preferred_element_type=out_dtype)


@jax.custom_jvp
def bf16_matmul(x: jax.Array, w: jax.Array) -> jax.Array:
  """x [..., K] @ w [K, N] with both operands rounded to bfloat16, the products accumulated and
  returned in float32.

  Its gradient's two matmuls take bfloat16 operands too (the cotangent rounded to bfloat16), so
  all three matmuls of a Dense layer's training step run as bfloat16 GEMMs, which accumulate in
  float32 (on GPUs and TPUs) and return the gradients rounded to bfloat16. The rule is a JVP, not a
  VJP: JAX transposes it, so under `vmap` over examples the weight gradient stays one matmul over
  the batch instead of per-example outer products. Plain `preferred_element_type=float32` would
  be transposed into float32 matmuls.
  """
  return _matmul(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16), jnp.float32)


def _bf16_matmul_jvp(primals, tangents):
  x, w = primals
  x_dot, w_dot = tangents
  x16, w16 = x.astype(jnp.bfloat16), w.astype(jnp.bfloat16)
  y_dot = jnp.zeros((*x.shape[:-1], w.shape[-1]), jnp.float32)
  # bfloat16 results: their transposes then take bfloat16 cotangents (a float32 one would make
  # JAX upcast the other operand and run the gradient matmuls in float32).
  if not isinstance(x_dot, jax.custom_derivatives.SymbolicZero):  # e.g. the data: no gradient needed
    y_dot = y_dot + _matmul(x_dot.astype(jnp.bfloat16), w16, jnp.bfloat16).astype(jnp.float32)
  if not isinstance(w_dot, jax.custom_derivatives.SymbolicZero):
    y_dot = y_dot + _matmul(x16, w_dot.astype(jnp.bfloat16), jnp.bfloat16).astype(jnp.float32)
  return _matmul(x16, w16, jnp.float32), y_dot


bf16_matmul.defjvp(_bf16_matmul_jvp, symbolic_zeros=True)


def _bf16_dense_dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
  """nn.Dense's `dot_general` (contract the last axis of the inputs with the first of the kernel)
  as `bf16_matmul`."""
  del precision, preferred_element_type
  if tuple(map(tuple, dimension_numbers[0])) != ((lhs.ndim - 1,), (0,)) or any(dimension_numbers[1]):
    raise ValueError(f"bf16_matmul contracts inputs [..., K] with a kernel [K, N]; got {dimension_numbers}")
  return bf16_matmul(lhs, rhs)


def matmul_options(matmul_dtype: str | None, conv: bool = False) -> dict:
  """Keyword arguments of nn.Dense (or with `conv`, nn.Conv) for matmuls in `matmul_dtype` (see
  `MATMUL_DTYPES`); none at all for None, so the default layers are built exactly as before the
  option existed. "bfloat16": a Dense layer keeps float32 params, inputs and outputs and runs
  `bf16_matmul`; a convolution takes bfloat16 inputs, kernel and bias and accumulates and returns
  float32 (its gradient convolutions, as JAX transposes them, in float32)."""
  if matmul_dtype is None:
    return {}
  if matmul_dtype not in MATMUL_DTYPES:
    raise ValueError(f"unknown matmul_dtype {matmul_dtype!r}; choose None or one of {', '.join(MATMUL_DTYPES)}")
  if not conv:
    return {"dot_general": _bf16_dense_dot_general}
  return {"dtype": jnp.bfloat16, "param_dtype": jnp.float32,
          "conv_general_dilated": functools.partial(jax.lax.conv_general_dilated, preferred_element_type=jnp.float32)}


def dense(features: int, fan_in: int, weight_init: str, name: str, matmul_dtype: str | None = None) -> nn.Dense:
  """A Dense layer initialised by the scheme `weight_init` (one of `WEIGHT_INITS`), its matmul in
  `matmul_dtype` (see `matmul_options`)."""
  options = matmul_options(matmul_dtype)
  if weight_init == "lecun_normal":
    return nn.Dense(features, name=name, **options)
  if weight_init != "uniform":
    raise ValueError(f"unknown weight_init {weight_init!r}; choose one of {', '.join(WEIGHT_INITS)}")
  bound = fan_in**-0.5
  uniform = lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)
  return nn.Dense(features, kernel_init=uniform, bias_init=uniform, name=name, **options)


class MLP(nn.Module):
  """`num_layers` hidden Dense layers of width `hidden_dim`, then a linear output."""

  hidden_dim: int
  num_layers: int
  output_dim: int
  activation: str = "relu"
  weight_init: str = "uniform"
  matmul_dtype: str | None = None  # see MATMUL_DTYPES

  @nn.compact
  def __call__(self, h: jax.Array) -> jax.Array:
    act = get_activation(self.activation)
    for i in range(self.num_layers):
      h = act(dense(self.hidden_dim, h.shape[-1], self.weight_init, f"hidden_{i}", self.matmul_dtype)(h))
    return dense(self.output_dim, h.shape[-1], self.weight_init, "out", self.matmul_dtype)(h)


CONV_CHANNELS = (32, 64)


def _check_architecture(architecture: str, output_dim: int) -> None:
  if architecture not in ARCHITECTURES:
    raise ValueError(f"unknown architecture {architecture!r}; choose one of {', '.join(ARCHITECTURES)}")
  if architecture == "conv" and output_dim != MNIST_DIM:
    raise ValueError(f"the conv architecture reads 28x28 images (output_dim {MNIST_DIM}), got {output_dim}")


class Encoder(nn.Module):
  """q(z | x) = N(mean, diag(exp(logvar))): x [..., D] -> (mean, logvar) [..., L].

  "conv": x is read as a 28x28 image and passes two stride-2 convolutions (4x4
  kernels, `CONV_CHANNELS`) before the Dense layers.
  """

  latent_dim: int
  hidden_dim: int = 400
  num_layers: int = 1
  activation: str = "relu"
  weight_init: str = "uniform"
  architecture: str = "mlp"
  matmul_dtype: str | None = None  # see MATMUL_DTYPES

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    if self.architecture == "conv":
      _check_architecture(self.architecture, x.shape[-1])
      act = get_activation(self.activation)
      h = x.reshape(*x.shape[:-1], *MNIST_SHAPE)
      for i, channels in enumerate(CONV_CHANNELS):
        h = act(nn.Conv(channels, (4, 4), strides=2, name=f"conv_{i}",
                        **matmul_options(self.matmul_dtype, conv=True))(h))
      x = h.reshape(*x.shape[:-1], -1)
    out = MLP(self.hidden_dim, self.num_layers, 2 * self.latent_dim, self.activation, self.weight_init,
              self.matmul_dtype, name="mlp")(x)
    mean, logvar = jnp.split(out, 2, axis=-1)
    return mean, logvar


class Decoder(nn.Module):
  """p(x | z): z [..., L] -> Bernoulli logits [..., D].

  "conv": the Dense layers give a 7x7x64 map, then two stride-2 transposed
  convolutions (4x4 kernels) give the 28x28 logits, plus a bias per pixel.
  """

  output_dim: int = MNIST_DIM
  hidden_dim: int = 400
  num_layers: int = 1
  activation: str = "relu"
  weight_init: str = "uniform"
  architecture: str = "mlp"
  matmul_dtype: str | None = None  # see MATMUL_DTYPES

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    if self.architecture == "mlp":
      return MLP(self.hidden_dim, self.num_layers, self.output_dim, self.activation, self.weight_init,
                 self.matmul_dtype, name="mlp")(z)
    _check_architecture(self.architecture, self.output_dim)
    act = get_activation(self.activation)
    side = MNIST_SHAPE[0] // 2 ** len(CONV_CHANNELS)
    h = act(MLP(self.hidden_dim, self.num_layers, side * side * CONV_CHANNELS[-1], self.activation,
                self.weight_init, self.matmul_dtype, name="mlp")(z))
    h = h.reshape(*z.shape[:-1], side, side, CONV_CHANNELS[-1])
    options = matmul_options(self.matmul_dtype, conv=True)
    if options:  # ConvTranspose takes the accumulation type itself
      options = {"dtype": options["dtype"], "param_dtype": options["param_dtype"],
                 "preferred_element_type": jnp.float32}
    for i, channels in enumerate(CONV_CHANNELS[-2::-1]):
      h = act(nn.ConvTranspose(channels, (4, 4), strides=(2, 2), name=f"deconv_{i}", **options)(h))
    h = nn.ConvTranspose(MNIST_SHAPE[-1], (4, 4), strides=(2, 2), use_bias=False, name="deconv_out", **options)(h)
    return h.reshape(*z.shape[:-1], self.output_dim) + self.param("bias", nn.initializers.zeros, (self.output_dim,))


class VAE(nn.Module):
  """MLP encoder and mirrored MLP decoder.

  Use `model.apply(params, x, method=model.encode)` and
  `model.apply(params, z, method=model.decode)`, or `model.bind(params)` to call
  `encode`/`decode` directly. `__call__(x)` decodes the posterior mean (a
  deterministic reconstruction) and is what `init` traces.
  """

  latent_dim: int = 20
  output_dim: int = MNIST_DIM
  hidden_dim: int = 400
  num_layers: int = 1
  activation: str = "relu"
  weight_init: str = "uniform"
  architecture: str = "mlp"
  matmul_dtype: str | None = None  # see MATMUL_DTYPES; a saved spec without it loads as None

  def setup(self):
    _check_architecture(self.architecture, self.output_dim)
    self.encoder = Encoder(self.latent_dim, self.hidden_dim, self.num_layers, self.activation, self.weight_init,
                           self.architecture, self.matmul_dtype)
    self.decoder = Decoder(self.output_dim, self.hidden_dim, self.num_layers, self.activation, self.weight_init,
                           self.architecture, self.matmul_dtype)

  def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """x [..., D] in [0, 1] -> (mean, logvar), each [..., L]."""
    return self.encoder(x)

  def decode(self, z: jax.Array) -> jax.Array:
    """z [..., L] -> logits [..., D]."""
    return self.decoder(z)

  def __call__(self, x: jax.Array) -> jax.Array:
    mean, _ = self.encode(x)
    return self.decode(mean)


class TwoLayerVAE(nn.Module):
  """Two stochastic layers, x <-> h1 <-> z (Burda et al. 2015, section 5).

  Inference q(h1 | x) q(z | h1), generation p(z) p(h1 | z) p(x | h1), with p(z) =
  N(0, I), diagonal Gaussians for q(h1 | x), q(z | h1), p(h1 | z) and Bernoulli
  p(x | h1). The x-side networks (`hidden_dim`, `architecture`) are those of a
  one-layer `VAE` with latent size `h1_dim`; the h1 <-> z networks are MLPs of
  width `top_hidden_dim`; both have `num_layers` hidden layers.

  The four conditionals are `encode_h1`, `encode_top`, `decode_top` and
  `decode_h1`; `jaxvae.objectives` samples through them for the ELBO and the IWAE
  bound. `encode` and `decode` are the deterministic paths through the means,
  x -> E[h1 | x] -> q(z | h1) and z -> E[h1 | z] -> logits, so that the pictures
  and latent-space tools of a one-layer VAE apply to the top latent z (`latent_dim`).
  """

  latent_dim: int = 50
  h1_dim: int = 100
  output_dim: int = MNIST_DIM
  hidden_dim: int = 200
  top_hidden_dim: int = 100
  num_layers: int = 2
  activation: str = "tanh"
  weight_init: str = "uniform"
  architecture: str = "mlp"
  matmul_dtype: str | None = None  # see MATMUL_DTYPES; a saved spec without it loads as None

  def setup(self):
    _check_architecture(self.architecture, self.output_dim)
    self.encoder = Encoder(self.h1_dim, self.hidden_dim, self.num_layers, self.activation, self.weight_init,
                           self.architecture, self.matmul_dtype)
    self.decoder = Decoder(self.output_dim, self.hidden_dim, self.num_layers, self.activation, self.weight_init,
                           self.architecture, self.matmul_dtype)
    self.top_encoder = Encoder(self.latent_dim, self.top_hidden_dim, self.num_layers, self.activation,
                               self.weight_init, matmul_dtype=self.matmul_dtype)
    self.top_decoder = Encoder(self.h1_dim, self.top_hidden_dim, self.num_layers, self.activation, self.weight_init,
                               matmul_dtype=self.matmul_dtype)

  def encode_h1(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """q(h1 | x): x [..., D] -> (mean, logvar) [..., H1]."""
    return self.encoder(x)

  def encode_top(self, h1: jax.Array) -> tuple[jax.Array, jax.Array]:
    """q(z | h1): h1 [..., H1] -> (mean, logvar) [..., L]."""
    return self.top_encoder(h1)

  def decode_top(self, z: jax.Array) -> tuple[jax.Array, jax.Array]:
    """p(h1 | z): z [..., L] -> (mean, logvar) [..., H1]."""
    return self.top_decoder(z)

  def decode_h1(self, h1: jax.Array) -> jax.Array:
    """p(x | h1): h1 [..., H1] -> logits [..., D]."""
    return self.decoder(h1)

  def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """q(z | h1 = E[h1 | x]): x [..., D] -> (mean, logvar) [..., L], the mean path."""
    return self.encode_top(self.encode_h1(x)[0])

  def decode(self, z: jax.Array) -> jax.Array:
    """p(x | h1 = E[h1 | z]): z [..., L] -> logits [..., D], the mean path."""
    return self.decode_h1(self.decode_top(z)[0])

  def __call__(self, x: jax.Array) -> jax.Array:
    mean, _ = self.encode(x)
    return self.decode(mean)


def output_bias_path(model: nn.Module) -> tuple[str, ...]:
  """Where the decoder's per-pixel output biases sit in `model`'s variables."""
  if getattr(model, "architecture", "mlp") == "conv":
    return ("params", "decoder", "bias")
  return ("params", "decoder", "mlp", "out", "bias")


def init_params(model: VAE | TwoLayerVAE, key: jax.Array, output_bias_D: jax.Array | None = None):
  """Initial parameters of `model` for inputs of size `model.output_dim`; with `output_bias_D`,
  the decoder's output-layer biases set to it (see `data_mean_bias`)."""
  params = model.init(key, jnp.zeros((model.output_dim,), jnp.float32))
  if output_bias_D is not None:
    flat = flax.traverse_util.flatten_dict(params)
    flat[output_bias_path(model)] = jnp.asarray(output_bias_D, jnp.float32)
    params = flax.traverse_util.unflatten_dict(flat)
  return params


def data_mean_bias(images_NxD, eps: float = 1e-3) -> jax.Array:
  """logit of the mean pixel (level / 255) of uint8 training images, clipped to [eps, 1 - eps]: [D]."""
  mean_D = jnp.mean(jnp.asarray(images_NxD, jnp.float32), axis=0) / 255.0
  return jax.scipy.special.logit(jnp.clip(mean_D, eps, 1.0 - eps))


registry.register(VAE, init_params)
registry.register(TwoLayerVAE, init_params)
