"""The experiment entry point, end to end, as a user runs it."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

import jaxvae

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = ["--hidden_dim=32", "--latent_dim=3", "--batch_size=64", "--eval_iwae_samples=20", "--num_epochs=2"]


def run_cli(*args, check=True, env=None, module="experiments.mnist"):
  """Runs `python -m module args...` from the repository root; raises with its stderr if it fails."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", **(env or {}))
  proc = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)
  if check and proc.returncode:
    raise AssertionError(proc.stderr[-3000:])
  return proc


def test_cli_end_to_end_writes_every_artifact_and_reloads(tiny_npz, tmp_path):
  workdir = tmp_path / "run"
  proc = run_cli("--data_source=npz", f"--data_path={tiny_npz}", f"--workdir={workdir}", *TINY)
  assert proc.stdout.count("images/s") == 2 and "final: test -ELBO" in proc.stdout
  for name in ("config.json", "metrics.jsonl", "samples.png", "reconstructions.png",
               "images/epoch_002_samples.png", "checkpoints/2"):
    assert (workdir / name).exists(), name
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["epoch"] for r in records] == [1, 2, 2] and records[-1]["final"]
  final = records[-1]
  assert final["iwae_nll"] <= final["test_neg_elbo"] and final["iwae_samples"] == 20
  assert json.loads((workdir / "config.json").read_text())["latent_dim"] == 3

  # The checkpoint reloads into a model that gives the same test ELBOs: the epoch's one draw per
  # image, and the final record's many, whose Monte-Carlo error is stated and below 0.01 nats.
  model, params, config = jaxvae.load_model(workdir)
  mnist = jaxvae.load_mnist("npz", path=tiny_npz)
  x = jnp.asarray(jaxvae.test_targets(mnist.test.images, config.binarization))
  terms = jaxvae.elbo_terms(model, params, jaxvae.KeyStreams.from_seed(config.seed).eval, x)
  np.testing.assert_allclose(-float(jnp.mean(terms.elbo)), records[1]["test_neg_elbo"], rtol=1e-5)
  estimate = jaxvae.elbo_estimate(model, params, jaxvae.KeyStreams.from_seed(config.seed).eval, x)
  np.testing.assert_allclose(-estimate.elbo, final["test_neg_elbo"], rtol=1e-6)
  # (This two-epoch model's ELBO varies so much over draws that 1,024 per image, the cap, are
  # needed for its 128 test images; tests/test_inference.py checks the target where it is reachable.)
  assert final["test_neg_elbo_mc_stderr"] == pytest.approx(estimate.mc_stderr)
  assert estimate.mc_stderr < 0.01 or estimate.num_samples == 1024
  assert final["test_elbo_samples"] == estimate.num_samples >= 16 and final["test_neg_elbo_stderr"] > 0
  assert abs(final["test_neg_elbo"] - records[1]["test_neg_elbo"]) < 5 * np.std(-terms.elbo) / np.sqrt(len(x))
  mean, logvar = model.bind(params).encode(x[:2])
  assert mean.shape == logvar.shape == (2, 3)

  # Running the finished command again changes nothing.
  before = (workdir / "metrics.jsonl").read_text()
  again = run_cli("--data_source=npz", f"--data_path={tiny_npz}", f"--workdir={workdir}", *TINY)
  assert "is complete" in again.stdout and (workdir / "metrics.jsonl").read_text() == before

  # A final record from before the many-draw estimate is evaluated again, not trained again.
  old_final = {k: v for k, v in final.items() if k not in ("test_neg_elbo_mc_stderr", "test_elbo_samples")}
  (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [*records[:2], old_final]))
  again = run_cli("--data_source=npz", f"--data_path={tiny_npz}", f"--workdir={workdir}", *TINY)
  assert "is complete" not in again.stdout and "images/s" not in again.stdout
  assert (workdir / "metrics.jsonl").read_text().splitlines()[:2] == before.splitlines()[:2]
  assert jaxvae.read_metrics(workdir / "metrics.jsonl")[-1]["test_elbo_samples"] == final["test_elbo_samples"]

  # More epochs resume from the checkpoint of epoch 2.
  more = run_cli("--data_source=npz", f"--data_path={tiny_npz}", f"--workdir={workdir}", *TINY[:-1],
                 "--num_epochs=3")
  assert "epoch    3/3" in more.stdout and "epoch    1/" not in more.stdout
  epochs = [json.loads(line)["epoch"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert epochs == [1, 2, 3, 3]


def test_conflicting_config_is_refused_and_nothing_is_touched(tiny_npz, tmp_path):
  workdir = tmp_path / "run"
  run_cli("--data_source=npz", f"--data_path={tiny_npz}", f"--workdir={workdir}", *TINY[:-1], "--num_epochs=1")
  before = {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()}
  proc = run_cli("--data_source=npz", f"--data_path={tiny_npz}", f"--workdir={workdir}", *TINY[:-1],
                 "--num_epochs=1", "--learning_rate=0.01", check=False)
  assert proc.returncode != 0
  assert proc.stderr.strip().splitlines()[-1].startswith("error: ")
  assert "learning_rate: 0.001 -> 0.01" in proc.stderr and "--overwrite" in proc.stderr
  assert {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("flag, message", [
    ("--latent_dim=0", "latent_dim must be positive"),
    ("--binarization=sometimes", "--binarization"),
    ("--activation=cosine", "--activation"),
    ("--batch_size=100000", "batch_size 100000 exceeds"),
    ("--num_epochs=-1", "num_epochs must be positive"),
    ("--no_such_flag=1", "no_such_flag"),
])
def test_bad_flags_give_a_clear_error(tiny_npz, tmp_path, flag, message):
  workdir = tmp_path / "run"
  proc = run_cli("--data_source=npz", f"--data_path={tiny_npz}", f"--workdir={workdir}", flag, check=False)
  assert proc.returncode != 0
  assert message in proc.stderr
  assert "Traceback" not in proc.stderr
  assert not (workdir / "checkpoints").exists()


def test_missing_data_file_is_a_clear_error(tmp_path):
  proc = run_cli("--data_source=npz", f"--data_path={tmp_path}/nope.npz", f"--workdir={tmp_path}/run", check=False)
  assert proc.returncode != 0 and "no such file" in proc.stderr.splitlines()[-1]


def test_train_and_evaluate_on_tfds_mock_data(tmp_path):
  config = jaxvae.Config(latent_dim=2, hidden_dim=16, num_epochs=1, batch_size=8, data_source="tfds",
                         eval_iwae_samples=4)
  with tfds.testing.mock_data(num_examples=32):
    final = jaxvae.train_and_evaluate(config, tmp_path / "run")
  assert np.isfinite(final["test_neg_elbo"]) and np.isfinite(final["iwae_nll"])
  assert (tmp_path / "run" / "samples.png").exists()
