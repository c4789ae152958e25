"""How good are a trained VAE's bound and encoder? The inference report of one run.

`run_report(config, outdir)` reads a trained VAE (`experiments.mnist`, one or two stochastic
layers, binarized data) and writes into `outdir` (a report directory: new, empty or an earlier
report's, whose outputs it replaces once the new report is complete) results.json, results.md
and results.png:

  likelihood  the test NLL of the same test images by the IWAE bound (k samples from the
              encoder) and by AIS from the prior (`inference.ais`), and their paired difference;
              the test -ELBO of the same images, averaged over many draws of z;
  gaps        on the same images, the approximation gap log p(x) - ELBO(q*) and the
              amortization gap ELBO(q*) - ELBO(q_encoder) (`inference.batch_gap_terms`, log p(x)
              by AIS), paired over images;
  bdmc        on images simulated from the model, forward AIS (lower bound) and the reverse
              chain from the exact posterior sample (upper bound): the gap bounds the AIS
              estimate's error on such data;
  superres    super-resolution from the ink count of every 2x2 and 4x4 block (`superres.upscale`)
              against nearest, bilinear and the mean image given the counts: nats per pixel and
              accuracy of the true test images (one-stochastic-layer models); superres.png;
  kl          where the KL term goes, over the whole test set: E_x KL(q(z|x) || p(z)) =
              I_q(x; z) + KL(q(z) || p(z)) (`inference.kl_decomposition`), active units, and
              the KL of each latent dimension (one-stochastic-layer models; for two layers
              the active units of z and h1 only).

Every estimate carries its error: ± the standard error over images, and the mean Monte-Carlo
error of one image's estimate (over AIS's chains, `inference.log_mean_exp_stderr`, or over the
ELBO's draws). results.png: the per-image gaps and the KL of each latent dimension.

Each section is kept as it finishes (`workdir.Staged`, with the settings and the model's
fingerprint): the same command after an interruption resumes from the last finished section,
and every phase prints its progress at least every 30 s. results.json records that identity;
a complete report of the same settings and model is not computed again.
"""

import contextlib
import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxvae import checkpoints
from jaxvae import config as config_lib
from jaxvae import data as data_lib
from jaxvae import evaluate
from jaxvae import inference
from jaxvae import plots
from jaxvae import progress as progress_lib
from jaxvae import superres
from jaxvae import workdir as workdir_lib
from jaxvae.errors import ConfigError

KIND = "inference report"
OUTPUTS = ("results.json", "results.md", "results.png", "superres.png")


@dataclasses.dataclass(frozen=True)
class ReportConfig:
  workdir: str = "runs/mnist"  # a trained VAE (experiments.mnist, one or two stochastic layers)
  num_images: int = 500  # test images (the first ones) for AIS, the IWAE bound and the gaps
  num_simulated: int = 100  # images simulated from the model for BDMC
  ais_steps: int = 1000  # annealing steps T
  ais_chains: int = 16  # chains per image
  leapfrog: int = 10  # leapfrog steps per HMC transition
  iwae_samples: int = 5000  # k of the IWAE bound
  gap_steps: int = 1000  # Adam steps fitting q* per image
  elbo_samples: int = 1000  # draws of z per image for ELBO(q*) and ELBO(q_encoder)
  superres_images: int = 500  # test images (the first ones) to super-resolve at each factor; 0: none
  batch_size: int = 50  # images per compiled AIS call
  seed: int = 0  # of every draw of the report
  data_source: str = "auto"
  data_path: str | None = None

  def validate(self) -> "ReportConfig":
    config_lib.check_settings(self, positive=("num_images", "num_simulated", "ais_steps", "ais_chains", "leapfrog",
                                              "iwae_samples", "gap_steps", "elbo_samples", "batch_size"),
                              nonnegative=("seed", "superres_images"),
                              limits={"num_images": 10**5, "num_simulated": 10**5, "ais_steps": 10**6,
                                      "ais_chains": 10**4, "leapfrog": 1000, "iwae_samples": 10**6,
                                      "gap_steps": 10**6, "elbo_samples": 10**6, "superres_images": 10**5,
                                      "batch_size": 10**4})
    for name in ("num_images", "num_simulated", "ais_chains", "elbo_samples"):  # each estimate states its error
      if getattr(self, name) < 2:
        raise ConfigError(f"{name} must be at least 2 for a standard error, got {getattr(self, name)}")
    if self.superres_images == 1:
      raise ConfigError("superres_images must be 0 (none) or at least 2 for a standard error, got 1")
    return self

  @property
  def ais_settings(self) -> inference.AISSettings:
    return inference.AISSettings(num_steps=self.ais_steps, num_chains=self.ais_chains, num_leapfrog=self.leapfrog)

  @property
  def gap_settings(self) -> inference.GapSettings:
    return inference.GapSettings(num_steps=self.gap_steps, eval_samples=self.elbo_samples)


