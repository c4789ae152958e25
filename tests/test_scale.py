"""Scale: vmapped ensembles, the batch split over devices, and several processes agree with one run."""

import os
import signal
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxvae
from tests.conftest import make_digits
from tests.test_cli import ROOT, run_cli
from tests.test_reliability import args, assert_refused, params, records

EPOCHS = "--num_epochs=3"


def assert_same_records(a, b):
  assert [r["epoch"] for r in a] == [r["epoch"] for r in b]
  for ra, rb in zip(a, b):
    assert ra.keys() == rb.keys()
    for key in ra:
      np.testing.assert_allclose(ra[key], rb[key], rtol=2e-5, atol=1e-5, err_msg=key)


@pytest.fixture(scope="module")
def single(tiny_npz, tmp_path_factory):
  """A plain run with seed 1 on one device: the reference every scaled run must reproduce."""
  workdir = tmp_path_factory.mktemp("single") / "run"
  run_cli(*args(tiny_npz, workdir, EPOCHS, "--seed=1"))
  return workdir


def test_key_streams_of_an_ensemble_are_those_of_its_seeds():
  stacked = jaxvae.KeyStreams.from_seeds([3, 7])
  for index, seed in enumerate([3, 7]):
    for a, b in zip(stacked.at(index), jaxvae.KeyStreams.from_seed(seed)):
      np.testing.assert_array_equal(jax.random.key_data(a), jax.random.key_data(b))


def test_ensemble_epoch_trains_each_replica_as_its_own_run():
  images, _ = make_digits(256, 0)
  images = jnp.asarray(jaxvae.data.prepare_train_images(images.reshape(256, -1), "dynamic"))
  model, optimizer = jaxvae.VAE(latent_dim=3, hidden_dim=32), optax.adam(3e-3)
  seeds = [0, 5, 9]
  keys = jaxvae.KeyStreams.from_seeds(seeds)
  state = jaxvae.create_train_state(model, optimizer, keys.init)
  assert jax.tree.leaves(state.params)[0].shape[0] == 3
  epoch = jaxvae.make_train_epoch(model, optimizer, 64, "dynamic", ensemble=True)
  losses = []
  for e in range(3):
    epoch_keys = jax.vmap(jax.random.fold_in, (0, None))(keys.data, e)
    state, metrics = epoch(state, images, epoch_keys, keys.train)
    losses.append(metrics["neg_elbo"])
  single_epoch = jaxvae.make_train_epoch(model, optimizer, 64, "dynamic")
  for index, seed in enumerate(seeds):
    one = jaxvae.KeyStreams.from_seed(seed)
    single = jaxvae.create_train_state(model, optimizer, one.init)
    for e in range(3):
      single, metrics = single_epoch(single, images, jax.random.fold_in(one.data, e), one.train)
      np.testing.assert_allclose(losses[e][index], metrics["neg_elbo"], rtol=1e-5)
    # Adam moves a weight whose gradient is ~0 by up to the learning rate either way, so
    # float-rounding differences show at that scale in a few weights.
    for a, b in zip(jax.tree.leaves(single.params), jax.tree.leaves(state.params)):
      np.testing.assert_allclose(a, b[index], atol=1e-3)


