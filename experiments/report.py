r"""The inference report of a trained VAE: AIS against the IWAE bound, BDMC's check of AIS, the
inference gaps and where the KL goes.

  python -m experiments.mnist --latent_dim=20                        # the default run, runs/mnist
  python -m experiments.report --workdir=runs/mnist --outdir=runs/mnist_report

writes results.md, results.json and results.png (results.md also printed) into --outdir (new, empty or an earlier
report's, which it replaces); see `jaxvae.report`.

Result (experiments/RESULTS.md), the default run: AIS is 0.76 ± 0.04 nats tighter than the k = 5,000 IWAE
bound; of the 6.21-nat inference gap, 4.07 is amortization and 2.14 approximation.
"""

from absl import flags

import jaxvae
from jaxvae import report

jaxvae.cli.define_flags(report.ReportConfig, {
    "workdir": "Workdir of a trained VAE (experiments.mnist, one or two stochastic layers).",
    "num_images": "Test images (the first ones) for AIS and the IWAE bound.",
    "num_simulated": "Images simulated from the model for BDMC.",
    "ais_steps": "Annealing steps of AIS (a sigmoid schedule).",
    "ais_chains": "AIS chains per image.",
    "leapfrog": "Leapfrog steps per HMC transition.",
    "iwae_samples": "Importance samples k of the IWAE bound.",
    "gap_steps": "Adam steps fitting each image's best Gaussian q* (the inference gaps).",
    "elbo_samples": "Draws of z per image for the ELBOs of q* and of the encoder.",
    "superres_images": "Test images to super-resolve from block counts at each factor (0: none).",
    "batch_size": "Images per compiled AIS call.",
    "seed": "Seed of every draw of the report.",
    "data_source": "As in experiments.mnist.",
    "data_path": "File for --data_source=npz.",
}, choices={"data_source": jaxvae.data.SOURCES})
_OUTDIR = flags.DEFINE_string("outdir", "runs/mnist_report", "Where results.md, results.json and results.png go.")


def main(argv):
  del argv
  results = report.run_report(jaxvae.cli.config_from_flags(report.ReportConfig), _OUTDIR.value)
  print(report.markdown(results))
  print(f"results in {_OUTDIR.value}")


if __name__ == "__main__":
  jaxvae.cli.run(main)