def load_vae(workdir):
  """(model, params, run config) of a single VAE (one or two stochastic layers) trained on binary pixels."""
  model, params, run_config = checkpoints.load_model(workdir)
  if not isinstance(run_config, config_lib.Config) or run_config.model != "vae" or run_config.num_replicas != 1:
    raise ConfigError(f"--workdir={workdir} does not hold a single VAE run (experiments.mnist with --model=vae)")
  if run_config.binarization == "none":
    raise ConfigError(f"--workdir={workdir} was trained on grayscale targets (--binarization=none): its "
                      "Bernoulli term is not a density of them, so it has no log-likelihood to estimate")
  return model, params, run_config


def _in_batches(fn, batch_size: int, *arrays, label: str | None = None):
  """fn over consecutive slices of `arrays` (a leading axis N), results concatenated: with a key
  per example among `arrays`, the result does not depend on `batch_size`. `label`: progress lines
  (`progress.Progress`) under that name."""
  n = arrays[0].shape[0]
  parts = []
  with progress_lib.Progress(label, n) if label else contextlib.nullcontext() as shown:
    for i in range(0, n, batch_size):
      parts.append(jax.tree.map(np.asarray, fn(*(a[i:i + batch_size] for a in arrays))))
      if shown is not None:
        shown.advance(min(batch_size, n - i))
  return jax.tree.map(lambda *p: np.concatenate(p), *parts)


def _summary(values) -> dict:
  """Mean and standard error over examples."""
  values = np.asarray(values, np.float64)
  return {"mean": float(values.mean()), "stderr": float(values.std(ddof=1) / np.sqrt(len(values)))
          if len(values) > 1 else float("nan")}


def run_report(config: ReportConfig, outdir) -> dict:
  """The report of the module docstring, written into `outdir`; returns its results.

  Each finished section is kept (`workdir.Staged`): the same command after an interruption
  resumes from the last finished one, and the previous complete report stays in place until
  the new one is complete. A report of the same settings and model that is complete is returned
  as it is."""
  config.validate()
  with workdir_lib.Workdir(outdir, KIND, OUTPUTS, flag="--outdir") as wd:
    wd.check()
    return _report(config, wd)


