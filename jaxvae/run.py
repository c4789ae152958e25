"""The VAE and AE family (one or two stochastic layers, MLP or conv, ensembles, devices, hosts) on `loop.fit`.

`train_and_evaluate(config, workdir)` writes into `workdir`:
  jaxvae.json          the marker: kind "vae" and the model spec (`load_model`)
  config.json          the `Config` of the run
  metrics.jsonl        one JSON record per epoch (its test -ELBO one draw of z per image, a fixed key),
                       then one with `"final": true` (the test -ELBO `evaluate.elbo_estimate`'s, with
                       its errors over images and over draws, the latter < 0.01 nats); the same
                       numbers as TensorBoard scalars (events.out.tfevents.*)
  samples.png          8x8 Bernoulli means of decoded z ~ N(0, I) (fixed z)
  reconstructions.png  rows of 8 test images and, below each, their reconstructions
  latent.png           the test set's latent means coloured by digit (PCA when L > 2)
  interpolations.png   linear and spherical paths between pairs of test digits
  manifold.png, manifold_linear.png   (L = 2) decoded grids of z at Gaussian quantiles, on [-3, 3]
  images/epoch_NNN_{samples,reconstructions}.png   the same grids after every epoch
  checkpoints/<epoch>/ orbax checkpoints (newest two kept)
Re-running with the same config resumes from the newest good checkpoint; a config
that changes the trained model is refused unless `overwrite=True`.

An ensemble (`num_replicas` R > 1) trains R models with seeds seed, ..., seed+R-1
in one compiled program. `workdir` then holds config.json and the checkpoints of
all replicas, and each replica writes its own `seed=<s>/` directory with the
files above (config.json there is the single run the replica is equivalent to).

Every batch is split over all devices (`train.data_mesh`), across processes too
after `jax.distributed.initialize`; process 0 writes the files.
"""

import time

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from jaxvae import checkpoints
from jaxvae import config as config_lib
from jaxvae import data as data_lib
from jaxvae import evaluate
from jaxvae import hosts
from jaxvae import loop
from jaxvae import models
from jaxvae import objectives
from jaxvae import pictures
from jaxvae import train
from jaxvae import workdir as workdir_lib
from jaxvae.errors import ConfigError

KIND = "vae"
OUTPUTS = ("images", "samples.png", "reconstructions.png", "latent.png", "interpolations.png", "manifold.png",
           "manifold_linear.png", "seed=*")


def test_elbo(model, params, key, test_x, objective=objectives.elbo) -> dict:
  """Test-set means of -ELBO (or -objective), KL and reconstruction term, nats per image."""
  terms = jax.tree.map(lambda a: float(jnp.mean(a)), evaluate.elbo_terms(model, params, key, test_x,
                                                                        objective=objective))
  return {"test_neg_elbo": -terms.elbo, "test_kl": terms.kl, "test_reconstruction": terms.reconstruction}


