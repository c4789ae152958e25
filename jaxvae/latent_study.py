"""A VAE's latent space against a plain autoencoder's: samples, paths, neighbours, inpainting.

`run_study(config, outdir)` compares a trained VAE and AE (`experiments.mnist`,
`--model=ae`) with the project's classifier as judge, and writes into `outdir`
(a study directory: new, empty or an earlier study's, whose outputs it replaces once
the new study is complete; each finished table is kept, so an interrupted study
resumes from the last one: `workdir.Staged`):

  results.json, results.md   the four tables below (`markdown`)
  prior_samples.png          decoded z ~ N(0, I): VAE, AE, and AE with z from a Gaussian fitted to its codes
  latent_means.png           the test set's latent means by digit (2-D PCA when L > 2), VAE | AE
  interpolations.png         paths between pairs of test digits: VAE and AE, linear and spherical
  inpainting.png             per mask: masked input, VAE completion, AE completion, original

Tables: (1) how recognisable decoded prior samples are to the classifier
(`prior_sample_study`); (2) smoothness of interpolation paths in pixel
space (`path_smoothness`); (3) k-NN accuracy on latent means
(`latent.knn_classify`); (4) inpainting (`latent.inpaint`): log-likelihood and
accuracy of the hidden pixels, against the mean training image.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxvae import checkpoints
from jaxvae import classifier as classifier_lib
from jaxvae import config as config_lib
from jaxvae import data as data_lib
from jaxvae import evaluate
from jaxvae import latent
from jaxvae import pictures
from jaxvae import plots
from jaxvae import progress as progress_lib
from jaxvae import workdir as workdir_lib
from jaxvae.errors import ConfigError

KIND = "latent-space study"
OUTPUTS = ("results.json", "results.md", "prior_samples.png", "latent_means.png", "interpolations.png",
           "inpainting.png")


@dataclasses.dataclass(frozen=True)
class LatentStudyConfig:
  vae: str = "runs/mnist"  # workdir of a trained VAE
  ae: str = "runs/ae_L20"  # workdir of a trained autoencoder
  classifier: str = "runs/classifier"  # workdir of the judge
  num_samples: int = 10000  # prior samples per model
  num_paths: int = 500  # interpolation paths (pairs of test digits)
  path_length: int = 16  # decoded points per path
  knn: int = 5  # neighbours voting in k-NN classification
  num_inpaint: int = 1000  # test images to inpaint per mask
  inpaint_steps: int = 300  # Adam steps (optimize) or iterations (iterate)
  inpaint_samples: int = 1000  # importance samples of the predictive inpainting
  seed: int = 0  # of samples, pairs and masks
  data_source: str = "auto"
  data_path: str | None = None

  def validate(self) -> "LatentStudyConfig":
    config_lib.check_settings(self, positive=("num_samples", "num_paths", "path_length", "knn", "num_inpaint",
                                              "inpaint_steps", "inpaint_samples"), nonnegative=("seed",),
                              limits={"num_samples": 10**6, "num_paths": 10**5, "path_length": 1000,
                                      "knn": 1000, "num_inpaint": 10**5, "inpaint_samples": 10**5,
                                      "inpaint_steps": 10**5})
    if self.path_length < 3:
      raise ConfigError(f"path_length must be at least 3 (the two ends and a point between), got {self.path_length}")
    return self


def run_study(config: LatentStudyConfig, outdir) -> dict:
  """The four tables and pictures of the module docstring, written into `outdir`; returns the tables."""
  config.validate()
  with workdir_lib.Workdir(outdir, KIND, OUTPUTS, flag="--outdir") as wd:
    wd.check()
    return _study(config, wd)


def _study(config: LatentStudyConfig, wd: workdir_lib.Workdir) -> dict:
  """`run_study` in the checked workdir `wd`: every input is loaded and checked before it is opened."""
  models, configs, fingerprints = {}, {}, {}
  for name, workdir in (("VAE", config.vae), ("AE", config.ae)):
    model, params, run_config = checkpoints.load_model(workdir)
    expected = "vae" if name == "VAE" else "ae"
    if not isinstance(run_config, config_lib.Config) or run_config.model != expected or run_config.num_replicas != 1:
      raise ConfigError(f"--{expected}={workdir} does not hold a single {expected} run (experiments.mnist)")
    models[name], configs[name] = (model, params), run_config
    fingerprints[name] = checkpoints.fingerprint(params)
  if configs["VAE"].binarization != configs["AE"].binarization:
    raise ConfigError(f"the VAE was trained with binarization {configs['VAE'].binarization}, the AE with "
                      f"{configs['AE'].binarization}; compare models trained on the same targets")
  judge = classifier_lib.load_classifier(config.classifier)
  mnist = data_lib.load_mnist(config.data_source, path=config.data_path)
  if config.knn > len(mnist.train.labels):
    raise ConfigError(f"--knn={config.knn} exceeds the {len(mnist.train.labels)} training images")
  fingerprints["classifier"] = checkpoints.fingerprint(judge[1])
  identity = {"settings": dataclasses.asdict(config), "models": fingerprints}
  previous, staged = workdir_lib.begin_result(wd, identity, "study")
  if previous is not None:
    return previous
  probs_fn = lambda images: classifier_lib.predict_probs(*judge, jnp.asarray(images))
  # Both splits as the models saw them (binarized once with a fixed key, unless "none"),
  # so that training and test codes, and pixels, compare like with like.
  binarization = configs["VAE"].binarization
  test_x = data_lib.test_targets(mnist.test.images, binarization)
  train_x = data_lib.test_targets(mnist.train.images, binarization)
  train_gray = data_lib.to_unit_interval(jnp.asarray(mnist.train.images))
  keys = dict(zip(("samples", "pairs", "masks", "inpaint"), jax.random.split(jax.random.key(config.seed), 4)))
  codes = {name: {"train": np.asarray(evaluate.latent_means(m, p, train_x)),
                  "test": np.asarray(evaluate.latent_means(m, p, test_x))} for name, (m, p) in models.items()}
  two_d = all(c.latent_dim == 2 for c in configs.values())
  plots.save_latent_scatter(staged.path("latent_means.png"), [
      pictures.latent_scatter_panel(f"{name}, L={configs[name].latent_dim}", c["test"], mnist.test.labels)
      for name, c in codes.items()], ("z1", "z2") if two_d else ("PC 1", "PC 2"))
  results = {"vae": config.vae, "ae": config.ae, "identity": staged.identity,
             "latent_dim": {n: c.latent_dim for n, c in configs.items()},
             "test_images": classifier_lib.recognisability(probs_fn(data_lib.to_unit_interval(
                 jnp.asarray(mnist.test.images))))}

  # (1) Prior samples.
  if "prior_samples" not in staged:
    with progress_lib.Progress("prior samples", 1, unit="pass"):
      table, sample_pictures = prior_sample_study(
          models, keys["samples"], probs_fn, {n: c["train"] for n, c in codes.items()}, config.num_samples)
    plots.save_panels(staged.path("prior_samples.png"),
                      [(label, plots.image_grid(images, 8)) for label, images in sample_pictures.items()])
    staged.save("prior_samples", table)

  # (2) Interpolation paths between random pairs of test digits with different labels.
  if "interpolation" not in staged:
    first, second = np.asarray(jax.random.randint(keys["pairs"], (2, 4 * config.num_paths), 0, len(test_x)))
    keep = mnist.test.labels[first] != mnist.test.labels[second]
    first, second = first[keep][: config.num_paths], second[keep][: config.num_paths]
    table, path_pictures = {}, []
    with progress_lib.Progress("interpolation", len(models) * len(latent.INTERPOLATIONS), unit="path sets") as shown:
      for name, (model, params) in models.items():
        for method in latent.INTERPOLATIONS:
          z0, z1 = codes[name]["test"][first], codes[name]["test"][second]
          paths = jax.vmap(lambda a, b, m=method: latent.interpolate(a, b, config.path_length, m))(z0, z1)
          images = np.asarray(latent.decode_means(model, params, paths))
          table[f"{name}, {method}"] = path_smoothness(images, probs_fn)
          path_pictures.append((f"{name}, {method}", plots.image_grid(images[:8].reshape(-1, images.shape[-1]),
                                                                       config.path_length)))
          shown.advance(1)
    plots.save_panels(staged.path("interpolations.png"), path_pictures, num_cols=2)
    staged.save("interpolation", table)

  # (3) k-NN classification on latent means (and on pixels, for reference).
  if "knn_accuracy" not in staged:
    table = {}
    with progress_lib.Progress("k-NN", len(codes) + 1, unit="spaces") as shown:
      for name, c in codes.items():
        predicted = latent.knn_classify(c["train"], mnist.train.labels, c["test"], config.knn)
        table[f"{name} latent means ({configs[name].latent_dim}-D)"] = float(
            np.mean(np.asarray(predicted) == mnist.test.labels))
        shown.advance(1)
      predicted = latent.knn_classify(train_x, mnist.train.labels, test_x, config.knn)
      table["pixels (784-D)"] = float(np.mean(np.asarray(predicted) == mnist.test.labels))
    staged.save("knn_accuracy", table)

  # (4) Inpainting of binarized test digits.
  if "inpainting" not in staged:
    staged.save("inpainting", _inpainting(config, models, test_x, train_gray, keys, staged.path("inpainting.png")))
  for name in ("prior_samples", "interpolation", "knn_accuracy", "inpainting"):
    results[name] = staged[name]
  workdir_lib.write_json(staged.path("results.json"), results, sort_keys=False)
  workdir_lib.write_text(staged.path("results.md"), markdown(results))
  staged.commit(OUTPUTS, OUTPUTS)
  return results


def _inpainting(config: LatentStudyConfig, models: dict, test_x, train_gray, keys: dict, picture) -> dict:
  """Table (4): each model and method fills the hidden pixels of each mask; the picture at `picture`."""
  n = min(config.num_inpaint, len(test_x))
  x = jnp.asarray(test_x[:n])
  mean_image = jnp.broadcast_to(jnp.mean(train_gray, axis=0), x.shape)  # the expected binarized pixel
  masks = {"lower half": latent.lower_half_mask(n), "random 12x12 block": latent.random_block_mask(keys["masks"], n)}
  table, inpaint_pictures = {}, []
  fills_per_mask = len(models) * len(latent.INPAINT_METHODS) - 1  # the AE has no predictive inpainting
  with progress_lib.Progress("inpainting", len(masks) * fills_per_mask, unit="fills") as shown:
    for mask_name, observed in masks.items():
      fills = {"mean training image": jnp.where(observed, x, mean_image)}
      for name, (model, params) in models.items():
        for method in latent.INPAINT_METHODS:
          if method == "predictive" and name == "AE":
            continue  # no posterior to average over
          fills[f"{name}, {method}"] = latent.inpaint(model, params, x, observed, method, config.inpaint_steps,
                                                      prior=name == "VAE", key=keys["inpaint"],
                                                      num_samples=config.inpaint_samples)
          shown.advance(1)
      table[mask_name] = {
          label: {"nats_per_hidden_pixel": float(-latent.masked_log_likelihood(x, fill, observed)),
                  "hidden_pixel_accuracy": float(jnp.sum(jnp.where(observed, 0.0, (fill > 0.5) == (x > 0.5)))
                                                 / jnp.sum(~observed))}
          for label, fill in fills.items()}
      first = slice(0, 8)
      masked_input = jnp.where(observed[first], x[first], 0.5)
      rows = [masked_input, fills["VAE, predictive"][first], fills["AE, optimize"][first], x[first]]
      inpaint_pictures.append((f"{mask_name}: input / VAE / AE / original",
                               plots.image_grid(jnp.concatenate(rows), 8)))
  plots.save_panels(picture, inpaint_pictures)
  return table


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


def prior_sample_study(models, key, probs_fn, train_codes, num):
  """Decoded prior samples of each model and the judge's verdict on them (`classifier.recognisability`).

  `models`: {name: (model, params)}; for the "AE" also samples from a Gaussian fitted
  to its training codes `train_codes[name]` [N, L]. `probs_fn(images) -> [N, 10]`.
  Returns ({generator: recognisability}, {generator: 64 images [64, D]}).
  """
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
