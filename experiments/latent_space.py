r"""A VAE's latent space against a plain autoencoder's: samples, paths, neighbours, inpainting.

  python -m experiments.classifier --workdir=runs/classifier
  python -m experiments.mnist --workdir=runs/mnist                # VAE, L = 20
  python -m experiments.mnist --model=ae --workdir=runs/ae_L20     # AE, same networks
  python -m experiments.latent_space --vae=runs/mnist --ae=runs/ae_L20 --outdir=runs/latent_space_L20

writes into --outdir (an empty or new directory, or an earlier study's, which it replaces):
  results.json, results.md   the four tables below
  prior_samples.png          decoded z ~ N(0, I): VAE, AE, and AE with z from a Gaussian fitted to its codes
  latent_means.png           the test set's latent means by digit (2-D PCA when L > 2), VAE | AE
  interpolations.png         paths between pairs of test digits: VAE and AE, linear and spherical
  inpainting.png             per mask: masked input, VAE completion, AE completion, original

Tables: (1) how recognisable decoded prior samples are to the project's classifier;
(2) smoothness of interpolation paths in pixel space; (3) k-NN accuracy on latent
means; (4) inpainting: log-likelihood and accuracy of the hidden pixels, against
the mean training image.
"""

import json
import pathlib
import sys

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

import jaxvae
from jaxvae import classifier as classifier_lib
from jaxvae import latent
from jaxvae import plots

