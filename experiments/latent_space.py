r"""A VAE's latent space against a plain autoencoder's: samples, paths, neighbours, inpainting.

  python -m experiments.classifier --workdir=runs/classifier
  python -m experiments.mnist --workdir=runs/mnist                # VAE, L = 20
  python -m experiments.mnist --model=ae --workdir=runs/ae_L20     # AE, same networks
  python -m experiments.latent_space --vae=runs/mnist --ae=runs/ae_L20 --outdir=runs/latent_space_L20

writes the four tables (results.md, results.json, also printed) and the pictures
of `jaxvae.latent_study` into --outdir (new, empty or an earlier study's, which it
replaces).

Result (experiments/RESULTS.md), L = 20: the classifier's mean top-class probability on decoded
z ~ N(0, I) is 0.892 for the VAE, 0.555 for the AE; the VAE's predictive inpainting of a lower half
costs 0.200 nats per hidden pixel against 0.267 for the mean image.
"""

from absl import flags

import jaxvae
from jaxvae import latent_study

jaxvae.cli.define_flags(latent_study.LatentStudyConfig, {
    "vae": "Workdir of a trained VAE (experiments.mnist).",
    "ae": "Workdir of a trained autoencoder (experiments.mnist --model=ae).",
    "classifier": "Workdir of experiments.classifier.",
    "num_samples": "Prior samples per model.",
    "num_paths": "Interpolation paths (pairs of test digits).",
    "path_length": "Decoded points per path.",
    "knn": "Neighbours voting in k-NN classification.",
    "num_inpaint": "Test images to inpaint per mask.",
    "inpaint_steps": "Adam steps (optimize) or iterations (iterate).",
    "inpaint_samples": "Importance samples of the predictive inpainting.",
    "seed": "Seed of samples, pairs and masks.",
    "data_source": "As in experiments.mnist.",
    "data_path": "File for --data_source=npz.",
}, choices={"data_source": jaxvae.data.SOURCES})
_OUTDIR = flags.DEFINE_string("outdir", "runs/latent_space", "Where tables and pictures go.")


def main(argv):
  del argv
  results = latent_study.run_study(jaxvae.cli.config_from_flags(latent_study.LatentStudyConfig), _OUTDIR.value)
  print(latent_study.markdown(results))
  print(f"tables and pictures in {_OUTDIR.value}")


if __name__ == "__main__":
  jaxvae.cli.run(main)
