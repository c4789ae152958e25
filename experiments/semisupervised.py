r"""Semi-supervised MNIST from 100 labels: M2 and M1+M2 (Kingma et al. 2014).

  python -m experiments.semisupervised --outdir=runs/m2                    # M2 on pixels
  python -m experiments.mnist --workdir=runs/m1 --latent_dim=50 --hidden_dim=600 --num_layers=2 \
      --activation=softplus --num_epochs=100 --eval_iwae_samples=0          # M1: a VAE on all images
  python -m experiments.semisupervised --m1=runs/m1 --outdir=runs/m1m2     # M1+M2

One M2 per seed in --seeds, each trained through the one training loop in
--outdir/seed=<s>/ (resumable: the same command continues a stopped study, and a
finished seed is never trained again); then results.json (test error per seed,
mean, std, the paper's number) and class_grid.png (see `jaxvae.semisupervised`).

Result (experiments/RESULTS.md): M1+M2 from 100 labels, test error 4.96% ± 0.16 over three label
draws (Kingma et al.: 3.33%).
"""

from absl import flags

import jaxvae
from jaxvae import semisupervised

jaxvae.cli.define_flags(semisupervised.SemisupervisedConfig, {
    "m1": "Workdir of a trained VAE (experiments.mnist): train M2 on its latent codes (M1+M2). Default: M2 on "
          "pixels.",
    "m1_units": "M1+M2: the M1 latent units M2 models: active (posterior-mean variance > 0.01 over the training "
                "images; the others are noise from the prior, independent of x) or all.",
    "num_labels": "Labelled training images, a multiple of 10.",
    "seeds": "One run per seed: label draw and init.",
    "alpha": "Weight of the labelled cross-entropy -log q(y|x) in the loss per example (conditional.m2_loss); "
             "the paper's 0.1 N.",
    "labelled_weight": "Weight f of the labelled bound, 1 - f that of the unlabelled one (conditional.m2_loss). "
                       "Default: the labelled share of the training images, num_labels / 60000, as in the paper.",
    "num_epochs": "Passes over the unlabelled images.",
    "batch_size": "Unlabelled images per step.",
    "labelled_batch_size": "Labelled images per step, drawn with replacement from the labelled set.",
    "latent_dim": "Dimension of M2's z.",
    "hidden_dim": "Hidden width of encoder, decoder and classifier.",
    "num_layers": "Hidden layers of each network.",
    "activation": "Hidden activation (jax.nn).",
    "learning_rate": "Adam learning rate.",
    "eval_every": "Epochs between test-error records.",
    "checkpoint_every": "Epochs between checkpoints.",
    "data_source": "As in experiments.mnist.",
    "data_path": "File for --data_source=npz.",
}, choices={"m1_units": ("active", "all"), "activation": jaxvae.ACTIVATIONS, "data_source": jaxvae.data.SOURCES})
_OUTDIR = flags.DEFINE_string("outdir", "runs/m2", "Where the per-seed runs, results and pictures go.")
_OVERWRITE = flags.DEFINE_boolean("overwrite", False, "Replace a study already in --outdir.")


def main(argv):
  del argv
  config = jaxvae.cli.config_from_flags(semisupervised.SemisupervisedConfig)
  results = semisupervised.run_study(config, _OUTDIR.value, overwrite=_OVERWRITE.value)
  std = "" if results["std_test_error"] is None else f" +- {100 * results['std_test_error']:.2f}"
  print(f"{config.name}, {config.num_labels} labels: test error {100 * results['mean_test_error']:.2f}%{std} over "
        f"{len(config.seeds)} label draws (paper: {100 * results['paper_test_error']:.2f}%); saved in {_OUTDIR.value}")


if __name__ == "__main__":
  jaxvae.cli.run(main)