def _report(config: ReportConfig, wd: workdir_lib.Workdir) -> dict:
  model, params, run_config = load_vae(config.workdir)
  mnist = data_lib.load_mnist(config.data_source, path=config.data_path)
  for flag in ("num_images", "superres_images"):
    if getattr(config, flag) > len(mnist.test.labels):
      raise ConfigError(f"--{flag}={getattr(config, flag)} exceeds the {len(mnist.test.labels)} test images")
  identity = {"settings": dataclasses.asdict(config), "model": checkpoints.fingerprint(params)}
  previous, staged = workdir_lib.begin_result(wd, identity, "report")
  if previous is not None:
    return previous
  # The test set binarized once, as the run evaluated it: all of it for the KL split, the first N for AIS.
  all_x = jnp.asarray(data_lib.test_targets(mnist.test.images, run_config.binarization))
  test_x = all_x[:config.num_images]
  iwae_key, ais_key, sim_key, bdmc_key, kl_key, gap_key, sr_key = jax.random.split(jax.random.key(config.seed), 7)
  settings = config.ais_settings

  if "likelihood" not in staged:
    start = time.perf_counter()
    iwae_bounds = evaluate.iwae_bounds(model, params, iwae_key, test_x, config.iwae_samples,
                                       min(config.batch_size, 100), min(500, config.iwae_samples))
    iwae_seconds = time.perf_counter() - start
    start = time.perf_counter()
    ais_log_w = _in_batches(lambda k, x: inference.batch_ais(model, params, k, x, settings).log_weights,
                            config.batch_size, jax.random.split(ais_key, config.num_images), test_x, label="AIS")
    ais_seconds = time.perf_counter() - start
    ais_estimates = np.asarray(inference.log_mean_exp(jnp.asarray(ais_log_w)))
    ais_mc = np.asarray(inference.log_mean_exp_stderr(jnp.asarray(ais_log_w)))
    staged.save("likelihood", {
        "num_images": config.num_images,
        "iwae": {**_summary(-iwae_bounds), "samples": config.iwae_samples, "seconds": iwae_seconds},
        "ais": {**_summary(-ais_estimates), "mc_stderr_per_image": float(ais_mc.mean()),
                "steps": config.ais_steps, "chains": config.ais_chains, "leapfrog": config.leapfrog,
                "seconds": ais_seconds},
        "ais_minus_iwae": _summary(-ais_estimates + iwae_bounds),
        "per_image_log_px": [float(v) for v in ais_estimates]})
  ais_estimates = np.asarray(staged["likelihood"]["per_image_log_px"], np.float64)

  if "gaps" not in staged:
    start = time.perf_counter()
    gap_terms = _in_batches(lambda k, x: inference.batch_gap_terms(model, params, k, x, config.gap_settings),
                            config.batch_size, jax.random.split(gap_key, config.num_images), test_x,
                            label="inference gaps")
    encoder, optimal = (np.asarray(e, np.float64) for e in (gap_terms.elbo_encoder, gap_terms.elbo_optimal))
    staged.save("gaps", {
        "neg_elbo": {**_summary(-encoder), "samples": config.elbo_samples,
                     "mc_stderr_per_image": float(np.mean(gap_terms.mc_stderr_encoder))},
        "gaps": {
            "num_images": config.num_images, "steps": config.gap_steps, "samples": config.elbo_samples,
            "log_px": _summary(ais_estimates), "elbo_optimal": _summary(optimal), "elbo_encoder": _summary(encoder),
            "elbo_optimal_mc_stderr_per_image": float(np.mean(gap_terms.mc_stderr_optimal)),
            "approximation": _summary(ais_estimates - optimal), "amortization": _summary(optimal - encoder),
            "inference": _summary(ais_estimates - encoder), "seconds": time.perf_counter() - start,
            "per_image": {"approximation": [float(v) for v in ais_estimates - optimal],
                          "amortization": [float(v) for v in optimal - encoder]}}})

  if "bdmc" not in staged:
    sim_x, sim_z = inference.simulate(model, params, sim_key, config.num_simulated)
    start = time.perf_counter()
    forward, reverse = _in_batches(
        lambda k, x, z: tuple(r.log_weights for r in inference.batch_bdmc(model, params, k, x, z, settings)),
        config.batch_size, jax.random.split(bdmc_key, config.num_simulated), sim_x, sim_z, label="BDMC")
    lower = np.asarray(inference.log_mean_exp(jnp.asarray(forward)))  # log p(x) from below
    upper = -np.asarray(inference.log_mean_exp(jnp.asarray(reverse)))  # and from above
    staged.save("bdmc", {"num_simulated": config.num_simulated, "forward_nll": _summary(-lower),
                         "reverse_nll": _summary(-upper), "gap": _summary(upper - lower),
                         "seconds": time.perf_counter() - start})

  files = ["results.json", "results.md", "results.png"]
  if config.superres_images and run_config.stochastic_layers == 1:
    if "superres" not in staged:
      staged.save("superres", _superres(model, params, sr_key, all_x[:config.superres_images],
                                        jnp.mean(data_lib.to_unit_interval(jnp.asarray(mnist.train.images)), axis=0),
                                        config.batch_size, staged.path("superres.png")))
    files.append("superres.png")

  if "kl" not in staged:
    start = time.perf_counter()
    with progress_lib.Progress("KL split", 1, unit="pass"):
      if run_config.stochastic_layers == 2:  # q(z | x) is a mixture over h1: no closed-form KL term to split
        kl = {"num_images": len(all_x), "active_units": evaluate.active_units(model, params, all_x),
              "h1_active_units": evaluate.h1_active_units(model, params, all_x),
              "latent_dim": run_config.latent_dim, "h1_dim": run_config.h1_dim}
      else:
        split = inference.kl_decomposition(kl_key, *evaluate.posteriors(model, params, all_x))
        kl = {"num_images": len(all_x), "average_kl": split.average_kl,
              "mutual_information": {"mean": split.mutual_information, "stderr": split.marginal_kl_stderr},
              "marginal_kl": {"mean": split.marginal_kl, "stderr": split.marginal_kl_stderr},
              "log_num_images": float(np.log(len(all_x))),
              "active_units": evaluate.active_units(model, params, all_x),
              "kl_per_dimension": [float(v) for v in split.kl_per_dimension],
              "seconds": time.perf_counter() - start}
    staged.save("kl", kl)

  likelihood = {k: v for k, v in staged["likelihood"].items() if k != "per_image_log_px"}
  results = {"workdir": str(config.workdir), "settings": dataclasses.asdict(config), "identity": staged.identity,
             "likelihood": {**likelihood, "neg_elbo": staged["gaps"]["neg_elbo"]}, "gaps": staged["gaps"]["gaps"],
             "bdmc": staged["bdmc"], "kl": staged["kl"]}
  if "superres.png" in files:
    results["superres"] = staged["superres"]
  workdir_lib.write_json(staged.path("results.json"), results, sort_keys=False)
  workdir_lib.write_text(staged.path("results.md"), markdown(results) + "\n")
  plot(results, staged.path("results.png"))
  staged.commit(files, OUTPUTS)
  return results


