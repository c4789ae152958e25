"""PNG image grids (Pillow)."""

import pathlib

import numpy as np
from PIL import Image

from jaxvae import data as data_lib


def image_grid(images_NxD, num_cols: int, image_shape=data_lib.IMAGE_SHAPE, pad: int = 2) -> np.ndarray:
  """Tiles N images with values in [0, 1] into one uint8 [H, W] array, row-major.

  Missing cells of the last row stay black; cells are separated by `pad` gray pixels.
  """
  images = np.clip(np.asarray(images_NxD, np.float32), 0.0, 1.0).reshape(-1, *image_shape)
  n, (h, w) = len(images), image_shape
  num_rows = -(-n // num_cols)
  grid = np.full((num_rows * (h + pad) + pad, num_cols * (w + pad) + pad), 0.5, np.float32)
  for i, image in enumerate(images):
    r, c = divmod(i, num_cols)
    grid[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + c * (w + pad) : pad + c * (w + pad) + w] = image
  return np.round(grid * 255).astype(np.uint8)


def save_image_grid(path, images_NxD, num_cols: int, scale: int = 2, **kwargs) -> pathlib.Path:
  """Writes `image_grid(images_NxD, num_cols)` as a grayscale PNG, upscaled `scale` times."""
  grid = image_grid(images_NxD, num_cols, **kwargs)
  image = Image.fromarray(grid, mode="L")
  if scale != 1:
    image = image.resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST)
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  image.save(path)
  return path
