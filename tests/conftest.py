"""Shared fixtures: tiny models and a tiny MNIST-like data set, all offline on CPU."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # pylint: disable=g-import-not-at-top
import pytest  # pylint: disable=g-import-not-at-top


def make_digits(num: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Blurry class-dependent blobs as uint8 [num, 28, 28] with labels: learnable structure."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 10, num)
  yy, xx = np.mgrid[:28, :28]
  centers = np.stack([6 + 2 * (labels % 5) * 2, 8 + 6 * (labels // 5)], axis=1)
  dist2 = (yy[None] - centers[:, 0, None, None]) ** 2 + (xx[None] - centers[:, 1, None, None]) ** 2
  images = 255 * np.exp(-dist2 / 18.0) + rng.normal(0, 10, (num, 28, 28))
  return np.clip(images, 0, 255).astype(np.uint8), labels.astype(np.int64)


@pytest.fixture(scope="session")
def tiny_npz(tmp_path_factory):
  """A Keras-layout mnist .npz with 512 train and 128 test images (shared, read-only)."""
  x_train, y_train = make_digits(512, 0)
  x_test, y_test = make_digits(128, 1)
  path = tmp_path_factory.mktemp("data") / "tiny_mnist.npz"
  np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
  return path


@pytest.fixture(scope="session", autouse=True)
def compilation_cache(tmp_path_factory):
  """Lets the CLI subprocesses of the tests share compiled programs (JAX's persistent cache):
  each would otherwise spend most of its ~20 s compiling the same tiny models again."""
  settings = {"JAX_COMPILATION_CACHE_DIR": str(tmp_path_factory.mktemp("jax_cache")),
              "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1"}
  saved = {k: os.environ.get(k) for k in settings}
  os.environ.update(settings)
  yield
  for key, value in saved.items():
    if value is None:
      os.environ.pop(key)
    else:
      os.environ[key] = value


def make_sentences(num: int, seed: int) -> list[str]:
  """Sentences of a tiny grammar ("the big dog sat on a mat ."), one per line: learnable structure."""
  rng = np.random.default_rng(seed)
  nouns, verbs = ["dog", "cat", "bird", "child"], ["sat", "ran", "slept", "stood"]
  adjectives, places = ["big", "small", "red", "old"], ["mat", "log", "hill", "bed"]
  lines = []
  for _ in range(num):
    words = ["the", *(rng.choice(adjectives, rng.integers(0, 3))), rng.choice(nouns), rng.choice(verbs)]
    if rng.random() < 0.6:
      words += ["on", "a", rng.choice(places)]
    lines.append(" ".join(words + ["."]))
  return lines


@pytest.fixture(scope="session")
def tiny_text(tmp_path_factory):
  """A one-sentence-per-line corpus of 400 sentences (shared, read-only)."""
  path = tmp_path_factory.mktemp("text") / "tiny.txt"
  path.write_text("\n".join(make_sentences(400, 0)) + "\n")
  return path
