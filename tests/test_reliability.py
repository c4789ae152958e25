"""Runs survive interruptions, stop on divergence and refuse bad input without losing anything."""

import gzip
import json
import pickle
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxvae
from tests.test_cli import ROOT, run_cli

TIMING = ("images_per_sec", "epoch_seconds", "wall_seconds", "iwae_seconds")


def args(tiny_npz, workdir, *extra):
  return ["--data_source=npz", f"--data_path={tiny_npz}", f"--workdir={workdir}", "--hidden_dim=32",
          "--latent_dim=3", "--batch_size=64", "--eval_iwae_samples=10", *extra]


def records(workdir):
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in lines]


def params(workdir):
  return jax.tree.leaves(jaxvae.load_model(workdir)[1])


def snapshot(workdir):
  return {p: p.read_bytes() for p in sorted(workdir.rglob("*")) if p.is_file()}


def assert_refused(cli_args, message, workdir=None, module="experiments.mnist"):
  """The CLI exits non-zero with one `error:` line containing `message`, and `workdir` (if any) is unchanged."""
  before = None if workdir is None else snapshot(workdir)
  proc = run_cli(*cli_args, check=False, module=module)
  assert proc.returncode != 0 and "Traceback" not in proc.stderr
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and message in last, last
  assert workdir is None or snapshot(workdir) == before