def test_cli_ensemble_writes_each_replica_apart_and_matches_single_runs(tiny_npz, tmp_path, single):
  workdir = tmp_path / "ensemble"
  proc = run_cli(*args(tiny_npz, workdir, EPOCHS, "--num_replicas=2"))
  assert proc.stdout.count("final:") == 2
  for seed in (0, 1):
    replica = workdir / f"seed={seed}"
    for name in ("config.json", "metrics.jsonl", "samples.png", "reconstructions.png", "images/epoch_003_samples.png"):
      assert (replica / name).is_file(), (replica, name)
    config = jaxvae.Config.from_json_file(replica / "config.json")
    assert (config.seed, config.num_replicas) == (seed, 1)
  assert_same_records(records(workdir / "seed=1"), records(single))
  for a, b in zip(params(workdir / "seed=1"), params(single)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  stacked = jaxvae.load_model(workdir)[1]
  assert jax.tree.leaves(stacked)[0].shape[0] == 2
  # Finished: running again changes nothing; another ensemble size is another run.
  assert run_cli(*args(tiny_npz, workdir, EPOCHS, "--num_replicas=2")).stdout.count("is complete") == 2
  assert_refused(args(tiny_npz, workdir, EPOCHS, "--num_replicas=3"), "num_replicas: 2 -> 3", workdir)
  # A replica's directory is not a run of its own: training there would overwrite its records.
  assert_refused(args(tiny_npz, workdir / "seed=1", EPOCHS, "--seed=1"), "is one replica of the ensemble", workdir)


def test_batch_split_over_four_devices_matches_one(tiny_npz, tmp_path, single):
  workdir = tmp_path / "four"
  devices = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
  proc = run_cli(*args(tiny_npz, workdir, EPOCHS, "--seed=1"), env=devices)
  assert "batch split over 4 devices" in proc.stderr
  assert_same_records(records(workdir), records(single))
  refused = run_cli(*args(tiny_npz, tmp_path / "odd", EPOCHS, "--batch_size=62"), env=devices, check=False)
  assert refused.returncode and refused.stderr.strip().splitlines()[-1] == (
      "error: batch_size 62 is not a multiple of the 4 devices each batch is split over")


def free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def start_processes(cli, num):
  """`num` CLI processes of one multi-process run (--process_id 0 .. num-1)."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return [subprocess.Popen([sys.executable, "-m", "experiments.mnist", *cli, f"--process_id={i}"], cwd=ROOT, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(num)]


def test_two_processes_match_one(tiny_npz, tmp_path, single):
  workdir = tmp_path / "two"
  cli = args(tiny_npz, workdir, EPOCHS, "--seed=1", f"--coordinator_address=localhost:{free_port()}",
             "--num_processes=2")
  procs = start_processes(cli, 2)
  outputs = [p.communicate(timeout=300) for p in procs]
  assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outputs]
  assert "batch split over 2 devices" in outputs[1][1]
  assert "final:" in outputs[0][0] and "final:" not in outputs[1][0]  # process 0 reports and writes
  assert_same_records(records(workdir), records(single))


def test_sigterm_to_one_process_stops_all_after_the_same_epoch(tiny_npz, tmp_path):
  workdir = tmp_path / "two"
  cli = args(tiny_npz, workdir, "--num_epochs=500", f"--coordinator_address=localhost:{free_port()}",
             "--num_processes=2")
  procs = start_processes(cli, 2)
  metrics = workdir / "metrics.jsonl"
  deadline = time.time() + 240
  while time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
    time.sleep(0.05)
  procs[1].send_signal(signal.SIGTERM)
  outputs = [p.communicate(timeout=240) for p in procs]
  assert [p.returncode for p in procs] == [128 + signal.SIGTERM] * 2, [err[-2000:] for _, err in outputs]
  epochs = {int(err.split("stopped after epoch ")[1].split()[0]) for _, err in outputs}
  assert len(epochs) == 1 and epochs == {len(records(workdir))}
  epoch = epochs.pop()
  assert (workdir / f"checkpoints/{epoch}").is_dir()
  assert (784, 32) in {a.shape for a in jax.tree.leaves(jaxvae.load_model(workdir)[1])}  # loads in one process
  # ... and the run resumes in one process, on one device.
  single = [a for a in cli if not a.startswith(("--num_processes", "--coordinator_address", "--num_epochs"))]
  proc = run_cli(*single, f"--num_epochs={epoch + 1}")
  assert f"epoch {epoch + 1:4d}/{epoch + 1}" in proc.stdout and records(workdir)[-1]["final"]