_VAE = flags.DEFINE_string("vae", "runs/mnist", "Workdir of a trained VAE (experiments.mnist).")
_AE = flags.DEFINE_string("ae", "runs/ae_L20", "Workdir of a trained autoencoder (experiments.mnist --model=ae).")
_CLASSIFIER = flags.DEFINE_string("classifier", "runs/classifier", "Workdir of experiments.classifier.")
_OUTDIR = flags.DEFINE_string("outdir", "runs/latent_space", "Where tables and pictures go.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 10000, "Prior samples per model.", lower_bound=1)
_NUM_PATHS = flags.DEFINE_integer("num_paths", 500, "Interpolation paths (pairs of test digits).", lower_bound=1)
_PATH_LENGTH = flags.DEFINE_integer("path_length", 16, "Decoded points per path.", lower_bound=3)
_KNN = flags.DEFINE_integer("knn", 5, "Neighbours voting in k-NN classification.", lower_bound=1)
_NUM_INPAINT = flags.DEFINE_integer("num_inpaint", 1000, "Test images to inpaint per mask.", lower_bound=1)
_INPAINT_STEPS = flags.DEFINE_integer("inpaint_steps", 300, "Adam steps (optimize) or iterations (iterate).",
                                      lower_bound=1)
_INPAINT_SAMPLES = flags.DEFINE_integer("inpaint_samples", 1000, "Importance samples of the predictive "
                                        "inpainting.", lower_bound=1)
_SEED = flags.DEFINE_integer("seed", 0, "Seed of samples, pairs and masks.", lower_bound=0)
_DATA_SOURCE = flags.DEFINE_enum("data_source", "auto", jaxvae.data.SOURCES, "As in experiments.mnist.")
_DATA_PATH = flags.DEFINE_string("data_path", None, "File for --data_source=npz.")



def prior_sample_study(models, key, probs_fn, train_codes, num):
  """Decoded samples per generator and the classifier's verdict on them."""
  z_key, fit_key = jax.random.split(key)
  rows, pictures = {}, {}
  for name, (model, params) in models.items():
    z = jax.random.normal(z_key, (num, model.latent_dim))
    generators = {f"{name}, z ~ N(0, I)": z}
    if name == "AE":  # a fairer AE: a Gaussian fitted to its training codes
      codes = train_codes[name]
      mean, cov = codes.mean(axis=0), np.cov(codes, rowvar=False).reshape(model.latent_dim, model.latent_dim)
      generators[f"{name}, z ~ Gaussian fitted to its codes"] = jax.random.multivariate_normal(
          fit_key, jnp.asarray(mean), jnp.asarray(cov), (num,), method="svd")
    for label, z in generators.items():
      images = latent.decode_means(model, params, z)
      rows[label] = classifier_lib.recognisability(probs_fn(images))
      pictures[label] = np.asarray(images[:64])
  return rows, pictures


def path_smoothness(images_PxTxD, probs_fn) -> dict[str, float]:
  """Pixel-space regularity of decoded paths [P, T, D].

  length_ratio: path length over the endpoint distance (1 = a straight fade);
  largest_step: the largest step's share of the path length (1 / (T - 1) when all
  steps are equal, near 1 for a sudden jump); midpoint_confidence: the classifier's
  mean top probability on the interior points (do they look like digits?).
  """
  steps_PxT = np.linalg.norm(np.diff(images_PxTxD, axis=1), axis=-1)
  length_P = steps_PxT.sum(axis=1)
  direct_P = np.linalg.norm(images_PxTxD[:, -1] - images_PxTxD[:, 0], axis=-1)
  interior = images_PxTxD[:, 1:-1].reshape(-1, images_PxTxD.shape[-1])
  return {"length_ratio": float(np.mean(length_P / np.maximum(direct_P, 1e-6))),
          "largest_step": float(np.mean(steps_PxT.max(axis=1) / np.maximum(length_P, 1e-6))),
          "midpoint_confidence": float(np.asarray(probs_fn(interior)).max(axis=1).mean())}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  jaxvae.run.quiet_library_logs()
  try:
    models, configs = {}, {}
    for name, workdir in (("VAE", _VAE.value), ("AE", _AE.value)):
      model, params, config = jaxvae.load_model(workdir)
      expected = "vae" if name == "VAE" else "ae"
      if config.model != expected or config.num_replicas != 1:
        raise jaxvae.ConfigError(f"--{expected}={workdir} holds a {config.model} run "
                                 f"with {config.num_replicas} replicas; expected a single {expected} run")
      models[name], configs[name] = (model, params), config
    if configs["VAE"].binarization != configs["AE"].binarization:
      raise jaxvae.ConfigError(f"the VAE was trained with binarization {configs['VAE'].binarization}, the AE with "
                               f"{configs['AE'].binarization}; compare models trained on the same targets")
    outdir = jaxvae.run.check_study_dir(pathlib.Path(_OUTDIR.value), "latent-space study")
    judge = classifier_lib.load_classifier(_CLASSIFIER.value)
    mnist = jaxvae.load_mnist(_DATA_SOURCE.value, path=_DATA_PATH.value)
    if _KNN.value > len(mnist.train.labels):
      raise jaxvae.ConfigError(f"--knn={_KNN.value} exceeds the {len(mnist.train.labels)} training images")
  except (jaxvae.ConfigError, jaxvae.CheckpointError, jaxvae.DataError) as e:
    sys.exit(f"error: {e}")
  outdir.mkdir(parents=True, exist_ok=True)
  probs_fn = lambda images: classifier_lib.predict_probs(*judge, jnp.asarray(images))
  # Both splits as the models saw them (binarized once with a fixed key, unless "none"),
  # so that training and test codes, and pixels, compare like with like.
  binarization = configs["VAE"].binarization
  test_x = jaxvae.test_targets(mnist.test.images, binarization)
  train_x = jaxvae.test_targets(mnist.train.images, binarization)
  train_gray = jaxvae.data.to_unit_interval(jnp.asarray(mnist.train.images))
  keys = dict(zip(("samples", "pairs", "masks", "inpaint"), jax.random.split(jax.random.key(_SEED.value), 4)))
  codes = {name: {"train": np.asarray(jaxvae.latent_means(m, p, train_x)),
                  "test": np.asarray(jaxvae.latent_means(m, p, test_x))} for name, (m, p) in models.items()}
  two_d = all(c.latent_dim == 2 for c in configs.values())
  plots.save_latent_scatter(outdir / "latent_means.png", [
      jaxvae.run.latent_scatter_panel(f"{name}, L={configs[name].latent_dim}", c["test"], mnist.test.labels)
      for name, c in codes.items()], ("z1", "z2") if two_d else ("PC 1", "PC 2"))
  results = {"vae": _VAE.value, "ae": _AE.value, "latent_dim": {n: c.latent_dim for n, c in configs.items()},
             "test_images": classifier_lib.recognisability(probs_fn(jaxvae.data.to_unit_interval(
                 jnp.asarray(mnist.test.images))))}

  # (1) Prior samples.
  results["prior_samples"], sample_pictures = prior_sample_study(
      models, keys["samples"], probs_fn, {n: c["train"] for n, c in codes.items()}, _NUM_SAMPLES.value)
  plots.save_panels(outdir / "prior_samples.png",
                    [(label, plots.image_grid(images, 8)) for label, images in sample_pictures.items()])

  # (2) Interpolation paths between random pairs of test digits with different labels.
  first, second = np.asarray(jax.random.randint(keys["pairs"], (2, 4 * _NUM_PATHS.value), 0, len(test_x)))
  keep = mnist.test.labels[first] != mnist.test.labels[second]
  first, second = first[keep][: _NUM_PATHS.value], second[keep][: _NUM_PATHS.value]
  results["interpolation"], path_pictures = {}, []
  for name, (model, params) in models.items():
    for method in latent.INTERPOLATIONS:
      z0, z1 = codes[name]["test"][first], codes[name]["test"][second]
      paths = jax.vmap(lambda a, b, m=method: latent.interpolate(a, b, _PATH_LENGTH.value, m))(z0, z1)
      images = np.asarray(latent.decode_means(model, params, paths))
      results["interpolation"][f"{name}, {method}"] = path_smoothness(images, probs_fn)
      path_pictures.append((f"{name}, {method}", plots.image_grid(images[:8].reshape(-1, images.shape[-1]),
                                                                   _PATH_LENGTH.value)))
  plots.save_panels(outdir / "interpolations.png", path_pictures, num_cols=2)

  # (3) k-NN classification on latent means (and on pixels, for reference).
  results["knn_accuracy"] = {}
  for name, c in codes.items():
    predicted = latent.knn_classify(c["train"], mnist.train.labels, c["test"], _KNN.value)
    results["knn_accuracy"][f"{name} latent means ({configs[name].latent_dim}-D)"] = float(
        np.mean(np.asarray(predicted) == mnist.test.labels))
  predicted = latent.knn_classify(train_x, mnist.train.labels, test_x, _KNN.value)
  results["knn_accuracy"]["pixels (784-D)"] = float(np.mean(np.asarray(predicted) == mnist.test.labels))

  # (4) Inpainting of binarized test digits.
  n = min(_NUM_INPAINT.value, len(test_x))
  x = jnp.asarray(test_x[:n])
  mean_image = jnp.broadcast_to(jnp.mean(train_gray, axis=0), x.shape)  # the expected binarized pixel
  masks = {"lower half": latent.lower_half_mask(n), "random 12x12 block": latent.random_block_mask(keys["masks"], n)}
  results["inpainting"], inpaint_pictures = {}, []
  for mask_name, observed in masks.items():
    fills = {"mean training image": jnp.where(observed, x, mean_image)}
    for name, (model, params) in models.items():
      for method in latent.INPAINT_METHODS:
        if method == "predictive" and name == "AE":
          continue  # no posterior to average over
        fills[f"{name}, {method}"] = latent.inpaint(model, params, x, observed, method, _INPAINT_STEPS.value,
                                                    prior=name == "VAE", key=keys["inpaint"],
                                                    num_samples=_INPAINT_SAMPLES.value)
    results["inpainting"][mask_name] = {
        label: {"nats_per_hidden_pixel": float(-latent.masked_log_likelihood(x, fill, observed)),
                "hidden_pixel_accuracy": float(jnp.sum(jnp.where(observed, 0.0, (fill > 0.5) == (x > 0.5)))
                                               / jnp.sum(~observed))}
        for label, fill in fills.items()}
    shown = slice(0, 8)
    masked_input = jnp.where(observed[shown], x[shown], 0.5)
    rows = [masked_input, fills["VAE, predictive"][shown], fills["AE, optimize"][shown], x[shown]]
    inpaint_pictures.append((f"{mask_name}: input / VAE / AE / original",
                             plots.image_grid(jnp.concatenate(rows), 8)))
  plots.save_panels(outdir / "inpainting.png", inpaint_pictures)

  (outdir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
  (outdir / "results.md").write_text(markdown(results))
  print(markdown(results))
  print(f"tables and pictures in {outdir}")


def markdown(results: dict) -> str:
  """The four tables of `results` as Markdown."""
  lines = [f"VAE: `{results['vae']}`, AE: `{results['ae']}`", "",
           "| decoded z | mean max-prob | share > 0.9 | class entropy (nats) |", "|---|---|---|---|"]
  rows = {"test images (grayscale, reference)": results["test_images"], **results["prior_samples"]}
  lines += [f"| {k} | {v['mean_max_prob']:.3f} | {v['confident']:.3f} | {v['class_entropy']:.2f} |"
            for k, v in rows.items()]
  lines += ["", "| path | length / direct distance | largest step share | midpoint confidence |", "|---|---|---|---|"]
  lines += [f"| {k} | {v['length_ratio']:.3f} | {v['largest_step']:.3f} | {v['midpoint_confidence']:.3f} |"
            for k, v in results["interpolation"].items()]
  lines += ["", "| k-NN on | test accuracy |", "|---|---|"]
  lines += [f"| {k} | {v:.4f} |" for k, v in results["knn_accuracy"].items()]
  lines += ["", "| mask | filled by | nats per hidden pixel | hidden-pixel accuracy |", "|---|---|---|---|"]
  lines += [f"| {mask} | {k} | {v['nats_per_hidden_pixel']:.4f} | {v['hidden_pixel_accuracy']:.4f} |"
            for mask, fills in results["inpainting"].items() for k, v in fills.items()]
  return "\n".join(lines) + "\n"


if __name__ == "__main__":
  app.run(main)
