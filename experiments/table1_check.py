r"""How much a trained VAE's k = 5,000 test NLL moves with the estimator's key and the test set's binarization.

  export XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
  python -m experiments.table1_check --workdir=runs/table1_full_vae_1layer_k1 --eval_seeds=1,2 \
      --binarization_seeds=1001,1002

For each evaluation seed, the IWAE estimate on the run's own binarized test set with the keys of
`KeyStreams.from_seed(seed).eval` (the estimator's own noise); for each binarization seed, the
estimate with the run's evaluation key on the test images binarized with that seed (which random
binarization is scored). Prints one line per estimate: NLL ± its standard error over images.
On the full Table-1 run (experiments/RESULTS.md): 86.37 (evaluation seed 1), 86.24 and 86.32 (binarization
seeds 1001, 1002) against the final record's 86.38.
"""

import time

from absl import flags
import numpy as np

import jaxvae
from jaxvae import data, evaluate, train

_WORKDIR = flags.DEFINE_string("workdir", "runs/table1_full_vae_1layer_k1", "A trained VAE on binarized MNIST.")
_EVAL_SEEDS = flags.DEFINE_list("eval_seeds", ["1", "2"], "Seeds of the estimator's keys.")
_BINARIZATION_SEEDS = flags.DEFINE_list("binarization_seeds", ["1001", "1002"], "Seeds of test binarizations.")


def main(argv):
  del argv
  model, params, config = jaxvae.load_model(_WORKDIR.value)
  if not isinstance(config, jaxvae.Config) or config.binarization == "none":
    raise jaxvae.ConfigError(f"--workdir={_WORKDIR.value} does not hold a VAE run on binarized MNIST")
  try:
    eval_seeds, binarization_seeds = ([int(s) for s in flag.value] for flag in (_EVAL_SEEDS, _BINARIZATION_SEEDS))
  except ValueError:
    raise jaxvae.ConfigError("--eval_seeds and --binarization_seeds are integers separated by commas") from None
  images = data.load_mnist(config.data_source, config.data_dir, path=config.data_path).test.images
  own_x = data.test_targets(images, config.binarization)
  cases = [(f"evaluation key of seed {s}", own_x, train.KeyStreams.from_seed(s).eval) for s in eval_seeds]
  cases += [(f"test binarization of seed {s}", (data.fixed_binarization(images, s) / 255).astype(np.float32),
             train.KeyStreams.from_seed(config.seed).eval) for s in binarization_seeds]
  for name, x, key in cases:
    start = time.perf_counter()
    bounds = evaluate.iwae_bounds(model, params, key, x, config.iwae_samples, config.eval_batch_size,
                                  config.iwae_chunk_size, progress=name)
    print(f"{name}: test NLL {-bounds.mean():.2f} ± {bounds.std(ddof=1) / np.sqrt(len(bounds)):.2f} "
          f"(k = {config.iwae_samples:,}, {time.perf_counter() - start:.0f} s)", flush=True)


if __name__ == "__main__":
  jaxvae.cli.run(main)
