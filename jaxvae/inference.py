"""Inference beyond the encoder: annealed importance sampling and its bidirectional check.

AIS (Neal 2001; for decoder-based models, Wu et al. 2017): for ONE example x,
chains start at z ~ p(z) and move through the distributions
f_t(z) = p(z) p(x | z)^beta_t, 0 = beta_0 < beta_1 < ... < beta_T = 1, by HMC
transitions (BlackJAX's kernel) that each leave their f_t invariant. A chain's
log-weight sum_t (beta_t - beta_{t-1}) log p(x | z_{t-1}) has E[w] = p(x), so
E[log w] <= log p(x): logmeanexp over C chains is a stochastic lower bound that
tightens with T and C (as the IWAE bound does with k).

BDMC (Grosse et al. 2015, "Sandwiching the marginal likelihood using
bidirectional Monte Carlo"): on data simulated from the model, (z, x) ~ p(z) p(x | z),
z is an exact sample of p(z | x). AIS run in reverse from it (beta from 1 to 0)
has E[w_rev] = 1 / p(x), so -logmeanexp(log w_rev) is a stochastic upper bound.
The true log p(x) lies between the two; their gap bounds the forward estimate's
error on such data and says whether the schedule is long enough.

The inference gaps (Cremer, Li & Duvenaud 2018, "Inference Suboptimality in Variational
Autoencoders"): `optimal_gaussian` fits q*(u | x), the diagonal Gaussian of highest ELBO for
ONE example, by gradient ascent on its mean and log-variance. Then, with log p(x) by AIS,
  approximation gap  log p(x) - ELBO(q*)          what a Gaussian cannot express,
  amortization gap   ELBO(q*) - ELBO(q_encoder)    what the shared encoder gives away.

Every tool sees a model through `joint_model`: one latent vector u with a prior p(u) and a
likelihood p(x | u). For a one-stochastic-layer model u = z and p(u) = N(0, I) (`models.VAE`,
`sequence.SequenceVAE`); for a `models.TwoLayerVAE` u = (h1, z), h1's H1 entries first, with
p(u) = p(z) p(h1 | z) and p(x | u) = p(x | h1).

Shapes: D data, U the joint latent, C chains, T annealing steps, N examples, S draws. Nats
per example.
"""

import dataclasses
import functools
from typing import Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxvae import distributions
from jaxvae import models
from jaxvae import objectives


def _check_positive(settings, integers=(), numbers=()) -> None:
  for name in integers:
    value = getattr(settings, name)
    if not isinstance(value, int) or value < 1:
      raise ValueError(f"{name} must be a positive integer, got {value!r}")
  for name in numbers:
    value = getattr(settings, name)
    if not (np.isfinite(value) and value > 0):
      raise ValueError(f"{name} must be a finite positive number, got {value}")


@dataclasses.dataclass(frozen=True)
class AISSettings:
  """The schedule and the HMC transitions of one AIS run."""

  num_steps: int = 1000  # annealing steps T (a sigmoid schedule of T + 1 temperatures)
  num_chains: int = 16  # independent chains C per example
  num_leapfrog: int = 10  # leapfrog steps per HMC transition
  step_size: float = 0.05  # initial leapfrog step size, adapted per example
  target_acceptance: float = 0.65  # the step size grows (x1.02) above it, shrinks (x0.98) below

  def validate(self) -> "AISSettings":
    _check_positive(self, integers=("num_steps", "num_chains", "num_leapfrog"), numbers=("step_size",))
    if not 0 < self.target_acceptance < 1:
      raise ValueError(f"target_acceptance must lie in (0, 1), got {self.target_acceptance}")
    return self


def sigmoid_schedule(num_steps: int, radius: float = 4.0) -> jax.Array:
  """[T + 1] inverse temperatures from 0 to 1, dense at both ends (Grosse et al. 2015): the
  logistic function on [-radius, radius], rescaled to start at exactly 0 and end at exactly 1."""
  if num_steps < 1:
    raise ValueError(f"the schedule needs at least one step, got {num_steps}")
  s = jax.nn.sigmoid(jnp.linspace(-radius, radius, num_steps + 1))
  return ((s - s[0]) / (s[-1] - s[0])).at[0].set(0.0).at[-1].set(1.0)