def train_and_evaluate(config: config_lib.Config, workdir, overwrite: bool = False) -> dict | list[dict]:
  """Trains and evaluates `config` in `workdir` (see the module docstring) through `loop.fit`.

  Returns the final metrics record, or for an ensemble the list of every replica's.
  Every check (settings, workdir, data, checkpoint) runs before anything in `workdir` changes.
  """
  config.validate()
  model = config_lib.build_model(config)
  with workdir_lib.Workdir(workdir, KIND, (*workdir_lib.RUN_OUTPUTS, *OUTPUTS),
                           writer=hosts.is_writer(), config=config.to_dict(), resumable=config_lib.RESUMABLE_FIELDS,
                           normalize=lambda saved: config_lib.Config.from_dict(saved).to_dict(),
                           marker_fields={"model": checkpoints.model_spec(model),
                                          "num_replicas": config.num_replicas}) as wd:
    wd.check(overwrite)
    mnist = data_lib.load_mnist(config.data_source, config.data_dir, config.tfds_download, config.data_path)
    train_split = data_lib.without_digit(mnist.train, config.exclude_digit)
    num_train = len(train_split.labels)
    if config.batch_size > num_train:
      raise ConfigError(f"batch_size {config.batch_size} exceeds the {num_train} training images")
    if len(mnist.test.labels) < pictures.MIN_TEST_IMAGES:
      raise ConfigError(f"the test set has {len(mnist.test.labels)} images; the pictures need at least "
                        f"{pictures.MIN_TEST_IMAGES}")
    shapes = jax.eval_shape(lambda k: models.init_params(model, k), jax.random.key(0))
    widths = None if config.architecture != "mlp" else 3 * data_lib.NUM_PIXELS + 2 * sum(  # activations per sample
        leaf.shape[-1] for leaf in jax.tree.leaves(shapes) if leaf.ndim == 2)
    evaluate.check_iwae_memory(model, shapes, jax.ShapeDtypeStruct((data_lib.NUM_PIXELS,), jnp.float32),
                               config.iwae_samples, config.eval_batch_size, config.iwae_chunk_size,
                               len(mnist.test.labels), widths)
    mesh = train.data_mesh()
    if config.batch_size % mesh.size:
      raise ConfigError(f"batch_size {config.batch_size} is not a multiple of the {mesh.size} devices "
                        "each batch is split over")
    ensemble = config.num_replicas > 1
    steps_per_epoch = num_train // config.batch_size
    optimizer = train.make_optimizer(config, steps_per_epoch)
    keys = train.KeyStreams.from_seeds(config.seeds) if ensemble else train.KeyStreams.from_seed(config.seed)
    replica_keys = [keys.at(i) for i in range(config.num_replicas)] if ensemble else [keys]
    output_bias = models.data_mean_bias(train_split.images) if config.output_bias == "data_mean" else None
    state = train.replicate(train.create_train_state(model, optimizer, keys.init, output_bias), mesh)
    train_images = train.replicate(data_lib.prepare_train_images(train_split.images, config.binarization), mesh)
    test_x_host = data_lib.test_targets(mnist.test.images, config.binarization)
    test_x = train.replicate(test_x_host, mesh)  # for the evaluations every process runs
    grid_z = [jax.random.normal(k.sample, (pictures.NUM_GRID, config.latent_dim)) for k in replica_keys]
    epoch_fn = train.make_train_epoch(model, optimizer, config.batch_size, config.binarization,
                                      config.nonfinite_policy, mesh=mesh, ensemble=ensemble,
                                      objective=config.training_objective,
                                      kl_schedule=config.make_kl_schedule(steps_per_epoch))
    start = time.perf_counter()
    epoch_fn = epoch_fn.lower(state, train_images, keys.data, keys.train).compile()
    logging.info("compiled the training epoch in %.1f s (batch split over %d devices)",
                 time.perf_counter() - start, mesh.size)
    loss_name = "-ELBO" if config.model == "vae" else "-log p(x|z)"

    def train_epoch(state, epoch):
      return epoch_fn(state, train_images, train.epoch_key(keys.data, epoch), keys.train)

    def record(params, index, epoch, metrics):
      del epoch
      return {"train_neg_elbo": float(metrics["neg_elbo"]), "train_kl": float(metrics["kl"]),
              "train_reconstruction": float(metrics["reconstruction"]),
              **({"train_loss": float(metrics["loss"]), "kl_weight": float(metrics["kl_weight"])}
                 if config.kl_schedule else {}),
              **test_elbo(model, params, replica_keys[index].eval, test_x, config.objective)}

    def final(params, index):
      estimate = evaluate.elbo_estimate(model, params, replica_keys[index].eval, test_x, objective=config.objective)
      fields = {"test_neg_elbo": -estimate.elbo, "test_neg_elbo_stderr": estimate.stderr,
                "test_neg_elbo_mc_stderr": estimate.mc_stderr, "test_elbo_samples": estimate.num_samples,
                "test_kl": estimate.kl, "test_reconstruction": estimate.reconstruction,
                "active_units": evaluate.active_units(model, params, test_x)}
      if config.stochastic_layers == 2:
        fields["h1_active_units"] = evaluate.h1_active_units(model, params, test_x)
      if config.iwae_samples:
        start = time.perf_counter()
        bounds = evaluate.iwae_bounds(model, params, replica_keys[index].eval, test_x, config.iwae_samples,
                                      config.eval_batch_size, config.iwae_chunk_size)
        fields.update(iwae_nll=float(-bounds.mean()),
                      iwae_nll_stderr=float(bounds.std(ddof=1) / np.sqrt(len(bounds))),
                      iwae_samples=config.iwae_samples, iwae_seconds=time.perf_counter() - start)
      return fields

    def artifacts(params, index, directory, epoch):
      if epoch is not None:
        pictures.write_grids(model, params, grid_z[index], test_x_host, directory / "images", f"epoch_{epoch:03d}_")
        return
      pictures.write_grids(model, params, grid_z[index], test_x_host, directory)
      pictures.write_latent_pictures(model, params, test_x_host, mnist.test.labels, directory,
                                     f"{config.model.upper()}, L={config.latent_dim}")

    def summary(r):
      return (f"train {loss_name} {r['train_neg_elbo']:8.2f}  test {loss_name} {r['test_neg_elbo']:8.2f}  "
              f"KL {r['test_kl']:6.2f}")

    def final_summary(f):
      text = (f"test {loss_name} {f['test_neg_elbo']:.2f} ± {f['test_neg_elbo_stderr']:.2f} nats (Monte-Carlo "
              f"error {f['test_neg_elbo_mc_stderr']:.3f}, {f['test_elbo_samples']} draws per image), "
              f"{f['active_units']}/{config.latent_dim} active units")
      if "h1_active_units" in f:
        text += f" (h1: {f['h1_active_units']}/{config.h1_dim})"
      if "iwae_nll" in f:
        text += f", IWAE NLL (k={config.iwae_samples}) {f['iwae_nll']:.2f} ± {f['iwae_nll_stderr']:.2f}"
      return text

    replicas = None
    if ensemble:
      replicas = [loop.Replica(wd.path / f"seed={s}", config.replica(i).to_dict(), f"seed {s}: ")
                  for i, s in enumerate(config.seeds)]
    finals = loop.fit(
        wd, state=state, train_epoch=train_epoch, num_epochs=config.num_epochs,
        record=record, final=final, artifacts=artifacts, summary=summary, final_summary=final_summary,
        is_complete=lambda f: f.get("iwae_samples", 0) == config.iwae_samples and "test_elbo_samples" in f,
        overwrite=overwrite, checkpoint_every=config.checkpoint_every,
        nonfinite_policy=config.nonfinite_policy, data_fingerprint=data_lib.fingerprint(train_split),
        replicas=replicas)
  return finals if ensemble else finals[0]