def start_and_signal(cli_args, workdir, sig, after_epochs, module="experiments.mnist", ready=None, then=None):
  """Starts the CLI; once `after_epochs` epochs are recorded in `workdir` (or `ready()` holds), sends
  `sig` (if not None) and calls `then()` (if given); returns the outcome of the CLI."""
  proc = subprocess.Popen([sys.executable, "-m", module, *cli_args], cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  metrics = workdir / "metrics.jsonl"
  ready = ready or (lambda: metrics.exists() and len(metrics.read_bytes().splitlines()) >= after_epochs)
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    if ready():
      if sig is not None:
        proc.send_signal(sig)
      if then is not None:
        then()
      break
    time.sleep(0.005)
  stdout, stderr = proc.communicate(timeout=240)
  return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


@pytest.fixture(scope="module")
def reference(tiny_npz, tmp_path_factory):
  """An uninterrupted 30-epoch run, shared by the interruption tests."""
  workdir = tmp_path_factory.mktemp("reference") / "run"
  run_cli(*args(tiny_npz, workdir, "--num_epochs=30", "--checkpoint_every=3"))
  return workdir


def test_kill_9_then_resume_is_bit_identical(tiny_npz, tmp_path, reference):
  workdir = tmp_path / "killed"
  cli = args(tiny_npz, workdir, "--num_epochs=30", "--checkpoint_every=3")
  proc = start_and_signal(cli, workdir, signal.SIGKILL, after_epochs=8)
  assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
  done = len(records(workdir))
  assert 8 <= done < 30
  resumed = run_cli(*cli)
  last_checkpoint = 3 * (done // 3)
  assert f"epoch {last_checkpoint + 1:4d}/30" in resumed.stdout
  for a, b in zip(params(workdir), params(reference)):
    np.testing.assert_array_equal(a, b)
  assert records(workdir) == records(reference)


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tiny_npz, tmp_path, reference):
  workdir = tmp_path / "terminated"
  cli = args(tiny_npz, workdir, "--num_epochs=30", "--checkpoint_every=3")
  proc = start_and_signal(cli, workdir, signal.SIGTERM, after_epochs=4)
  assert proc.returncode == 128 + signal.SIGTERM
  message = proc.stderr.strip().splitlines()[-1]
  assert message.startswith("SIGTERM received: stopped after epoch") and "run the same command" in message
  stopped_at = int(message.split("after epoch ")[1].split()[0])
  assert len(records(workdir)) == stopped_at
  assert (workdir / "checkpoints" / str(stopped_at)).is_dir()  # saved although not a multiple of 3
  run_cli(*cli)
  for a, b in zip(params(workdir), params(reference)):
    np.testing.assert_array_equal(a, b)


def test_same_command_twice_gives_identical_metrics(tiny_npz, tmp_path):
  for name in ("a", "b"):
    run_cli(*args(tiny_npz, tmp_path / name, "--num_epochs=3"))
  assert records(tmp_path / "a") == records(tmp_path / "b")


def test_partial_checkpoint_is_ignored_with_a_warning(tiny_npz, tmp_path):
  workdir = tmp_path / "run"
  run_cli(*args(tiny_npz, workdir, "--num_epochs=2"))
  partial = workdir / "checkpoints" / "3.orbax-checkpoint-tmp-1700000000"
  partial.mkdir()
  (partial / "junk").write_bytes(b"half a write")
  proc = run_cli(*args(tiny_npz, workdir, "--num_epochs=3"))
  assert "ignoring the incomplete checkpoint" in proc.stderr
  assert "epoch    3/3" in proc.stdout and not partial.exists()
  assert [r["epoch"] for r in records(workdir)] == [1, 2, 3, 3]


def damage(checkpoint):
  for f in checkpoint.rglob("*"):
    if f.is_file() and f.name != "_CHECKPOINT_METADATA":
      f.write_bytes(b"garbage")


def test_a_damaged_newest_checkpoint_is_skipped_for_the_older_good_one(tiny_npz, tmp_path):
  workdir, lone = tmp_path / "run", tmp_path / "lone"
  run_cli(*args(tiny_npz, lone, "--num_epochs=3"))
  run_cli(*args(tiny_npz, workdir, "--num_epochs=2"))
  damage(workdir / "checkpoints" / "2" / "params")
  proc = run_cli(*args(tiny_npz, workdir, "--num_epochs=3"))
  assert f"{workdir.absolute()}/checkpoints/2" in proc.stderr and "skipped" in proc.stderr
  assert "epoch    2/3" in proc.stdout and "epoch    1/3" not in proc.stdout
  assert records(workdir) == records(lone)
  for a, b in zip(params(workdir), params(lone)):
    np.testing.assert_array_equal(a, b)
  assert len(list((workdir / "rejected_checkpoints").iterdir())) == 1  # moved aside, not deleted


def test_only_damaged_checkpoints_are_one_clear_error_and_nothing_changes(tiny_npz, tmp_path):
  workdir = tmp_path / "run"
  run_cli(*args(tiny_npz, workdir, "--num_epochs=2"))
  for step in (1, 2):
    damage(workdir / "checkpoints" / str(step))
  assert_refused(args(tiny_npz, workdir, "--num_epochs=3"), "no usable checkpoint", workdir)


def test_foreign_checkpoint_is_refused(tiny_npz, tmp_path):
  small, big = tmp_path / "small", tmp_path / "big"
  run_cli(*args(tiny_npz, small, "--num_epochs=1"))
  run_cli(*args(tiny_npz, big, "--num_epochs=1", "--hidden_dim=48"))
  (big / "checkpoints" / "1").rename(big / "checkpoints" / "old")
  (small / "checkpoints" / "1").rename(big / "checkpoints" / "1")
  assert_refused(args(tiny_npz, big, "--num_epochs=2", "--hidden_dim=48"), "error: checkpoint", big)


def test_divergence_stops_with_epoch_and_step_named(tiny_npz, tmp_path):
  proc = run_cli(*args(tiny_npz, tmp_path / "run", "--num_epochs=3", "--learning_rate=1e30"), check=False)
  assert proc.returncode != 0
  line = proc.stderr.strip().splitlines()[-1]
  assert line.startswith("error: non-finite loss or gradient in epoch 1 at step ")
  assert "--nonfinite_policy=skip" in line


def test_nonfinite_stop_keeps_the_last_good_checkpoint(tiny_npz, tmp_path, monkeypatch):
  """A step that goes non-finite in epoch 3 stops the run; checkpoint 2 stays the newest."""
  make_step = jaxvae.train.make_step

  def failing_step(*a, **k):
    step = make_step(*a, **k)

    def wrapped(state, *rest):
      new_state, metrics = step(state, *rest)
      metrics["finite"] = metrics["finite"] & (state.step != 19)  # 8 steps per epoch: epoch 3
      return new_state, metrics

    return wrapped

  monkeypatch.setattr(jaxvae.train, "make_step", failing_step)
  config = jaxvae.Config(latent_dim=3, hidden_dim=32, batch_size=64, num_epochs=4, data_source="npz",
                         data_path=str(tiny_npz), eval_iwae_samples=0)
  with pytest.raises(jaxvae.NonFiniteError, match="epoch 3 at step 19.*last good checkpoint is epoch 2"):
    jaxvae.train_and_evaluate(config, tmp_path / "run")
  assert jaxvae.checkpoints.manager(tmp_path / "run").latest_step() == 2
  assert [r["epoch"] for r in records(tmp_path / "run")] == [1, 2]


def diverged_state():
  """A small model whose every parameter array holds one inf: every step is non-finite."""
  model = jaxvae.VAE(latent_dim=2, hidden_dim=8)
  optimizer = optax.adam(1e-3)
  state = jaxvae.create_train_state(model, optimizer, jax.random.key(0))
  return model, optimizer, state.replace(params=jax.tree.map(lambda p: p.at[(0,) * p.ndim].set(jnp.inf), state.params))


def test_skip_policy_leaves_state_unchanged_on_a_nonfinite_step():
  model, optimizer, bad = diverged_state()
  images = jnp.full((4, 784), 100, jnp.uint8)
  for policy, unchanged in (("skip", True), ("stop", False)):
    step = jaxvae.make_train_step(model, optimizer, "dynamic", nonfinite_policy=policy)
    new, metrics = step(bad, images, jax.random.key(1), jax.random.key(2))
    assert not bool(metrics["finite"])
    same = all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(bad.params)))
    assert same == unchanged, policy


