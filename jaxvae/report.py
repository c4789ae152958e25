"""How good are a trained VAE's bound and encoder? The inference report of one run.

`run_report(config, outdir)` reads a trained one-stochastic-layer VAE (`experiments.mnist`,
binarized data) and writes into `outdir` (a report directory: new, empty or an earlier
report's, whose outputs it replaces) results.json and results.md:

  likelihood  the test NLL of the same test images by the IWAE bound (k samples from the
              encoder) and by AIS from the prior (`inference.ais`), and their paired difference;
  bdmc        on images simulated from the model, forward AIS (lower bound) and the reverse
              chain from the exact posterior sample (upper bound): the gap bounds the AIS
              estimate's error on such data;
  kl          where the KL term goes, over the whole test set: E_x KL(q(z|x) || p(z)) =
              I_q(x; z) + KL(q(z) || p(z)) (`inference.kl_decomposition`), active units, and
              the KL of each latent dimension.

Every estimate carries its error: ± the standard error over images, and for AIS the mean
Monte-Carlo error of one image's estimate over its chains (`inference.log_mean_exp_stderr`).
"""

import dataclasses
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxvae import checkpoints
from jaxvae import config as config_lib
from jaxvae import data as data_lib
from jaxvae import evaluate
from jaxvae import inference
from jaxvae import workdir as workdir_lib
from jaxvae.errors import ConfigError

KIND = "inference report"
OUTPUTS = ("results.json", "results.md")


@dataclasses.dataclass(frozen=True)
class ReportConfig:
  workdir: str = "runs/mnist"  # a trained one-stochastic-layer VAE (experiments.mnist)
  num_images: int = 500  # test images (the first ones) for AIS and the IWAE bound
  num_simulated: int = 100  # images simulated from the model for BDMC
  ais_steps: int = 1000  # annealing steps T
  ais_chains: int = 16  # chains per image
  leapfrog: int = 10  # leapfrog steps per HMC transition
  iwae_samples: int = 5000  # k of the IWAE bound
  batch_size: int = 50  # images per compiled AIS call
  seed: int = 0  # of every draw of the report
  data_source: str = "auto"
  data_path: str | None = None

  def validate(self) -> "ReportConfig":
    config_lib.check_settings(self, positive=("num_images", "num_simulated", "ais_steps", "ais_chains", "leapfrog",
                                              "iwae_samples", "batch_size"), nonnegative=("seed",),
                              limits={"num_images": 10**5, "num_simulated": 10**5, "ais_steps": 10**6,
                                      "ais_chains": 10**4, "leapfrog": 1000, "iwae_samples": 10**6,
                                      "batch_size": 10**4})
    return self

  @property
  def ais_settings(self) -> inference.AISSettings:
    return inference.AISSettings(num_steps=self.ais_steps, num_chains=self.ais_chains, num_leapfrog=self.leapfrog)


def load_vae(workdir):
  """(model, params, run config) of a single one-stochastic-layer VAE trained on binary pixels."""
  model, params, run_config = checkpoints.load_model(workdir)
  if (not isinstance(run_config, config_lib.Config) or run_config.model != "vae" or run_config.num_replicas != 1
      or run_config.stochastic_layers != 1):
    raise ConfigError(f"--workdir={workdir} does not hold a single one-stochastic-layer VAE run "
                      "(experiments.mnist with --model=vae)")
  if run_config.binarization == "none":
    raise ConfigError(f"--workdir={workdir} was trained on grayscale targets (--binarization=none): its "
                      "Bernoulli term is not a density of them, so it has no log-likelihood to estimate")
  return model, params, run_config


def _in_batches(fn, batch_size: int, *arrays):
  """fn over consecutive slices of `arrays` (a leading axis N), results concatenated: with a key
  per example among `arrays`, the result does not depend on `batch_size`."""
  n = arrays[0].shape[0]
  parts = [fn(*(a[i:i + batch_size] for a in arrays)) for i in range(0, n, batch_size)]
  return jax.tree.map(lambda *p: np.concatenate([np.asarray(q) for q in p]), *parts)


def _summary(values) -> dict:
  """Mean and standard error over examples."""
  values = np.asarray(values, np.float64)
  return {"mean": float(values.mean()), "stderr": float(values.std(ddof=1) / np.sqrt(len(values)))
          if len(values) > 1 else float("nan")}


def run_report(config: ReportConfig, outdir) -> dict:
  """The report of the module docstring, written into `outdir`; returns its results."""
  config.validate()
  with workdir_lib.Workdir(outdir, KIND, OUTPUTS, flag="--outdir") as wd:
    wd.check()
    return _report(config, wd)


