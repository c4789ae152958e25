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


def pyplot():
  """matplotlib.pyplot on the non-interactive Agg backend (files only)."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  return plt


def save_panels(path, panels: list[tuple[str, np.ndarray]], num_cols: int | None = None,
                scale: float = 2.0) -> pathlib.Path:
  """Writes uint8 image grids (from `image_grid`), each under its title, `num_cols` to a row (default all)."""
  plt = pyplot()
  num_cols = num_cols or len(panels)
  num_rows = -(-len(panels) // num_cols)
  height = max(grid.shape[0] for _, grid in panels)
  width = max(grid.shape[1] for _, grid in panels)
  fig, axes = plt.subplots(num_rows, num_cols, squeeze=False,
                           figsize=(num_cols * (scale * width / 100 + 0.3), num_rows * (scale * height / 100 + 0.4)))
  for ax in axes.ravel():
    ax.axis("off")
  for ax, (title, grid) in zip(axes.ravel(), panels):
    ax.imshow(grid, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    ax.set_title(title, fontsize=9)
  return save_figure(fig, path)


def save_latent_scatter(path, panels: list[tuple[str, np.ndarray, np.ndarray]],
                        axis_labels=("z1", "z2")) -> pathlib.Path:
  """Scatters of 2-D latent points coloured by digit label, side by side: panels of (title, z [N, 2], labels [N])."""
  plt = pyplot()
  fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels) + 1.0, 5.0), squeeze=False)
  cmap = plt.get_cmap("tab10")
  for ax, (title, z_Nx2, labels_N) in zip(axes[0], panels):
    z_Nx2, labels_N = np.asarray(z_Nx2), np.asarray(labels_N)
    for digit in range(data_lib.NUM_CLASSES):
      points = z_Nx2[labels_N == digit]
      ax.scatter(points[:, 0], points[:, 1], s=2, alpha=0.6, color=cmap(digit), label=str(digit), rasterized=True)
    ax.set_xlabel(axis_labels[0])
    ax.set_ylabel(axis_labels[1])
    ax.set_title(title, fontsize=10)
  axes[0, -1].legend(markerscale=5, fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5), title="digit")
  return save_figure(fig, path)


def save_figure(fig, path) -> pathlib.Path:
  """Writes a matplotlib figure as a PNG (parent directories created) and closes it."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=100, bbox_inches="tight")
  fig.clf()
  pyplot().close(fig)
  return path
