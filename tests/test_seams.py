"""jaxvae's seams: a model of one's own loads by name in code; markers import nothing; no import cycles."""

import ast
import pathlib
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxvae
from jaxvae import workdir as workdir_lib

PACKAGE = pathlib.Path(jaxvae.__file__).parent


def imports_of(path: pathlib.Path) -> set[str]:
  """The jaxvae modules `path` imports anywhere in it (module level or inside functions)."""
  names = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.ImportFrom) and node.module == "jaxvae":
      names.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("jaxvae."):
      names.add(node.module.split(".")[1])
    elif isinstance(node, ast.Import):
      names.update(alias.name.split(".")[1] for alias in node.names if alias.name.startswith("jaxvae."))
  return names


def test_the_package_has_no_import_cycle():
  graph = {p.stem: imports_of(p) & {q.stem for q in PACKAGE.glob("*.py")} for p in PACKAGE.glob("*.py")
           if p.stem != "__init__"}
  done, path = set(), []

  def visit(name):
    if name in path:
      raise AssertionError("import cycle: " + " -> ".join(path[path.index(name):] + [name]))
    if name in done:
      return
    path.append(name)
    for other in sorted(graph.get(name, ())):
      visit(other)
    path.pop()
    done.add(name)

  for name in sorted(graph):
    visit(name)


@pytest.mark.parametrize("name", ["os.system", "subprocess.Popen", "jaxvae.cli.run", "builtins.eval"])
def test_a_marker_naming_anything_but_a_known_class_imports_nothing(tmp_path, name):
  workdir_lib.write_json(tmp_path / "jaxvae.json", {"kind": "vae", "format": 2,
                                                    "model": {"class": name, "fields": {"args": ["touch", "x"]}}})
  before = set(sys.modules)
  with pytest.raises(jaxvae.CheckpointError, match="a module class jaxvae does not know; name it in code"):
    jaxvae.load_model(tmp_path)
  assert set(sys.modules) == before and not (tmp_path / "x").exists()


class TinyGaussianVAE(nn.Module):
  """A VAE jaxvae does not know: one Dense layer each way, the standard encode/decode."""

  latent_dim: int = 2
  output_dim: int = 784

  def setup(self):
    self.encoder = nn.Dense(2 * self.latent_dim)
    self.decoder = nn.Dense(self.output_dim)

  def encode(self, x_D):
    return jnp.split(self.encoder(x_D), 2, axis=-1)

  def decode(self, z_L):
    return self.decoder(z_L)

  def __call__(self, x_D, z_L):
    return self.encode(x_D), self.decode(z_L)


def test_a_module_of_ones_own_trained_through_fit_loads_when_named(tiny_npz, tmp_path):
  model = TinyGaussianVAE()
  params = model.init(jax.random.key(0), jnp.zeros(784), jnp.zeros(2))
  images = jnp.asarray(np.load(tiny_npz)["x_train"].reshape(-1, 784))

  def loss_fn(params, images_BxD, batch_key, step_key, step, context):
    del step, context
    x_BxD = jaxvae.train_targets(batch_key, images_BxD, "dynamic")
    return -jnp.mean(jaxvae.batch_elbo(model, params, step_key, x_BxD).elbo), {}

  optimizer = optax.adam(1e-3)
  epoch_fn = jaxvae.make_epoch(loss_fn, optimizer, batch_size=64)
  keys = jaxvae.KeyStreams.from_seed(0)
  with workdir_lib.Workdir(tmp_path / "run", "tiny vae", workdir_lib.RUN_OUTPUTS, config={},
                           marker_fields={"model": jaxvae.checkpoints.model_spec(model)}) as wd:
    jaxvae.fit(wd, state=jaxvae.init_state(params, optimizer), num_epochs=1,
               train_epoch=lambda state, epoch: epoch_fn(state, images, jax.random.fold_in(keys.data, epoch),
                                                         keys.train),
               record=lambda params, replica, epoch, metrics: {"train_loss": float(metrics["loss"])},
               final=lambda params, replica: {})
  with pytest.raises(jaxvae.CheckpointError, match="jaxvae.load_model\\(workdir, model=TheClass\\)"):
    jaxvae.load_model(tmp_path / "run")
  with pytest.raises(jaxvae.CheckpointError, match="not a VAE"):
    jaxvae.load_model(tmp_path / "run", model=jaxvae.VAE)
  loaded, loaded_params, _ = jaxvae.load_model(tmp_path / "run", model=TinyGaussianVAE)
  assert loaded == model
  trained = jax.tree.leaves(loaded_params)
  assert [a.shape for a in trained] == [a.shape for a in jax.tree.leaves(params)]
  assert not all(np.array_equal(a, b) for a, b in zip(trained, jax.tree.leaves(params)))  # trained, not init
  mean, _ = loaded.apply(loaded_params, jnp.zeros(784), method=loaded.encode)
  assert mean.shape == (2,)
  # The tools take it as it is: the IWAE bound, AIS and the inference gaps.
  x = jaxvae.test_targets(np.load(tiny_npz)["x_test"][:4].reshape(-1, 784), "dynamic")
  iwae = jaxvae.evaluate.iwae_bounds(loaded, loaded_params, jax.random.key(1), x, 20, 4, 20, progress=None)
  keys = jax.random.split(jax.random.key(2), 4)
  ais = jaxvae.inference.batch_ais(loaded, loaded_params, keys, x,
                                  jaxvae.inference.AISSettings(num_steps=5, num_chains=2))
  gaps = jaxvae.inference.batch_gap_terms(loaded, loaded_params, keys, x, jaxvae.inference.GapSettings(
      num_steps=3, num_samples=2, eval_samples=4))
  assert np.isfinite(iwae).all() and np.isfinite(np.asarray(ais.log_weights)).all()
  assert np.isfinite(np.asarray(gaps.elbo_optimal)).all()


def test_fit_names_the_epoch_metrics_it_needs(tmp_path):
  model = TinyGaussianVAE()
  params = model.init(jax.random.key(0), jnp.zeros(784), jnp.zeros(2))
  with workdir_lib.Workdir(tmp_path / "run", "tiny vae", workdir_lib.RUN_OUTPUTS, config={}) as wd:
    with pytest.raises(jaxvae.ConfigError, match="lack num_images, nonfinite_steps, first_nonfinite_step"):
      jaxvae.fit(wd, state=jaxvae.init_state(params, optax.adam(1e-3)), num_epochs=1,
                 train_epoch=lambda state, epoch: (state, {"loss": jnp.zeros(())}),
                 record=lambda params, replica, epoch, metrics: {}, final=lambda params, replica: {})