def _superres(model, params, key, x_NxD, mean_D, batch_size: int, picture) -> dict:
  """The super-resolution section: per factor, every method's nats per pixel and accuracy (±
  standard error over images), the VAE's paired advantage over the best baseline; its picture
  (superres.png) at the path `picture`."""
  section, rows = {"num_images": len(x_NxD)}, []
  for factor in superres.FACTORS:
    start = time.perf_counter()
    counts = superres.block_counts(x_NxD, factor)
    vae = _in_batches(lambda k, c: superres.upscale(model, params, k, c, factor), batch_size,
                      jax.random.split(jax.random.fold_in(key, factor), len(x_NxD)), counts,
                      label=f"super-resolution {factor}x{factor}")
    seconds = time.perf_counter() - start
    probs = {"VAE, p(x | counts)": vae, **superres.baselines(mean_D, counts, factor)}
    scores = {name: superres.pixel_scores(x_NxD, p) for name, p in probs.items()}
    best = min(superres.BASELINES, key=lambda name: scores[name][0].mean())
    section[f"factor_{factor}"] = {
        "methods": {name: {"nats_per_pixel": _summary(n), "accuracy": _summary(a)} for name, (n, a) in scores.items()},
        "best_baseline": best, "vae_minus_best_baseline": _summary(scores["VAE, p(x | counts)"][0] - scores[best][0]),
        "seconds": seconds}
    rows += [np.asarray(superres.nearest(counts[:8], factor)), *(np.asarray(probs[name][:8]) for name in
             superres.BASELINES[1:]), np.asarray(vae[:8]), np.asarray(x_NxD[:8])]
  plots.save_image_grid(picture, np.concatenate(rows), num_cols=8)
  return section


def plot(results: dict, path) -> None:
  """results.png: histograms of the per-image approximation and amortization gaps and, for one
  stochastic layer, the KL of each latent dimension."""
  plt = plots.pyplot()
  kl_dims = results["kl"].get("kl_per_dimension")
  fig, axes = plt.subplots(1, 2 if kl_dims else 1, figsize=(10 if kl_dims else 5, 3.5), squeeze=False)
  per_image = results["gaps"]["per_image"]
  ax = axes[0, 0]
  for name in ("approximation", "amortization"):
    ax.hist(per_image[name], bins=30, alpha=0.6, label=f"{name} gap, mean {np.mean(per_image[name]):.2f}")
  ax.set(xlabel="nats", ylabel="test images", title=f"Inference gaps of {len(per_image['amortization'])} images")
  ax.legend()
  if kl_dims:
    ax = axes[0, 1]
    dims = sorted(kl_dims, reverse=True)
    ax.bar(range(1, len(dims) + 1), dims)
    ax.set(xlabel="latent dimension, by KL", ylabel="E_x KL(q(z_l | x) || N(0, 1)), nats", title="KL per dimension")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def _cell(text: str) -> str:
  """Text for a markdown table cell: its pipes escaped."""
  return text.replace("|", "\\|")


