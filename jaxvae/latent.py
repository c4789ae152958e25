"""What a trained latent space is used for: paths, grids, neighbours, anomaly scores, inpainting.

Every function takes the model and its params explicitly (as `evaluate` does) and is
jit-friendly; encode a whole data set with `evaluate.latent_means`. Shapes: N data
points, D pixels, L latent dimensions, T points along a path, K neighbours.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.scipy import stats

from jaxvae import distributions
from jaxvae import evaluate
from jaxvae import objectives

INTERPOLATIONS = ("linear", "spherical")
GRID_SPACINGS = ("quantile", "linear")
INPAINT_METHODS = ("predictive", "optimize", "iterate")


def decode_means(model: nn.Module, params, z_NxL: jax.Array) -> jax.Array:
  """Bernoulli means sigmoid(decode(z)) [N, D] of latent points z [N, L]: the pictures."""
  return jax.nn.sigmoid(model.apply(params, z_NxL, method=model.decode))


def interpolate(z0_L: jax.Array, z1_L: jax.Array, num: int, method: str = "linear") -> jax.Array:
  """`num` points from z0 to z1 (both included), [num, L].

  "linear": z0 + t (z1 - z0). Under a N(0, I) prior its midpoints fall towards the
  origin, where the typical set of a high-dimensional Gaussian is not (norms
  concentrate near sqrt(L)). "spherical": the direction moves along the great
  circle between z0/|z0| and z1/|z1| at constant angular speed while the norm
  goes linearly from |z0| to |z1|, so the path never cuts through the low-norm
  interior. Where the great circle is undefined (endpoints pointing the same or
  opposite ways, or one at the origin) the spherical path is the linear one.
  """
  if method not in INTERPOLATIONS:
    raise ValueError(f"unknown interpolation {method!r}; choose one of {', '.join(INTERPOLATIONS)}")
  t_T = jnp.linspace(0.0, 1.0, num)[:, None]
  linear_TxL = z0_L + t_T * (z1_L - z0_L)
  if method == "linear":
    return linear_TxL
  norm0, norm1 = jnp.linalg.norm(z0_L), jnp.linalg.norm(z1_L)
  tiny = 1e-6
  u0_L, u1_L = z0_L / jnp.maximum(norm0, tiny), z1_L / jnp.maximum(norm1, tiny)
  omega = jnp.arccos(jnp.clip(jnp.dot(u0_L, u1_L), -1.0, 1.0))
  # Within 0.06 degrees of (anti)parallel, or an endpoint at the origin: no great circle.
  degenerate = (jnp.abs(jnp.sin(omega)) < 1e-3) | (jnp.minimum(norm0, norm1) < tiny)
  safe_sin = jnp.where(degenerate, 1.0, jnp.sin(omega))
  direction_TxL = (jnp.sin((1.0 - t_T) * omega) * u0_L + jnp.sin(t_T * omega) * u1_L) / safe_sin
  direction_TxL /= jnp.maximum(jnp.linalg.norm(direction_TxL, axis=-1, keepdims=True), tiny)
  return jnp.where(degenerate, linear_TxL, ((1.0 - t_T) * norm0 + t_T * norm1) * direction_TxL)


def grid_coordinates(num: int, spacing: str = "quantile", span: tuple[float, float] | None = None) -> jax.Array:
  """`num` increasing coordinates for one latent axis.

  "quantile": the N(0, 1) quantiles at probabilities linspace(span) (default
  (0.05, 0.95)), so each cell covers equal prior mass (the layout of Kingma &
  Welling 2014, figure 4). "linear": linspace(span), default (-3, 3).
  """
  if spacing not in GRID_SPACINGS:
    raise ValueError(f"unknown grid spacing {spacing!r}; choose one of {', '.join(GRID_SPACINGS)}")
  if spacing == "quantile":
    lo, hi = span or (0.05, 0.95)
    if not 0.0 < lo < hi < 1.0:
      raise ValueError(f"quantile span must satisfy 0 < lo < hi < 1, got {(lo, hi)}")
    return stats.norm.ppf(jnp.linspace(lo, hi, num))
  lo, hi = span or (-3.0, 3.0)
  return jnp.linspace(lo, hi, num)


def manifold_grid(num: int, spacing: str = "quantile", span: tuple[float, float] | None = None) -> jax.Array:
  """The z of a `num` x `num` picture of a 2-D latent space, [num * num, 2], row-major.

  Columns go left to right along z_1, rows top to bottom along decreasing z_2 (so
  the picture has the usual axes). See `grid_coordinates` for `spacing` and `span`.
  """
  coords = grid_coordinates(num, spacing, span)
  z2, z1 = jnp.meshgrid(coords[::-1], coords, indexing="ij")
  return jnp.stack([z1.ravel(), z2.ravel()], axis=-1)


@functools.partial(jax.jit, static_argnames=("k", "batch_size"))
def nearest_neighbours(queries_QxL: jax.Array, references_NxL: jax.Array, k: int,
                       batch_size: int = 256) -> tuple[jax.Array, jax.Array]:
  """The `k` nearest references (Euclidean) of every query, nearest first.

  Memory is batch_size * N distances at a time.

  Returns:
    (squared distances [Q, k], indices into references [Q, k]).
  """
  ref_sq_N = jnp.sum(jnp.square(references_NxL), axis=-1)

  def one(q_L):
    d2_N = ref_sq_N - 2.0 * references_NxL @ q_L + jnp.sum(jnp.square(q_L))
    neg_d2_K, idx_K = jax.lax.top_k(-d2_N, k)
    return jnp.maximum(-neg_d2_K, 0.0), idx_K

  return jax.lax.map(one, queries_QxL, batch_size=batch_size)


def knn_classify(train_z_NxL, train_labels_N, test_z_QxL, k: int = 5, num_classes: int = 10) -> jax.Array:
  """Labels [Q] by majority vote of the `k` nearest training points (ties: the nearer class wins)."""
  _, idx_QxK = nearest_neighbours(test_z_QxL, train_z_NxL, k)
  labels_QxK = jnp.asarray(train_labels_N)[idx_QxK]
  counts_QxC = jnp.sum(jax.nn.one_hot(labels_QxK, num_classes, dtype=jnp.int32), axis=1)
  tied_QxC = counts_QxC == jnp.max(counts_QxC, axis=1, keepdims=True)
  # Among the classes with the most votes, the one of the nearest neighbour wins.
  in_tie_QxK = jnp.take_along_axis(tied_QxC, labels_QxK, axis=1)
  return jnp.take_along_axis(labels_QxK, jnp.argmax(in_tie_QxK, axis=1, keepdims=True), axis=1)[:, 0]


_reconstruction_log_likelihoods = jax.jit(jax.vmap(objectives.reconstruction_log_likelihood, (None, None, 0)),
                                          static_argnums=0)


def anomaly_scores(model: nn.Module, params, key: jax.Array, x_NxD, model_type: str = "vae",
                   iwae_samples: int = 100, batch_size: int = 100) -> dict[str, np.ndarray]:
  """Per-example anomaly scores in nats (higher = more anomalous), float64 [N] each.

  "reconstruction": -log p(x | z = E_q[z | x]), for a VAE and an AE alike. For a
  VAE also "neg_elbo" (one-sample -ELBO, analytic KL) and "iwae_nll" (-IWAE bound
  with `iwae_samples` importance samples; 0 leaves it out). An autoencoder defines
  no density, so it has only the reconstruction score.
  """
  if model_type not in objectives.OBJECTIVES:
    raise ValueError(f"unknown model type {model_type!r}; choose one of {', '.join(objectives.OBJECTIVES)}")
  scores = {"reconstruction": -np.asarray(_reconstruction_log_likelihoods(model, params, x_NxD), np.float64)}
  if model_type == "ae":
    return scores
  elbo_key, iwae_key = jax.random.split(key)
  scores["neg_elbo"] = -np.asarray(evaluate.elbo_terms(model, params, elbo_key, x_NxD).elbo, np.float64)
  if iwae_samples:
    scores["iwae_nll"] = -evaluate.iwae_bounds(model, params, iwae_key, x_NxD, iwae_samples, batch_size,
                                               min(iwae_samples, 500))
  return scores


def auroc(scores_N, positives_N) -> float:
  """Area under the ROC curve of `scores` for telling positives (True) from the rest.

  The Mann-Whitney statistic: the probability that a random positive scores higher
  than a random negative, ties counting one half. 1 = perfect, 0.5 = chance.
  """
  scores_N, positives_N = np.asarray(scores_N, np.float64), np.asarray(positives_N, bool)
  if not np.all(np.isfinite(scores_N)):
    raise ValueError(f"AUROC of non-finite scores ({np.sum(~np.isfinite(scores_N))} NaN or Inf)")
  num_pos, num_neg = int(positives_N.sum()), int((~positives_N).sum())
  if num_pos == 0 or num_neg == 0:
    raise ValueError(f"AUROC needs positives and negatives; got {num_pos} and {num_neg}")
  # 1-based ranks, ties sharing their average rank.
  _, group_N, counts = np.unique(scores_N, return_inverse=True, return_counts=True)
  ranks = (np.cumsum(counts) - (counts - 1) / 2.0)[group_N]
  return float((ranks[positives_N].sum() - num_pos * (num_pos + 1) / 2) / (num_pos * num_neg))


def inpaint(model: nn.Module, params, x_NxD: jax.Array, observed_NxD: jax.Array, method: str = "predictive",
            num_steps: int = 300, learning_rate: float = 0.05, prior: bool = True, key: jax.Array | None = None,
            num_samples: int = 1000) -> jax.Array:
  """Fills in the unobserved pixels of x; observed pixels are returned unchanged.

  Args:
    x_NxD: [N, D] images in [0, 1]; their unobserved pixels are never read.
    observed_NxD: [N, D] bool, True where a pixel is known.
    method: how to fill in (the README measures all three).
      "optimize" finds z* = argmax_z log p(x_obs | z) + log p(z) by `num_steps`
      Adam steps from the encoding of the image with its holes set to 0.5, and
      reads the missing pixels off p(x | z*). The decoder factorizes over pixels,
      so p(x_obs | z) is exact and the known pixels are the only evidence used,
      without relying on how the encoder treats holes it never saw in training.
      `prior=False` drops log p(z) (for an autoencoder, which has no prior).
      "predictive" (default, VAE only) averages over the posterior instead of
      committing to its mode: p(x_miss | x_obs) = E_{p(z | x_obs)} p(x_miss | z),
      by self-normalized importance sampling with `num_samples` draws (from `key`)
      around z* (see `predictive_fill`); the weights p(x_obs | z) p(z) / proposal(z)
      make it exact as samples grow. Its pixel probabilities are calibrated
      rather than those of the single most likely z.
      "iterate" repeats x <- clamp(sigmoid(decode(encode_mean(x)))) `num_steps`
      times, the known pixels clamped each time (a deterministic version of
      Rezende et al. 2014's encode/decode chain).

  Returns:
    [N, D] images: x where observed, Bernoulli means of the completion elsewhere.
  """
  if method not in INPAINT_METHODS:
    raise ValueError(f"unknown inpainting method {method!r}; choose one of {', '.join(INPAINT_METHODS)}")
  if method == "predictive" and (key is None or not prior):
    raise ValueError("inpainting method 'predictive' needs a key and the prior (a VAE)")
  observed_NxD = jnp.asarray(observed_NxD, bool)
  x_NxD = jnp.where(observed_NxD, jnp.asarray(x_NxD, jnp.float32), 0.0)  # hidden pixels may hold anything, NaN too
  return _inpaint(model, params, x_NxD, observed_NxD, method, num_steps, learning_rate, prior, key, num_samples)


PROPOSAL_WIDENING = 1.5  # proposal scales over the Laplace approximation's: heavier tails than the posterior


def neg_log_joint(model: nn.Module, params, z_L, x_D, observed_D) -> jax.Array:
  """-log p(x_obs, z) = -log p(x_obs | z) - log p(z) for ONE image, nats; the hidden pixels are not read."""
  logits_D = model.apply(params, z_L, method=model.decode)
  log_lik_obs = jnp.sum(jnp.where(observed_D, distributions.bernoulli_log_density(x_D, logits_D), 0.0), -1)
  return -(log_lik_obs + distributions.standard_normal_log_density(z_L))


def predictive_fill(model: nn.Module, params, key: jax.Array, x_D, observed_D, z_L, num_samples: int) -> jax.Array:
  """E_{p(z | x_obs)} sigmoid(decode(z)) [D] for ONE image, by self-normalized importance sampling
  (`posterior_average`); `z_L` should be the posterior mode (from the "optimize" method)."""
  return posterior_average(key, lambda z: neg_log_joint(model, params, z, x_D, observed_D), z_L,
                           lambda z_KxL: decode_means(model, params, z_KxL), num_samples)


def posterior_average(key: jax.Array, neg_log_joint_fn, z_L: jax.Array, values_fn, num_samples: int) -> jax.Array:
  """E_{p(z | evidence)} values(z) for ONE example, by self-normalized importance sampling, where
  p(z | evidence) ∝ exp(-neg_log_joint_fn(z)) (a prior N(0, I) times the evidence's likelihood)
  and `values_fn` maps draws [K, L] to [K, ...].

  `z_L` should be the posterior mode. The proposal is an even mixture, half the samples from
  each part, of the Laplace approximation N(z_L, 1.5^2 H^-1) (H: Hessian of neg_log_joint_fn at
  z_L, eigenvalues floored at 0.01) and the prior N(0, I). The prior part ("defensive"
  importance sampling) bounds every weight by 2 p(evidence | z), so a posterior that the
  Gaussian fits badly costs variance, not bias.
  """
  hessian_LxL = jax.hessian(neg_log_joint_fn)(z_L)
  eigvals_L, eigvecs_LxL = jnp.linalg.eigh(0.5 * (hessian_LxL + hessian_LxL.T))
  scales_L = PROPOSAL_WIDENING / jnp.sqrt(jnp.maximum(eigvals_L, 1e-2))  # along the eigenvectors
  local_key, prior_key = jax.random.split(key)
  half = num_samples // 2
  eps_KxL = jax.random.normal(local_key, (num_samples - half, z_L.shape[-1]))
  z_KxL = jnp.concatenate([z_L + (eps_KxL * scales_L) @ eigvecs_LxL.T,
                           jax.random.normal(prior_key, (half, z_L.shape[-1]))])
  # log N(z; z_L, V diag(scales^2) V^T), in the eigenbasis.
  log_local_K = distributions.gaussian_log_likelihood((z_KxL - z_L) @ eigvecs_LxL, 0.0, 2.0 * jnp.log(scales_L))
  log_prior_K = distributions.standard_normal_log_density(z_KxL)
  log_proposal_K = jnp.logaddexp(log_local_K, log_prior_K) - jnp.log(2.0)
  log_joint_K = -jax.vmap(neg_log_joint_fn)(z_KxL)
  return jnp.tensordot(jax.nn.softmax(log_joint_K - log_proposal_K), values_fn(z_KxL), axes=1)


@functools.partial(jax.jit, static_argnums=(0, 4, 5, 7, 9))
def _inpaint(model, params, x_NxD, observed_NxD, method, num_steps, learning_rate, prior, key, num_samples):
  clamp = lambda fill_NxD: jnp.where(observed_NxD, x_NxD, fill_NxD)
  start_NxD = clamp(0.5)
  encode_mean = lambda x: model.apply(params, x, method=model.encode)[0]
  if method == "iterate":
    body = lambda _, x: clamp(decode_means(model, params, encode_mean(x)))
    return jax.lax.fori_loop(0, num_steps, body, start_NxD)

  def objective(z_NxL):  # summed over images: each image's gradient is its own
    log_joint_N = -jax.vmap(neg_log_joint, (None, None, 0, 0, 0))(model, params, z_NxL, x_NxD, observed_NxD)
    if not prior:
      log_joint_N -= distributions.standard_normal_log_density(z_NxL)
    return -jnp.sum(log_joint_N)

  optimizer = optax.adam(learning_rate)

  def step(carry, _):
    z_NxL, opt_state = carry
    grads = jax.grad(objective)(z_NxL)
    updates, opt_state = optimizer.update(grads, opt_state)
    return (optax.apply_updates(z_NxL, updates), opt_state), None

  z0_NxL = encode_mean(start_NxD)
  (z_NxL, _), _ = jax.lax.scan(step, (z0_NxL, optimizer.init(z0_NxL)), length=num_steps)
  if method == "optimize":
    return clamp(decode_means(model, params, z_NxL))
  keys_N = jax.random.split(key, x_NxD.shape[0])
  fill = lambda args: predictive_fill(model, params, *args, num_samples)
  return clamp(jax.lax.map(fill, (keys_N, x_NxD, observed_NxD, z_NxL), batch_size=8))


def masked_log_likelihood(x_NxD, probs_NxD, observed_NxD) -> jax.Array:
  """Mean Bernoulli log-likelihood (nats per pixel) of the UNobserved pixels of binary x under `probs`.

  Scores an inpainting: the true hidden pixels' log-probability under the filled-in
  Bernoulli means (clipped to [1e-6, 1 - 1e-6] so one confident miss stays finite).
  """
  probs_NxD = jnp.clip(probs_NxD, 1e-6, 1.0 - 1e-6)
  log_lik_NxD = x_NxD * jnp.log(probs_NxD) + (1.0 - x_NxD) * jnp.log1p(-probs_NxD)
  hidden_NxD = ~jnp.asarray(observed_NxD, bool)
  return jnp.sum(jnp.where(hidden_NxD, log_lik_NxD, 0.0)) / jnp.sum(hidden_NxD)


def lower_half_mask(num: int, image_shape=(28, 28)) -> np.ndarray:
  """bool [num, D]: the top half observed, the lower half hidden."""
  h, w = image_shape
  observed = np.zeros(image_shape, bool)
  observed[: h // 2] = True
  return np.broadcast_to(observed.ravel(), (num, h * w)).copy()


def random_block_mask(key: jax.Array, num: int, block: int = 12, image_shape=(28, 28)) -> np.ndarray:
  """bool [num, D]: a `block` x `block` square hidden at a random place (one per image, from `key`)."""
  h, w = image_shape
  top_key, left_key = jax.random.split(key)
  top = np.asarray(jax.random.randint(top_key, (num,), 0, h - block + 1))
  left = np.asarray(jax.random.randint(left_key, (num,), 0, w - block + 1))
  rows, cols = np.mgrid[:h, :w]
  hidden = ((rows[None] >= top[:, None, None]) & (rows[None] < top[:, None, None] + block)
            & (cols[None] >= left[:, None, None]) & (cols[None] < left[:, None, None] + block))
  return ~hidden.reshape(num, h * w)


def pca(x_NxD, num_components: int = 2) -> jax.Array:
  """Projection [N, num_components] of the rows of x onto their top principal components."""
  centered = jnp.asarray(x_NxD) - jnp.mean(x_NxD, axis=0)
  _, _, vt = jnp.linalg.svd(centered, full_matrices=False)
  return centered @ vt[:num_components].T