def test_data_file_with_wrong_sha256_is_refused(tmp_path):
  fake = tmp_path / "mnist.pkl.gz"
  with gzip.open(fake, "wb") as f:
    pickle.dump(((np.zeros((2, 784)), np.zeros(2)),) * 3, f)
  proc = run_cli("--data_source=offline", f"--data_path={fake}", f"--workdir={tmp_path}/run", check=False)
  assert proc.returncode != 0 and "does not match the expected" in proc.stderr.splitlines()[-1]
  assert not (tmp_path / "run" / "config.json").exists()


def test_pixels_out_of_range_are_refused(tmp_path):
  path = tmp_path / "bad.npz"
  x = np.full((8, 28, 28), 0.5, np.float32)
  x[0, 0, 0] = 3.0
  np.savez(path, x_train=x, y_train=np.zeros(8, int), x_test=x, y_test=np.zeros(8, int))
  proc = run_cli("--data_source=npz", f"--data_path={path}", f"--workdir={tmp_path}/run", check=False)
  assert proc.returncode != 0 and "outside [0, 1]" in proc.stderr.splitlines()[-1]


def test_fewer_epochs_than_the_checkpoint_is_refused(tiny_npz, tmp_path):
  workdir = tmp_path / "run"
  run_cli(*args(tiny_npz, workdir, "--num_epochs=2"))
  assert_refused(args(tiny_npz, workdir, "--num_epochs=1"), "checkpoint of epoch 2, past --num_epochs=1", workdir)


def test_overwrite_with_bad_input_deletes_nothing(tiny_npz, tmp_path):
  workdir = tmp_path / "run"
  run_cli(*args(tiny_npz, workdir, "--num_epochs=1"))
  for bad, message in ((f"--data_path={tmp_path}/missing.npz", "no such file"), ("--batch_size=100000", "exceeds")):
    assert_refused(args(tiny_npz, workdir, "--num_epochs=1", "--overwrite", bad), message, workdir)


def test_workdir_that_is_a_file_is_one_clear_error(tiny_npz, tmp_path):
  path = tmp_path / "a_file"
  path.write_text("mine")
  for extra in ((), ("--overwrite",)):
    proc = run_cli(*args(tiny_npz, path, "--num_epochs=1"), *extra, check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "exists and is not a directory" in proc.stderr.splitlines()[-1]
  assert path.read_text() == "mine"


def test_signal_after_the_last_epoch_stops_cleanly_and_resume_evaluates(tiny_npz, tmp_path):
  workdir = tmp_path / "run"
  cli = args(tiny_npz, workdir, "--num_epochs=3", "--eval_iwae_samples=20000")
  proc = start_and_signal(cli, workdir, signal.SIGTERM, after_epochs=3)
  assert proc.returncode == 128 + signal.SIGTERM, proc.stderr[-2000:]
  assert "run the same command" in proc.stderr.splitlines()[-1] and "Traceback" not in proc.stderr
  assert [r["epoch"] for r in records(workdir)] == [1, 2, 3]
  resumed = run_cli(*cli[:-1], "--eval_iwae_samples=10")  # evaluation settings may change on resume
  assert "final: test -ELBO" in resumed.stdout and "epoch    " not in resumed.stdout
  assert records(workdir)[-1]["final"]


def test_resume_on_other_data_is_refused(tiny_npz, tmp_path):
  workdir = tmp_path / "run"
  run_cli(*args(tiny_npz, workdir, "--num_epochs=1"))
  other = tmp_path / "other.npz"
  with np.load(tiny_npz) as f:
    arrays = dict(f)
  arrays["x_train"] = arrays["x_train"][::-1]
  np.savez(other, **arrays)
  assert_refused(args(other, workdir, "--num_epochs=2"), "trained on other data", workdir)


def test_a_cut_off_metrics_line_is_dropped_on_resume(tiny_npz, tmp_path):
  workdir = tmp_path / "run"
  run_cli(*args(tiny_npz, workdir, "--num_epochs=1"))
  with open(workdir / "metrics.jsonl", "a") as f:
    f.write('{"epoch": 2, "step": 1')
  proc = run_cli(*args(tiny_npz, workdir, "--num_epochs=2"))
  assert "not a complete record; dropped" in proc.stderr
  assert [r["epoch"] for r in records(workdir)] == [1, 2, 2]


def test_an_epoch_of_skipped_steps_reports_nan_means():
  model, optimizer, state = diverged_state()
  epoch = jaxvae.make_train_epoch(model, optimizer, 4, "dynamic", nonfinite_policy="skip")
  _, metrics = epoch(state, jnp.full((8, 784), 100, jnp.uint8), jax.random.key(1), jax.random.key(2))
  assert int(metrics["nonfinite_steps"]) == 2 and int(metrics["num_images"]) == 8
  assert np.isnan(float(metrics["neg_elbo"]))