class AISResult(NamedTuple):
  log_weights: jax.Array  # [C] (or [N, C]) per-chain log-weights, nats
  acceptance: jax.Array  # scalar (or [N]): mean HMC acceptance rate over chains and steps
  final_step_size: jax.Array  # scalar (or [N])


class JointModel(NamedTuple):
  """A trained model's generative side over one latent vector u (see the module docstring)."""

  dim: int  # U
  log_prior: Callable[[jax.Array], jax.Array]  # u_U -> log p(u)
  sample_prior: Callable[[jax.Array, int], jax.Array]  # (key, n) -> u [n, U], draws of p(u)
  log_likelihood: Callable[[jax.Array, jax.Array], jax.Array]  # (x_D, u_U) -> log p(x | u)
  logits: Callable[[jax.Array], jax.Array]  # u_U -> the Bernoulli logits of x's pixels
  encoder_gaussian: Callable[[jax.Array], tuple[jax.Array, jax.Array]]  # x_D -> (mean_U, logvar_U) of the
  #   encoder: q(z | x) itself, or for two layers q(h1 | x) beside q(z | h1 = E[h1 | x]) (q*'s start)


def check_model(model: nn.Module) -> None:
  if not getattr(model, "latent_dim", None):
    raise ValueError(f"AIS needs a latent-variable model with a prior; {type(model).__name__} has none")


def joint_model(model: nn.Module, params) -> JointModel:
  """The `JointModel` of a trained `models.VAE`, `sequence.SequenceVAE` or `models.TwoLayerVAE`."""
  check_model(model)
  apply = lambda method, *args: model.apply(params, *args, method=getattr(model, method))
  if not isinstance(model, models.TwoLayerVAE):
    return JointModel(
        model.latent_dim, distributions.standard_normal_log_density,
        lambda key, n: jax.random.normal(key, (n, model.latent_dim)),
        lambda x_D, z_L: objectives.log_likelihood(model, params, x_D, z_L),
        lambda z_L: apply("decode", z_L), lambda x_D: apply("encode", x_D))
  num_h1 = model.h1_dim

  def log_prior(u_U):
    h1_H, z_L = u_U[:num_h1], u_U[num_h1:]
    return (distributions.standard_normal_log_density(z_L)
            + distributions.gaussian_log_likelihood(h1_H, *apply("decode_top", z_L)))

  def sample_prior(key, n):
    z_key, h1_key = jax.random.split(key)
    z_NxL = jax.random.normal(z_key, (n, model.latent_dim))
    return jnp.concatenate([distributions.reparameterize(h1_key, *apply("decode_top", z_NxL)), z_NxL], axis=-1)

  def encoder_gaussian(x_D):
    mean_H, logvar_H = apply("encode_h1", x_D)
    mean_L, logvar_L = apply("encode_top", mean_H)
    return jnp.concatenate([mean_H, mean_L]), jnp.concatenate([logvar_H, logvar_L])

  logits = lambda u_U: apply("decode_h1", u_U[:num_h1])
  return JointModel(num_h1 + model.latent_dim, log_prior, sample_prior,
                    lambda x_D, u_U: distributions.bernoulli_log_likelihood(x_D, logits(u_U)), logits,
                    encoder_gaussian)