def _report(config: ReportConfig, wd: workdir_lib.Workdir) -> dict:
  model, params, run_config = load_vae(config.workdir)
  mnist = data_lib.load_mnist(config.data_source, path=config.data_path)
  if config.num_images > len(mnist.test.labels):
    raise ConfigError(f"--num_images={config.num_images} exceeds the {len(mnist.test.labels)} test images")
  wd.open(overwrite=True)  # a report replaces its own earlier outputs
  # The test set binarized once, as the run evaluated it: all of it for the KL split, the first N for AIS.
  all_x = jnp.asarray(data_lib.test_targets(mnist.test.images, run_config.binarization))
  test_x = all_x[:config.num_images]
  iwae_key, ais_key, sim_key, bdmc_key, kl_key = jax.random.split(jax.random.key(config.seed), 5)
  settings = config.ais_settings
  results = {"workdir": str(config.workdir), "settings": dataclasses.asdict(config)}

  start = time.perf_counter()
  iwae_bounds = evaluate.iwae_bounds(model, params, iwae_key, test_x, config.iwae_samples,
                                     min(config.batch_size, 100), min(500, config.iwae_samples))
  iwae_seconds = time.perf_counter() - start
  start = time.perf_counter()
  ais_log_w = _in_batches(lambda k, x: inference.batch_ais(model, params, k, x, settings).log_weights,
                          config.batch_size, jax.random.split(ais_key, config.num_images), test_x)
  ais_seconds = time.perf_counter() - start
  ais_estimates = np.asarray(inference.log_mean_exp(jnp.asarray(ais_log_w)))
  ais_mc = np.asarray(inference.log_mean_exp_stderr(jnp.asarray(ais_log_w)))
  results["likelihood"] = {
      "num_images": config.num_images,
      "iwae": {**_summary(-iwae_bounds), "samples": config.iwae_samples, "seconds": iwae_seconds},
      "ais": {**_summary(-ais_estimates), "mc_stderr_per_image": float(ais_mc.mean()),
              "steps": config.ais_steps, "chains": config.ais_chains, "leapfrog": config.leapfrog,
              "seconds": ais_seconds},
      "ais_minus_iwae": _summary(-ais_estimates + iwae_bounds),
  }

  sim_x, sim_z = inference.simulate(model, params, sim_key, config.num_simulated)
  start = time.perf_counter()
  forward, reverse = _in_batches(
      lambda k, x, z: tuple(r.log_weights for r in inference.batch_bdmc(model, params, k, x, z, settings)),
      config.batch_size, jax.random.split(bdmc_key, config.num_simulated), sim_x, sim_z)
  lower = np.asarray(inference.log_mean_exp(jnp.asarray(forward)))  # log p(x) from below
  upper = -np.asarray(inference.log_mean_exp(jnp.asarray(reverse)))  # and from above
  results["bdmc"] = {"num_simulated": config.num_simulated, "forward_nll": _summary(-lower),
                     "reverse_nll": _summary(-upper), "gap": _summary(upper - lower),
                     "seconds": time.perf_counter() - start}

  start = time.perf_counter()
  split = inference.kl_decomposition(kl_key, *evaluate.posteriors(model, params, all_x))
  results["kl"] = {"num_images": len(all_x), "average_kl": split.average_kl,
                   "mutual_information": {"mean": split.mutual_information, "stderr": split.marginal_kl_stderr},
                   "marginal_kl": {"mean": split.marginal_kl, "stderr": split.marginal_kl_stderr},
                   "log_num_images": float(np.log(len(all_x))),
                   "active_units": evaluate.active_units(model, params, all_x),
                   "kl_per_dimension": [float(v) for v in split.kl_per_dimension],
                   "seconds": time.perf_counter() - start}
  (wd.path / "results.json").write_text(json.dumps(results, indent=2) + "\n")
  (wd.path / "results.md").write_text(markdown(results) + "\n")
  return results


def _pm(summary: dict) -> str:
  return f"{summary['mean']:.2f} ± {summary['stderr']:.2f}"


def markdown(results: dict) -> str:
  lik, bdmc, kl = results["likelihood"], results["bdmc"], results["kl"]
  dims = sorted(kl["kl_per_dimension"], reverse=True)
  ais, iwae = lik["ais"], lik["iwae"]
  return "\n".join([
      f"Test NLL of the first {lik['num_images']} test images, nats (± standard error over images):",
      "",
      "| estimator | NLL | Monte-Carlo error of one image's estimate | time |",
      "|---|---|---|---|",
      f"| IWAE bound, k = {iwae['samples']:,} | {_pm(iwae)} | – | {iwae['seconds']:.0f} s |",
      f"| AIS from the prior, {ais['steps']:,} steps × {ais['chains']} chains, HMC with {ais['leapfrog']} leapfrog "
      f"steps | {_pm(ais)} | {ais['mc_stderr_per_image']:.3f} | {ais['seconds']:.0f} s |",
      f"| AIS − IWAE, paired | {_pm(lik['ais_minus_iwae'])} | | |",
      "",
      f"BDMC on {bdmc['num_simulated']} images simulated from the model, nats:",
      "",
      "| NLL by forward AIS (from above) | NLL by reverse AIS (from below) | gap | time |",
      "|---|---|---|---|",
      f"| {_pm(bdmc['forward_nll'])} | {_pm(bdmc['reverse_nll'])} | {_pm(bdmc['gap'])} | {bdmc['seconds']:.0f} s |",
      "",
      f"Where the KL goes, all {kl['num_images']:,} test images, nats (± Monte-Carlo error):",
      "",
      "| E_x KL(q(z\\|x) ‖ p(z)) | I_q(x; z) | KL(q(z) ‖ p(z)) | log N (I_q's ceiling) | active units | time |",
      "|---|---|---|---|---|---|",
      f"| {kl['average_kl']:.2f} | {_pm(kl['mutual_information'])} | {_pm(kl['marginal_kl'])} | "
      f"{kl['log_num_images']:.2f} | {kl['active_units']}/{len(dims)} | {kl['seconds']:.0f} s |",
      "",
      "KL per latent dimension, largest first: " + ", ".join(f"{v:.2f}" for v in dims),
  ])
