"""The pictures of a trained VAE: sample and reconstruction grids, latent scatter, paths, manifolds.

`write_grids` and `write_latent_pictures` write the files a run leaves in its
workdir (see `jaxvae.run`); the panels and pairs they use serve the studies too.
"""

import functools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from jaxvae import evaluate
from jaxvae import latent
from jaxvae import plots

NUM_GRID = 64
NUM_PATH = 10  # decoded points along each interpolation path
NUM_MANIFOLD = 20  # the manifold pictures are NUM_MANIFOLD x NUM_MANIFOLD decoded z
MIN_TEST_IMAGES = 8  # one row of the reconstruction grid


@functools.partial(jax.jit, static_argnums=0)
def _grid_images(model, params, z_NxL, x_MxD):
  """Bernoulli means of decoded z and of the reconstructions (posterior means) of x."""
  vae = model.bind(params)
  return jax.nn.sigmoid(vae.decode(z_NxL)), jax.nn.sigmoid(vae.decode(vae.encode(x_MxD)[0]))


def write_grids(model, params, z_NxL, test_x_NxD, directory: pathlib.Path, prefix: str = "") -> None:
  """Prior samples (fixed z) and test reconstructions (posterior means) as PNG grids."""
  originals = test_x_NxD[: min(NUM_GRID // 2, len(test_x_NxD) // 8 * 8)]
  samples, recons = _grid_images(model, params, z_NxL, originals)
  pairs = np.stack([np.asarray(originals).reshape(-1, 8, originals.shape[-1]),
                    np.asarray(recons).reshape(-1, 8, originals.shape[-1])], axis=1)
  plots.save_image_grid(directory / f"{prefix}samples.png", samples, num_cols=8)
  plots.save_image_grid(directory / f"{prefix}reconstructions.png", pairs.reshape(-1, originals.shape[-1]), num_cols=8)


@functools.partial(jax.jit, static_argnums=0)
def _latent_picture_arrays(model, params, x_NxD, starts_P, ends_P):
  """Latent means [N, L], decoded paths [methods, P, NUM_PATH, D], manifold grids [spacings, M*M, D] (L = 2)."""
  z_NxL = evaluate.latent_means(model, params, x_NxD)
  paths = jnp.stack([jax.vmap(lambda a, b, m=m: latent.interpolate(a, b, NUM_PATH, m))(z_NxL[starts_P], z_NxL[ends_P])
                     for m in latent.INTERPOLATIONS])
  grids = None
  if model.latent_dim == 2:
    grids = jnp.stack([latent.manifold_grid(NUM_MANIFOLD, spacing) for spacing in latent.GRID_SPACINGS])
    grids = latent.decode_means(model, params, grids)
  return z_NxL, latent.decode_means(model, params, paths), grids


def write_latent_pictures(model, params, test_x_NxD, test_labels_N, directory: pathlib.Path, title: str) -> None:
  """latent.png, interpolations.png and (for a 2-D latent space) manifold*.png; see the module docstring."""
  test_x_NxD = np.asarray(test_x_NxD)
  starts, ends = interpolation_pairs(test_labels_N)
  z_NxL, paths_MxPxTxD, grids = jax.device_get(_latent_picture_arrays(model, params, test_x_NxD, starts, ends))
  two_d = z_NxL.shape[1] == 2
  plots.save_latent_scatter(directory / "latent.png", [latent_scatter_panel(title, z_NxL, test_labels_N)],
                            ("z1", "z2") if two_d else ("PC 1", "PC 2"))
  cells = []  # per pair: a row for the linear path, one for the spherical, between the two originals
  for p, (start, end) in enumerate(zip(starts, ends)):
    for paths_PxTxD in paths_MxPxTxD:
      cells += [test_x_NxD[start], *paths_PxTxD[p], test_x_NxD[end]]
  plots.save_image_grid(directory / "interpolations.png", np.asarray(cells), num_cols=NUM_PATH + 2)
  if two_d:
    for name, grid in zip(("manifold.png", "manifold_linear.png"), grids):
      plots.save_image_grid(directory / name, grid, num_cols=NUM_MANIFOLD, scale=1)


def latent_scatter_panel(title: str, z_NxL, labels_N) -> tuple[str, np.ndarray, np.ndarray]:
  """A `plots.save_latent_scatter` panel of latent means: themselves when 2-D, else their 2-D PCA."""
  if z_NxL.shape[1] == 2:
    return f"{title}: test set latent means", z_NxL, labels_N
  return f"{title}: test set latent means, 2-D PCA", np.asarray(latent.pca(z_NxL)), labels_N


def interpolation_pairs(labels_N, num_pairs: int = 6) -> tuple[np.ndarray, np.ndarray]:
  """Indices of `num_pairs` test digits and of partners with another label: the first test
  image of digit d and the first of digit (d + 5) mod 10, for d = 0, 1, ..."""
  labels_N = np.asarray(labels_N)
  first = {d: int(np.argmax(labels_N == d)) for d in np.unique(labels_N)}
  digits = sorted(first)
  pairs = [(first[d], first[digits[(i + len(digits) // 2) % len(digits)]]) for i, d in enumerate(digits)]
  starts, ends = zip(*pairs[:num_pairs])
  return np.asarray(starts), np.asarray(ends)