def _pm(summary: dict) -> str:
  return f"{summary['mean']:.2f} ± {summary['stderr']:.2f}"


def markdown(results: dict) -> str:
  lik, bdmc, gaps, kl = results["likelihood"], results["bdmc"], results["gaps"], results["kl"]
  ais, iwae, elbo = lik["ais"], lik["iwae"], lik["neg_elbo"]
  lines = [
      f"Test NLL of the first {lik['num_images']} test images, nats (± standard error over images):",
      "",
      "| estimator | NLL | Monte-Carlo error of one image's estimate | time |",
      "|---|---|---|---|",
      f"| −ELBO, the encoder's q, {elbo['samples']:,} draws per image | {_pm(elbo)} | "
      f"{elbo['mc_stderr_per_image']:.3f} | (in the gaps' time) |",
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
      f"The inference gaps of the same {gaps['num_images']} images, nats (± standard error over images, paired; "
      f"q* fitted by {gaps['steps']} Adam steps per image, each ELBO averaged over {gaps['samples']:,} draws, "
      f"log p(x) by AIS; {gaps['seconds']:.0f} s):",
      "",
      "| log p(x) | ELBO(q*) | ELBO(q_encoder) | approximation gap | amortization gap | inference gap |",
      "|---|---|---|---|---|---|",
      f"| {_pm(gaps['log_px'])} | {_pm(gaps['elbo_optimal'])} | {_pm(gaps['elbo_encoder'])} | "
      f"{_pm(gaps['approximation'])} | {_pm(gaps['amortization'])} | {_pm(gaps['inference'])} |",
      "",
  ]
  if "superres" in results:
    sr = results["superres"]
    lines += [f"Super-resolution of the first {sr['num_images']} test images from the ink count of each block, "
              "nats per pixel and accuracy of the true binarized pixels (± standard error over images; "
              "superres.png: per factor, rows nearest, bilinear, mean image given the counts, VAE, original):", "",
              "| factor | method | nats per pixel | accuracy | time |", "|---|---|---|---|---|"]
    for factor in superres.FACTORS:
      part = sr[f"factor_{factor}"]
      for name, m in part["methods"].items():
        time_text = f"{part['seconds']:.0f} s" if name.startswith("VAE") else ""
        lines.append(f"| {factor}×{factor} | {_cell(name)} | {m['nats_per_pixel']['mean']:.4f} ± "
                     f"{m['nats_per_pixel']['stderr']:.4f} | {m['accuracy']['mean']:.4f} ± "
                     f"{m['accuracy']['stderr']:.4f} | {time_text} |")
      diff = part["vae_minus_best_baseline"]
      lines.append(f"| {factor}×{factor} | VAE − {part['best_baseline']}, paired | {diff['mean']:.4f} ± "
                   f"{diff['stderr']:.4f} | | |")
    lines.append("")
  if "kl_per_dimension" not in kl:
    return "\n".join(lines + [
        f"Active units over all {kl['num_images']:,} test images: {kl['active_units']}/{kl['latent_dim']} of z, "
        f"{kl['h1_active_units']}/{kl['h1_dim']} of h1 (two stochastic layers: q(z | x) is a mixture over h1, so "
        "the KL term has no closed-form split)."])
  dims = sorted(kl["kl_per_dimension"], reverse=True)
  return "\n".join(lines + [
      f"Where the KL goes, all {kl['num_images']:,} test images, nats (± Monte-Carlo error):",
      "",
      "| E_x KL(q(z\\|x) ‖ p(z)) | I_q(x; z) | KL(q(z) ‖ p(z)) | log N (I_q's ceiling) | active units | time |",
      "|---|---|---|---|---|---|",
      f"| {kl['average_kl']:.2f} | {_pm(kl['mutual_information'])} | {_pm(kl['marginal_kl'])} | "
      f"{kl['log_num_images']:.2f} | {kl['active_units']}/{len(dims)} | {kl['seconds']:.0f} s |",
      "",
      "KL per latent dimension, largest first: " + ", ".join(f"{v:.2f}" for v in dims),
  ])