def anneal(log_prior, log_likelihood, key: jax.Array, z_CxL: jax.Array, betas: jax.Array,
           settings: AISSettings) -> AISResult:
  """Runs C chains from z_CxL through f_beta(z) = p(z) exp(beta log_likelihood(z)) (log p(z) =
  `log_prior(z)`) for the inverse temperatures `betas` [S + 1] in order, ONE example.

  Before the move to betas[s], every chain adds log f_{betas[s]}(z) - log f_{betas[s-1]}(z) =
  (betas[s] - betas[s-1]) log_likelihood(z) to its log-weight, then takes one HMC transition
  that leaves f_{betas[s]} invariant (the last chain states are never weighed again).
  Increasing betas from 0 with z ~ p(z) is forward AIS (E w = p(x)); decreasing betas from 1
  with z ~ p(z | x) is the reverse chain of BDMC (E w = 1 / p(x)). The step size, shared by
  the chains, adapts towards `settings.target_acceptance` between steps (Wu et al.'s scheme).
  """
  # Imported here: importing blackjax starts JAX's backends, which must wait for
  # jax.distributed.initialize in a multi-process run of any entry point.
  import blackjax  # pylint: disable=g-import-not-at-top

  kernel = blackjax.mcmc.hmc.build_kernel()
  num_chains, latent_dim = z_CxL.shape
  likelihood_value_and_grad = jax.vmap(jax.value_and_grad(log_likelihood))
  prior_value_and_grad = jax.vmap(jax.value_and_grad(log_prior))

  def transition(carry, inputs):
    z_CxL, log_w_C, step_size = carry
    beta_prev, beta, step_key = inputs
    log_lik_C, grad_lik_CxL = likelihood_value_and_grad(z_CxL)
    log_prior_C, grad_prior_CxL = prior_value_and_grad(z_CxL)
    log_w_C = log_w_C + (beta - beta_prev) * log_lik_C
    # The state at the new temperature, from the values just computed (no second evaluation).
    state = blackjax.mcmc.hmc.HMCState(z_CxL, log_prior_C + beta * log_lik_C, grad_prior_CxL + beta * grad_lik_CxL)
    log_f = lambda z: log_prior(z) + beta * log_likelihood(z)
    new, info = jax.vmap(kernel, in_axes=(0, 0, None, None, None, None))(
        jax.random.split(step_key, num_chains), state, log_f, step_size, jnp.ones(latent_dim), settings.num_leapfrog)
    rate = jnp.mean(info.acceptance_rate)
    step_size = jnp.where(rate > settings.target_acceptance, 1.02, 0.98) * step_size
    return (new.position, log_w_C, step_size), rate

  num_moves = betas.shape[0] - 1
  init = (z_CxL, jnp.zeros(num_chains), jnp.float32(settings.step_size))
  (_, log_w_C, step_size), rates = jax.lax.scan(
      transition, init, (betas[:-1], betas[1:], jax.random.split(key, num_moves)))
  return AISResult(log_w_C, jnp.mean(rates), step_size)


def ais(model: nn.Module, params, key: jax.Array, x_D: jax.Array, settings: AISSettings = AISSettings()) -> AISResult:
  """Forward AIS from the prior for ONE example: `AISResult` with [C] log-weights whose
  logmeanexp estimates log p(x) from below (see the module docstring)."""
  joint = joint_model(model, params)
  settings.validate()
  init_key, chain_key = jax.random.split(key)
  u_CxU = joint.sample_prior(init_key, settings.num_chains)
  return anneal(joint.log_prior, functools.partial(joint.log_likelihood, x_D), chain_key, u_CxU,
                sigmoid_schedule(settings.num_steps), settings)


def reverse_ais(model: nn.Module, params, key: jax.Array, x_D: jax.Array, u_U: jax.Array,
                settings: AISSettings = AISSettings()) -> AISResult:
  """The reverse chain of BDMC for ONE example x_D with an exact posterior sample u_U (from
  `simulate`): [C] log-weights whose -logmeanexp bounds log p(x) from above."""
  joint = joint_model(model, params)
  settings.validate()
  u_CxU = jnp.broadcast_to(u_U, (settings.num_chains, u_U.shape[-1]))
  return anneal(joint.log_prior, functools.partial(joint.log_likelihood, x_D), key, u_CxU,
                sigmoid_schedule(settings.num_steps)[::-1], settings)


def log_mean_exp(log_w: jax.Array, axis: int = -1) -> jax.Array:
  """log (1/C) sum_c exp(log_w_c) over `axis`: the AIS estimate from C chains' log-weights."""
  return jax.nn.logsumexp(log_w, axis=axis) - jnp.log(log_w.shape[axis])


def log_mean_exp_stderr(log_w: jax.Array, axis: int = -1) -> jax.Array:
  """The Monte-Carlo standard error of `log_mean_exp` over C chains, by the delta method:
  std(w) / (sqrt(C) mean(w)), computed on w / max(w). Nats."""
  w = jnp.exp(log_w - jnp.max(log_w, axis=axis, keepdims=True))
  return jnp.std(w, axis=axis, ddof=1) / (jnp.sqrt(log_w.shape[axis]) * jnp.mean(w, axis=axis))


def simulate(model: nn.Module, params, key: jax.Array, num_examples: int) -> tuple[jax.Array, jax.Array]:
  """(x [N, D], u [N, U]) drawn from the model's joint p(u) p(x | u): u ~ p(u), binary pixels
  x ~ Bernoulli(sigmoid(logits(u))). Each u is an exact sample of p(u | x) for its x."""
  joint = joint_model(model, params)
  u_key, x_key = jax.random.split(key)
  u_NxU = joint.sample_prior(u_key, num_examples)
  logits_NxD = jax.vmap(joint.logits)(u_NxU)
  return jax.random.bernoulli(x_key, jax.nn.sigmoid(logits_NxD)).astype(jnp.float32), u_NxU


