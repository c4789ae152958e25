r"""Trains a VAE on MNIST and evaluates it in nats.

  python -m experiments.mnist --latent_dim=20

writes config.json, metrics.jsonl, samples.png, reconstructions.png and orbax
checkpoints into --workdir (see `jaxvae.run`). Re-running the same command
resumes from the newest checkpoint. Reload the model with
`jaxvae.load_model(workdir)`.

  python -m experiments.mnist --model=ae                 # the autoencoder baseline
  python -m experiments.mnist --num_replicas=8            # 8 seeds in one program
  python -m experiments.mnist --coordinator_address=host0:1234 --num_processes=2 --process_id=0   # on host 0
  python -m experiments.mnist --distributed               # under SLURM / on a TPU pod: auto-detected

Each batch is split over all devices of all processes.

Result (experiments/RESULTS.md): the default run, test -ELBO 98.47 ± 0.25 and IWAE NLL (k = 5,000)
92.95 ± 0.24 nats; Burda et al.'s one-layer Table-1 model on their full schedule, 86.38 ± 0.23 (theirs 86.76).
"""


from absl import flags
import jax

import jaxvae
from jaxvae import config as config_lib

_D = config_lib.Config()
_MODEL = flags.DEFINE_enum("model", _D.model, tuple(jaxvae.objectives.OBJECTIVES),
                           "vae, or ae: the same networks as a deterministic autoencoder (z = encoder mean, "
                           "no KL; no IWAE estimate).")
_LATENT_DIM = flags.DEFINE_integer("latent_dim", _D.latent_dim, "Latent dimension L.")
_HIDDEN_DIM = flags.DEFINE_integer("hidden_dim", _D.hidden_dim, "Width of each hidden layer.")
_NUM_LAYERS = flags.DEFINE_integer("num_layers", _D.num_layers, "Hidden layers in encoder and decoder each.")
_ACTIVATION = flags.DEFINE_enum("activation", _D.activation, jaxvae.ACTIVATIONS, "Hidden activation (jax.nn).")
_WEIGHT_INIT = flags.DEFINE_enum("weight_init", _D.weight_init, jaxvae.models.WEIGHT_INITS,
                                  "Dense init: uniform (+-1/sqrt(fan_in), as PyTorch) or lecun_normal (Flax).")
_OUTPUT_BIAS = flags.DEFINE_enum("output_bias", _D.output_bias, jaxvae.models.OUTPUT_BIASES,
                                  "Decoder output biases: as --weight_init makes them, or data_mean: the logit "
                                  "of the mean training pixel.")
_ARCHITECTURE = flags.DEFINE_enum("architecture", _D.architecture, jaxvae.models.ARCHITECTURES,
                                   "mlp, or conv: two stride-2 convolutions (32, 64 channels) before the "
                                   "encoder's Dense layers, transposed ones after the decoder's.")
_STOCHASTIC_LAYERS = flags.DEFINE_integer("stochastic_layers", _D.stochastic_layers,
                                          "1, or 2: x <-> h1 (--h1_dim) <-> z (--latent_dim), Burda et al.'s "
                                          "two-layer model; --hidden_dim is then the width of the x <-> h1 "
                                          "networks.")
_H1_DIM = flags.DEFINE_integer("h1_dim", _D.h1_dim, "Two layers: units of the lower latent layer h1.")
_TOP_HIDDEN_DIM = flags.DEFINE_integer("top_hidden_dim", _D.top_hidden_dim,
                                       "Two layers: width of the hidden layers between h1 and z.")
_TRAIN_OBJECTIVE = flags.DEFINE_enum("train_objective", _D.train_objective, jaxvae.objectives.TRAINING_OBJECTIVES,
                                     "elbo, or iwae: the --train_samples-sample importance-weighted bound.")
_TRAIN_SAMPLES = flags.DEFINE_integer("train_samples", _D.train_samples, "Samples of z per image and step, k "
                                      "(elbo: averaged; iwae: the bound's k).")
_BETA = flags.DEFINE_float("beta", _D.beta, "Weight of the KL term in the training loss (elbo).")
_KL_WARMUP_EPOCHS = flags.DEFINE_integer("kl_warmup_epochs", _D.kl_warmup_epochs,
                                         "Epochs over which the KL weight rises linearly from 0 to --beta.")
_FREE_BITS = flags.DEFINE_float("free_bits", _D.free_bits, "Nats per latent dimension (batch-mean KL) below "
                                "which the KL is not penalized.")
