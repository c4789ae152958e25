import gzip
import pickle

import numpy as np
import pytest
import tensorflow_datasets as tfds

import jaxvae
from jaxvae import data


def test_validate_accepts_levels_and_unit_floats():
  levels = np.arange(256, dtype=np.uint8)[None].repeat(4, 0)[:, :196].repeat(4, 1)
  split = data.validate_split(levels.reshape(4, 28, 28), np.arange(4), "x")
  assert split.images.shape == (4, 784) and split.images.dtype == np.uint8
  from_256 = data.validate_split(split.images / 256.0, np.arange(4), "x")
  np.testing.assert_array_equal(from_256.images, split.images)


@pytest.mark.parametrize("images, labels, message", [
    (np.full((2, 784), np.nan, np.float32), [0, 1], "NaN"),
    (np.full((2, 784), 1.5, np.float32), [0, 1], "outside"),
    (np.full((2, 784), 300), [0, 1], "outside"),
    (np.zeros((2, 100), np.uint8), [0, 1], "shape"),
    (np.zeros((2, 784), np.uint8), [0, 10], "labels"),
    (np.zeros((2, 784), np.uint8), [0], "labels for"),
])
def test_validate_rejects_bad_data(images, labels, message):
  with pytest.raises(jaxvae.DataError, match=message):
    data.validate_split(images, np.asarray(labels), "train")


def test_offline_copy_checks_sha256_before_unpickling(tmp_path):
  path = tmp_path / "mnist.pkl.gz"
  with gzip.open(path, "wb") as f:
    pickle.dump("not mnist", f)
  with pytest.raises(jaxvae.DataError, match="sha256"):
    data.load_offline(path)


def test_offline_copy_is_the_standard_split():
  mnist = data.load_offline()
  assert mnist.train.images.shape == (60000, 784) and mnist.test.images.shape == (10000, 784)
  assert mnist.train.images.dtype == np.uint8 and mnist.train.images.max() == 255
  assert np.bincount(mnist.test.labels).tolist()[:3] == [980, 1135, 1032]


def test_npz_source(tiny_npz):
  mnist = jaxvae.load_mnist("npz", path=tiny_npz)
  assert mnist.train.images.shape == (512, 784) and mnist.test.labels.shape == (128,)
  with pytest.raises(jaxvae.DataError, match="no such file"):
    jaxvae.load_mnist("npz", path=tiny_npz.parent / "missing.npz")


def test_tfds_source_under_mock_data():
  with tfds.testing.mock_data(num_examples=20):
    mnist = jaxvae.load_mnist("tfds")
  assert mnist.source.startswith("tfds")
  assert mnist.train.images.shape == (20, 784) and mnist.train.images.dtype == np.uint8
  assert mnist.test.labels.max() < 10


def test_tfds_not_prepared_is_one_clear_error(tmp_path):
  with pytest.raises(jaxvae.DataError, match="TFDS mnist unavailable.*--tfds_download"):
    jaxvae.load_mnist("tfds", data_dir=tmp_path)


def test_test_targets_are_fixed():
  images = np.full((3, 784), 100, np.uint8)
  a, b = data.test_targets(images, "dynamic"), data.test_targets(images, "dynamic")
  np.testing.assert_array_equal(a, b)
  assert set(np.unique(a)) == {0.0, 1.0}
  np.testing.assert_allclose(data.test_targets(images, "none"), 100 / 255)


def test_binary_images_are_read_as_black_and_white():
  labels = np.zeros(2, int)
  as_bool = data.validate_split(np.eye(2, 784, dtype=bool), labels, "x").images
  as_int = data.validate_split(np.eye(2, 784, dtype=np.int64), labels, "x").images
  np.testing.assert_array_equal(as_bool, as_int)
  assert set(np.unique(as_bool)) == {0, 255}


def test_object_images_are_refused():
  with pytest.raises(jaxvae.DataError, match="dtype object"):
    data.validate_split(np.full((2, 784), None, object), np.zeros(2, int), "x")