@functools.partial(jax.jit, static_argnames=("model", "settings"))
def batch_ais(model: nn.Module, params, keys_N: jax.Array, x_NxD: jax.Array, settings: AISSettings) -> AISResult:
  """`ais` vmapped over N examples, each with its own key of `keys_N` [N]: [N, C] log-weights."""
  return jax.vmap(lambda k, x: ais(model, params, k, x, settings))(keys_N, x_NxD)


@functools.partial(jax.jit, static_argnames=("model", "settings"))
def batch_bdmc(model: nn.Module, params, keys_N: jax.Array, x_NxD: jax.Array, u_NxU: jax.Array,
               settings: AISSettings) -> tuple[AISResult, AISResult]:
  """Forward AIS and the reverse chain on simulated (x, z) pairs, a key per pair: (forward,
  reverse) results, each with [N, C] log-weights; per example, log_mean_exp(forward) <= log p(x)
  <= -log_mean_exp(reverse) in expectation."""

  def one(key, x_D, u_U):
    forward_key, reverse_key = jax.random.split(key)
    return (ais(model, params, forward_key, x_D, settings),
            reverse_ais(model, params, reverse_key, x_D, u_U, settings))

  return jax.vmap(one)(keys_N, x_NxD, u_NxU)


@dataclasses.dataclass(frozen=True)
class GapSettings:
  """How q* is fitted and how the ELBOs of the gaps are estimated."""

  num_steps: int = 1000  # Adam steps on q*'s mean and log-variance
  num_samples: int = 16  # draws of u per step (the reparameterized ELBO's gradient)
  learning_rate: float = 0.05  # Adam's, decayed to 0 by a cosine over the steps
  eval_samples: int = 1000  # draws per image for ELBO(q*) and ELBO(q_encoder)

  def validate(self) -> "GapSettings":
    _check_positive(self, integers=("num_steps", "num_samples", "eval_samples"), numbers=("learning_rate",))
    return self


def gaussian_elbo_draws(joint: JointModel, key: jax.Array, x_D: jax.Array, mean_U: jax.Array, logvar_U: jax.Array,
                        num_samples: int) -> jax.Array:
  """[S] draws whose mean is the ELBO of q = N(mean_U, exp(logvar_U)) for ONE example:
  log p(x | u) + log p(u) at u ~ q, plus q's entropy (analytic)."""
  shape = (num_samples, joint.dim)
  u_SxU = distributions.reparameterize(key, jnp.broadcast_to(mean_U, shape), jnp.broadcast_to(logvar_U, shape))
  log_joint_S = jax.vmap(lambda u: joint.log_likelihood(x_D, u) + joint.log_prior(u))(u_SxU)
  entropy = 0.5 * jnp.sum(logvar_U) + 0.5 * joint.dim * jnp.log(2 * jnp.pi * jnp.e)
  return log_joint_S + entropy


def optimal_gaussian(joint: JointModel, key: jax.Array, x_D: jax.Array,
                     settings: GapSettings = GapSettings()) -> tuple[tuple[jax.Array, jax.Array], jax.Array]:
  """q*(u | x) for ONE example: the diagonal Gaussian of highest ELBO, by Adam on its mean and
  log-variance from the encoder's (`joint.encoder_gaussian`), `settings.num_samples` draws a step.
  Returns ((mean_U, logvar_U), [num_steps] the ELBO estimate of each step)."""
  optimizer = optax.adam(optax.cosine_decay_schedule(settings.learning_rate, settings.num_steps))
  loss = lambda q, k: -jnp.mean(gaussian_elbo_draws(joint, k, x_D, *q, settings.num_samples))

  def step(carry, step_key):
    q, opt_state = carry
    value, grads = jax.value_and_grad(loss)(q, step_key)
    updates, opt_state = optimizer.update(grads, opt_state, q)
    return (optax.apply_updates(q, updates), opt_state), -value

  start = joint.encoder_gaussian(x_D)
  (q, _), trace = jax.lax.scan(step, (start, optimizer.init(start)), jax.random.split(key, settings.num_steps))
  return q, trace