_NUM_EPOCHS = flags.DEFINE_integer("num_epochs", _D.num_epochs, "Training epochs.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", _D.batch_size, "Training batch size.")
_LEARNING_RATE = flags.DEFINE_float("learning_rate", _D.learning_rate, "Adam learning rate (the first, on a "
                                    "schedule).")
_LR_SCHEDULE = flags.DEFINE_enum("lr_schedule", _D.lr_schedule, jaxvae.train.LR_SCHEDULES,
                                 "constant, or iwae: 3^i epochs at learning_rate * 10^(-i/7), i = 0..7 "
                                 "(Burda et al.; 3,280 epochs in all).")
_ADAM_EPS = flags.DEFINE_float("adam_eps", _D.adam_eps, "Adam's epsilon (Burda et al. use 1e-4).")
_SEED = flags.DEFINE_integer("seed", _D.seed, "Root seed: init, data order, binarization, noise.")
_NUM_REPLICAS = flags.DEFINE_integer("num_replicas", _D.num_replicas,
                                     "Train this many models (seeds seed, seed+1, ...) as one vmapped program; "
                                     "each writes <workdir>/seed=<s>/.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/mnist", "Directory for config, metrics, images, checkpoints.")
_OVERWRITE = flags.DEFINE_boolean("overwrite", False, "Replace a run with other settings in --workdir.")
_BINARIZATION = flags.DEFINE_enum("binarization", _D.binarization, jaxvae.BINARIZATIONS,
                                  "dynamic: fresh Bernoulli pixels each epoch; static: one fixed draw; "
                                  "none: grayscale targets (cross-entropy, not an NLL).")
_EVAL_IWAE_SAMPLES = flags.DEFINE_integer("eval_iwae_samples", _D.eval_iwae_samples,
                                          "Importance samples for the final test NLL estimate; 0 skips it.")
_IWAE_CHUNK_SIZE = flags.DEFINE_integer("iwae_chunk_size", _D.iwae_chunk_size,
                                        "Importance samples decoded at once per image (memory bound).")
_EVAL_BATCH_SIZE = flags.DEFINE_integer("eval_batch_size", _D.eval_batch_size, "Test images per IWAE call.")
_CHECKPOINT_EVERY = flags.DEFINE_integer("checkpoint_every", _D.checkpoint_every, "Epochs between checkpoints.")
_NONFINITE_POLICY = flags.DEFINE_enum("nonfinite_policy", _D.nonfinite_policy, jaxvae.train.NONFINITE_POLICIES,
                                      "On a non-finite loss or gradient: stop (keeping the last good "
                                      "checkpoint) or skip that update.")
_DATA_SOURCE = flags.DEFINE_enum("data_source", _D.data_source, jaxvae.data.SOURCES,
                                 "auto: prepared TFDS data, else the offline copy; tfds; offline; npz.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data directory.")
_DATA_PATH = flags.DEFINE_string("data_path", None, "File for --data_source=npz (or a pickle for offline).")
_TFDS_DOWNLOAD = flags.DEFINE_boolean("tfds_download", False, "Let TFDS download MNIST (needs network).")
_EXCLUDE_DIGIT = flags.DEFINE_integer("exclude_digit", None, "Leave this digit (0-9) out of the training set; "
                                      "the test set stays whole (anomaly detection).")
_DISTRIBUTED = flags.DEFINE_boolean("distributed", False,
                                    "Call jax.distributed.initialize (cluster settings auto-detected unless the "
                                    "three flags below are given; giving them implies --distributed).")
_COORDINATOR_ADDRESS = flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes.", lower_bound=1)
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index, 0 to num_processes - 1.", lower_bound=0)


def main(argv):
  del argv
  config = jaxvae.cli.config_from_flags(config_lib.Config).validate()
  if _DISTRIBUTED.value or _COORDINATOR_ADDRESS.value or _NUM_PROCESSES.value or _PROCESS_ID.value is not None:
    try:
      jax.distributed.initialize(_COORDINATOR_ADDRESS.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    except (ValueError, RuntimeError) as e:
      raise jaxvae.ConfigError(f"jax.distributed.initialize failed: {str(e).splitlines()[0]}") from None
  jaxvae.train_and_evaluate(config, _WORKDIR.value, overwrite=_OVERWRITE.value)


if __name__ == "__main__":
  jaxvae.cli.run(main)