class GapTerms(NamedTuple):
  """Per example [N], nats: the ELBOs whose differences with log p(x) are the inference gaps."""

  elbo_encoder: jax.Array  # ELBO(q_encoder), the model's own ELBO (`objectives.elbo`) averaged over draws
  elbo_optimal: jax.Array  # ELBO(q*), averaged over draws
  mc_stderr_encoder: jax.Array  # the Monte-Carlo error of each of the two
  mc_stderr_optimal: jax.Array


@functools.partial(jax.jit, static_argnames=("model", "settings"))
def batch_gap_terms(model: nn.Module, params, keys_N: jax.Array, x_NxD: jax.Array, settings: GapSettings) -> GapTerms:
  """q* fitted (`optimal_gaussian`) and both ELBOs estimated for N examples, a key per example
  (so the result does not depend on how examples are batched)."""
  joint = joint_model(model, params)

  def one(key, x_D):
    fit_key, optimal_key, encoder_key = jax.random.split(key, 3)
    q, _ = optimal_gaussian(joint, fit_key, x_D, settings)
    optimal_S = gaussian_elbo_draws(joint, optimal_key, x_D, *q, settings.eval_samples)
    encoder_S = jax.vmap(lambda k: objectives.elbo(model, params, k, x_D).elbo)(
        jax.random.split(encoder_key, settings.eval_samples))
    stderr = lambda v: jnp.std(v, ddof=1) / jnp.sqrt(v.shape[0])
    return GapTerms(jnp.mean(encoder_S), jnp.mean(optimal_S), stderr(encoder_S), stderr(optimal_S))

  return jax.vmap(one)(keys_N, x_NxD)


class KLDecomposition(NamedTuple):
  """ELBO surgery of N examples' encodings, nats per example (see `kl_decomposition`)."""

  average_kl: float  # E_x KL(q(z | x) || p(z)), the ELBO's KL term, analytic
  mutual_information: float  # I_q(x; z) = average_kl - marginal_kl
  marginal_kl: float  # KL(q(z) || p(z)), q(z) the aggregate posterior (1/N) sum_n q(z | x_n)
  marginal_kl_stderr: float  # its Monte-Carlo error (over the N draws z_m)
  kl_per_dimension: np.ndarray  # [L] E_x KL(q(z_l | x) || N(0, 1))


def kl_decomposition(key: jax.Array, mean_NxL: jax.Array, logvar_NxL: jax.Array,
                     block_size: int = 256) -> KLDecomposition:
  """The KL term split as E_x KL(q(z|x) || p(z)) = I_q(x; z) + KL(q(z) || p(z)) (Hoffman &
  Johnson 2016, "ELBO surgery"), with q(x) the empirical distribution of the N examples whose
  posteriors N(mean_n, exp(logvar_n)) are given.

  Estimator: one draw z_m ~ q(z | x_m) per example; log q(z_m) = logsumexp_n log q(z_m | x_n)
  - log N, the exact aggregate posterior of the N examples (O(N^2 L), in blocks of
  `block_size` draws); KL(q(z) || p(z)) = mean_m [log q(z_m) - log p(z_m)]. The average KL is
  analytic, so the mutual information inherits the marginal KL's Monte-Carlo error. I_q <= log N.
  """
  num, latent_dim = mean_NxL.shape
  z_NxL = distributions.reparameterize(key, mean_NxL, logvar_NxL)

  @jax.jit
  def log_aggregate(z_BxL):  # log q(z_b) under the mixture of all N posteriors, [B]
    log_q_BxN = distributions.gaussian_log_likelihood(z_BxL[:, None], mean_NxL[None], logvar_NxL[None])
    return jax.nn.logsumexp(log_q_BxN, axis=1) - jnp.log(num)

  log_qz = np.concatenate([np.asarray(log_aggregate(z_NxL[i:i + block_size])) for i in range(0, num, block_size)])
  terms = log_qz - np.asarray(distributions.standard_normal_log_density(z_NxL))
  kl_dims = np.asarray(jnp.mean(distributions.kl_per_dimension(mean_NxL, logvar_NxL), axis=0), np.float64)
  marginal = float(np.mean(terms, dtype=np.float64))
  stderr = float(np.std(terms, ddof=1) / np.sqrt(num)) if num > 1 else float("nan")
  return KLDecomposition(float(kl_dims.sum()), float(kl_dims.sum()) - marginal, marginal, stderr, kl_dims)
