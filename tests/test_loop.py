"""The one training loop and workdir protocol, through every family's real command.

Each family (VAE in test_reliability, CVAE, classifier, M2, M1+M2, sentence VAE here) is killed
with SIGKILL, stopped with SIGTERM and resumed, and ends bit-identical to an
uninterrupted run; foreign directories are never touched; checkpoints are
trusted only when they are good; models load without their optimizer.
"""

import json
import os
import signal
import struct

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

import jaxvae
from tests.test_cli import run_cli
from tests.test_reliability import TIMING, args, assert_refused, snapshot, start_and_signal
from tests.test_sequence import assert_sentence_report, sentences_args

NPZ = "--data_source=npz"


@pytest.fixture(scope="module")
def judge(tiny_npz, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("judge") / "classifier"
  run_cli(f"--workdir={workdir}", "--num_epochs=2", NPZ, f"--data_path={tiny_npz}", module="experiments.classifier")
  return workdir


@pytest.fixture(scope="module")
def m1(tiny_npz, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("m1") / "vae"
  run_cli(*args(tiny_npz, workdir, "--num_epochs=2", "--eval_iwae_samples=0"))
  return workdir


def family_command(family, tiny_npz, directory, judge, m1, tiny_text=None):
  """(module, flags, the directory whose metrics.jsonl and checkpoints the family writes)."""
  data = (NPZ, f"--data_path={tiny_npz}")
  if family == "sentences":
    return "experiments.sentences", sentences_args(tiny_text, directory, "--num_epochs=12", "--word_dropout=0.2",
                                                   "--kl_warmup_epochs=2"), directory
  if family == "classifier":
    return "experiments.classifier", [f"--workdir={directory}", "--num_epochs=12", *data], directory
  if family == "cvae":
    return "experiments.cvae", [f"--workdir={directory}", f"--classifier={judge}", "--num_epochs=12",
                                "--latent_dim=2", "--hidden_dim=16", "--batch_size=64", "--num_samples=20",
                                *data], directory
  m2 = ["--num_labels=20", "--num_epochs=12", "--eval_every=5", "--latent_dim=2", "--hidden_dim=8",
        "--batch_size=64", "--labelled_batch_size=10", "--seeds=0", f"--outdir={directory}", *data]
  if family == "m1m2":
    m2 += [f"--m1={m1}", "--m1_units=all"]
  return "experiments.semisupervised", m2, directory / "seed=0"


def family_records(run_dir):
  return [{k: v for k, v in r.items() if k not in TIMING} for r in jaxvae.read_metrics(run_dir / "metrics.jsonl")]


# The classifier, the CVAE, M2 and M1+M2 share every line of the loop with the sentence VAE
# (and the VAE, in test_reliability); they run with `python -m pytest -m slow`.
@pytest.mark.parametrize("family", [pytest.param("classifier", marks=pytest.mark.slow),
                                    pytest.param("cvae", marks=pytest.mark.slow),
                                    pytest.param("m2", marks=pytest.mark.slow),
                                    pytest.param("m1m2", marks=pytest.mark.slow), "sentences"])
def test_every_family_resumes_bit_identical_after_kill_9_and_sigterm(family, tiny_npz, tmp_path, judge, m1,
                                                                     tiny_text):
  module, lone_flags, lone = family_command(family, tiny_npz, tmp_path / "lone", judge, m1, tiny_text)
  run_cli(*lone_flags, module=module)
  module, flags, run_dir = family_command(family, tiny_npz, tmp_path / "run", judge, m1, tiny_text)

  killed = start_and_signal(flags, run_dir, signal.SIGKILL, after_epochs=3, module=module)
  assert killed.returncode == -signal.SIGKILL, "the run finished before it could be killed"
  done = len(jaxvae.read_metrics(run_dir / "metrics.jsonl"))
  stopped = start_and_signal(flags, run_dir, signal.SIGTERM, after_epochs=done + 2, module=module)
  assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-2000:]
  last = stopped.stderr.strip().splitlines()[-1]
  assert last.startswith("SIGTERM received: stopped after epoch") and "run the same command to resume" in last
  run_cli(*flags, module=module)

  assert family_records(run_dir) == family_records(lone)
  for a, b in zip(jax.tree.leaves(jaxvae.load_model(run_dir)[1]), jax.tree.leaves(jaxvae.load_model(lone)[1])):
    np.testing.assert_array_equal(a, b)
  assert list(run_dir.glob("events.out.tfevents.*"))  # TensorBoard's copy of the records
  if family == "sentences":
    assert_sentence_report(run_dir, word_dropout=0.2)


FOREIGN = {"checkpoints/notes.txt": "mine", "images/a.png": "mine", "metrics.jsonl": "{}\n",
           "config.json": '{"mine": 1}', "results.json": "{}"}


@pytest.mark.parametrize("module, flag", [("experiments.mnist", "--workdir"), ("experiments.cvae", "--workdir"),
                                          ("experiments.classifier", "--workdir"),
                                          ("experiments.semisupervised", "--outdir")])
def test_overwrite_never_touches_a_foreign_directory(module, flag, tiny_npz, tmp_path, judge):
  foreign = tmp_path / "mine"
  for name, text in FOREIGN.items():
    (foreign / name).parent.mkdir(parents=True, exist_ok=True)
    (foreign / name).write_text(text)
  extra = [f"--classifier={judge}"] if module == "experiments.cvae" else []
  assert_refused([f"{flag}={foreign}", "--overwrite", "--num_epochs=1", NPZ, f"--data_path={tiny_npz}", *extra],
                 "is not empty and holds no jaxvae", foreign, module=module)


def test_overwrite_refuses_a_run_of_another_kind(tiny_npz, judge):
  assert_refused(args(tiny_npz, judge, "--overwrite", "--num_epochs=1"), "holds a classifier run, not a vae one",
                 judge)


def test_a_second_process_on_a_workdir_is_refused_at_once_and_the_first_is_unaffected(tiny_npz, tmp_path):
  lone, workdir = tmp_path / "lone", tmp_path / "run"
  cli = args(tiny_npz, workdir, "--num_epochs=60", "--checkpoint_every=20")
  run_cli(*args(tiny_npz, lone, "--num_epochs=60", "--checkpoint_every=20"))
  second = {}

  def while_the_first_runs():
    second["proc"] = run_cli(*cli, check=False)

  first = start_and_signal(cli, workdir, None, after_epochs=1, then=while_the_first_runs)
  assert first.returncode == 0, first.stderr[-2000:]
  proc = second["proc"]
  assert proc.returncode != 0 and "Traceback" not in proc.stderr
  assert proc.stderr.strip().splitlines()[-1].startswith(f"error: --workdir={workdir} is in use by another process")
  strip = lambda d: [{k: v for k, v in r.items() if k not in TIMING} for r in jaxvae.read_metrics(d / "metrics.jsonl")]
  assert strip(workdir) == strip(lone)


def write_nonfinite_newest(workdir, epoch):
  """Replaces checkpoint `epoch` by one whose params are NaN (written with orbax directly:
  jaxvae never saves such a state)."""
  with jaxvae.checkpoints.manager(workdir) as mngr:
    items = mngr.restore(epoch, args=ocp.args.Composite(params=ocp.args.StandardRestore(),
                                                        train=ocp.args.StandardRestore(),
                                                        meta=ocp.args.JsonRestore()))
    mngr.delete(epoch)
    mngr.save(epoch, args=ocp.args.Composite(
        params=ocp.args.StandardSave(jax.tree.map(lambda a: a * np.nan, items.params)),
        train=ocp.args.StandardSave(items.train), meta=ocp.args.JsonSave(items.meta)))
    mngr.wait_until_finished()


def test_a_nonfinite_newest_checkpoint_is_never_a_result(tiny_npz, tmp_path):
  lone, workdir = tmp_path / "lone", tmp_path / "run"
  run_cli(*args(tiny_npz, lone, "--num_epochs=2"))
  run_cli(*args(tiny_npz, workdir, "--num_epochs=2"))
  write_nonfinite_newest(workdir, 2)
  # load_model takes the newest good checkpoint, epoch 1.
  params = jax.tree.leaves(jaxvae.load_model(workdir)[1])
  assert all(np.all(np.isfinite(p)) for p in params)
  # The run is not reported complete: epoch 2 is trained again from checkpoint 1.
  proc = run_cli(*args(tiny_npz, workdir, "--num_epochs=2"))
  assert "is complete" not in proc.stdout and "holds non-finite parameters; skipped" in proc.stderr
  assert "epoch    2/2" in proc.stdout and "epoch    1/2" not in proc.stdout
  for a, b in zip(jax.tree.leaves(jaxvae.load_model(workdir)[1]), jax.tree.leaves(jaxvae.load_model(lone)[1])):
    np.testing.assert_array_equal(a, b)


def test_an_empty_newest_step_folder_does_not_block_resuming(tiny_npz, tmp_path):
  workdir = tmp_path / "run"
  run_cli(*args(tiny_npz, workdir, "--num_epochs=2"))
  (workdir / "checkpoints" / "3").mkdir()
  proc = run_cli(*args(tiny_npz, workdir, "--num_epochs=3"))
  assert "epoch    3/3" in proc.stdout and "epoch    2/3" not in proc.stdout
  assert jaxvae.read_metrics(workdir / "metrics.jsonl")[-1]["final"]


def test_a_model_loads_whatever_the_optimizer_becomes(tiny_npz, tmp_path, monkeypatch):
  config = jaxvae.Config(latent_dim=2, hidden_dim=16, num_epochs=1, batch_size=64, eval_iwae_samples=0,
                         data_source="npz", data_path=str(tiny_npz))
  jaxvae.train_and_evaluate(config, tmp_path / "run")
  before = jax.tree.leaves(jaxvae.load_model(tmp_path / "run")[1])
  # e.g. gradient clipping added to the optimizer: a different optimizer state
  monkeypatch.setattr(jaxvae.train, "make_optimizer",
                      lambda *a, **k: optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3)))
  after = jax.tree.leaves(jaxvae.load_model(tmp_path / "run")[1])
  for a, b in zip(before, after):
    np.testing.assert_array_equal(a, b)


def test_checkpoints_of_the_earlier_format_load_and_resume(tiny_npz, tmp_path):
  """A marked run whose checkpoints hold one `state` item (params, optimizer state and step together)."""
  config = jaxvae.Config(latent_dim=2, hidden_dim=16, num_epochs=1, batch_size=64, eval_iwae_samples=0,
                         data_source="npz", data_path=str(tiny_npz))
  workdir = tmp_path / "old"
  workdir.mkdir()
  (workdir / "config.json").write_text(config.to_json())
  model = jaxvae.build_model(config)
  jaxvae.workdir.write_json(workdir / "jaxvae.json", {"kind": "vae", "format": 2, "num_replicas": 1,
                                                      "model": jaxvae.checkpoints.model_spec(model)})
  state = jaxvae.create_train_state(model, jaxvae.make_optimizer(config, 8), jaxvae.KeyStreams.from_seed(0).init)
  handlers = {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
  with ocp.CheckpointManager(workdir.absolute() / "checkpoints", item_handlers=handlers) as mngr:
    import flax  # pylint: disable=g-import-not-at-top
    mngr.save(1, args=ocp.args.Composite(state=ocp.args.StandardSave(flax.serialization.to_state_dict(state)),
                                         meta=ocp.args.JsonSave({"epoch": 1, "data_fingerprint": None})))
    mngr.wait_until_finished()
  (workdir / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "step": 8, "wall_seconds": 1.0}) + "\n")
  _, params, loaded_config = jaxvae.load_model(workdir)
  assert loaded_config == config
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(state.params)):
    np.testing.assert_array_equal(a, b)
  proc = run_cli(*args(tiny_npz, workdir, "--num_epochs=2", "--latent_dim=2", "--hidden_dim=16",
                       "--eval_iwae_samples=0"))
  assert "epoch    2/2" in proc.stdout and "epoch    1/2" not in proc.stdout
  assert jaxvae.workdir.read_marker(workdir)["kind"] == "vae"


def read_events(directory):
  """{tag: [(step, value)]} of the TensorBoard event files in `directory`."""
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top

  scalars = {}
  for path in sorted(directory.glob("events.out.tfevents.*")):
    data = path.read_bytes()
    while data:
      (length,) = struct.unpack("<Q", data[:8])
      event = event_pb2.Event.FromString(data[12:12 + length])
      data = data[12 + length + 4:]
      for value in event.summary.value:
        scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
  return scalars


def test_records_are_also_tensorboard_scalars(tiny_npz, tmp_path):
  workdir = tmp_path / "run"
  run_cli(*args(tiny_npz, workdir, "--num_epochs=2"))
  scalars = read_events(workdir)
  records = jaxvae.read_metrics(workdir / "metrics.jsonl")
  assert [s for s, _ in scalars["test_neg_elbo"]] == [1, 2]
  np.testing.assert_allclose([v for _, v in scalars["test_neg_elbo"]], [r["test_neg_elbo"] for r in records[:2]],
                             rtol=1e-6)
  np.testing.assert_allclose(scalars["final/iwae_nll"][0][1], records[-1]["iwae_nll"], rtol=1e-6)


# --- bad input: one error line, nothing lost -----------------------------------------------------


def write_npz(path, num_train=512, num_test=128):
  from tests.conftest import make_digits  # pylint: disable=g-import-not-at-top

  x, y = make_digits(num_train, 0)
  xt, yt = make_digits(num_test, 1)
  np.savez(path, x_train=x, y_train=y, x_test=xt, y_test=yt)
  return path


def test_truncated_or_wrong_kind_data_files_are_one_error_line(tiny_npz, tmp_path):
  truncated = tmp_path / "truncated.npz"
  truncated.write_bytes(tiny_npz.read_bytes()[:5000])
  text = tmp_path / "text.npz"
  text.write_text("x_train,y_train\n1,2\n")
  single = tmp_path / "single.npy"
  np.save(single, np.zeros((3, 784)))
  for path in (truncated, text, single):
    assert_refused(["--data_source=npz", f"--data_path={path}", f"--workdir={tmp_path / 'run'}"],
                   "not a readable .npz file")
  assert not (tmp_path / "run").exists()


def test_a_test_set_too_small_for_the_pictures_is_refused(tmp_path, judge):
  small = write_npz(tmp_path / "small.npz", num_test=4)
  assert_refused(["--data_source=npz", f"--data_path={small}", f"--workdir={tmp_path / 'run'}"],
                 "the test set has 4 images; the pictures need at least 8")
  assert_refused([NPZ, f"--data_path={small}", f"--workdir={tmp_path / 'cvae'}", f"--classifier={judge}"],
                 "the test set has 4 images", module="experiments.cvae")
  assert not (tmp_path / "run").exists() and not (tmp_path / "cvae").exists()


def test_bad_lines_in_metrics_and_config_files(tiny_npz, tmp_path):
  workdir = tmp_path / "run"
  run_cli(*args(tiny_npz, workdir, "--num_epochs=1"))
  with open(workdir / "metrics.jsonl", "ab") as f:
    f.write(b"[1, 2]\n\xff\xfe not utf-8\n7\n")
  proc = run_cli(*args(tiny_npz, workdir, "--num_epochs=2"))
  assert proc.stderr.count("is not a complete record; dropped") == 3
  assert [r["epoch"] for r in jaxvae.read_metrics(workdir / "metrics.jsonl")] == [1, 2, 2]
  for content, message in ((b"\xff\xfe", "unreadable config"), (b"[1]", "not a jaxvae config (not a JSON object)")):
    (workdir / "config.json").write_bytes(content)
    assert_refused(args(tiny_npz, workdir, "--num_epochs=3"), message, workdir)


@pytest.mark.parametrize("flag, message", [
    ("--latent_dim=1000000000000", "latent_dim must be at most 65,536"),
    ("--seed=99999999999999999999", "seed must be at most"),
    ("--num_epochs=100000000000", "num_epochs must be at most"),
    ("--learning_rate=inf", "learning_rate must be a finite number"),
    ("--adam_eps=inf", "adam_eps must be a finite number"),
    ("--learning_rate=nan", "learning_rate must be a finite number"),
    ("--latent_dim=abc", "error: flag --latent_dim=abc"),
    ("stray", "error: unexpected arguments: stray"),
])
def test_huge_infinite_and_malformed_flags_are_one_error_line(tiny_npz, tmp_path, flag, message):
  proc = run_cli(NPZ, f"--data_path={tiny_npz}", f"--workdir={tmp_path / 'run'}", flag, check=False)
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode != 0 and len(lines) == 1 and message in lines[0] and lines[0].startswith("error: "), lines
  assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("module, flag, message", [
    ("experiments.cvae", "--learning_rate=inf", "learning_rate must be a finite positive number"),
    ("experiments.classifier", "--learning_rate=inf", "learning_rate must be a finite positive number"),
    ("experiments.semisupervised", "--learning_rate=inf", "learning_rate must be a finite positive number"),
    ("experiments.classifier", "--num_epochs=100000000000", "num_epochs must be at most"),
    ("experiments.cvae", "--latent_dim=1000000000000", "latent_dim must be at most"),
    ("experiments.semisupervised", "--seeds=0,99999999999999", "--seeds must be distinct non-negative integers"),
    ("experiments.classifier", "stray", "unexpected arguments: stray"),
    ("experiments.latent_space", "--path_length=2", "path_length must be at least 3"),
    ("experiments.latent_space", "--num_samples=100000000000", "num_samples must be at most"),
])
def test_the_other_entry_points_refuse_the_same(module, flag, message, tiny_npz, tmp_path):
  where = "--outdir" if module in ("experiments.semisupervised", "experiments.latent_space") else "--workdir"
  proc = run_cli(NPZ, f"--data_path={tiny_npz}", f"{where}={tmp_path / 'run'}", flag, check=False, module=module)
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode != 0 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
  assert not (tmp_path / "run").exists()


def test_ctrl_c_before_the_first_epoch_is_one_line_and_loses_nothing(tiny_npz, tmp_path):
  workdir = tmp_path / "run"
  run_cli(*args(tiny_npz, workdir, "--num_epochs=1"))
  before = snapshot(workdir)
  lock = workdir / ".lock"
  # The lock holds the pid as soon as the run has checked the workdir, before data and compilation.
  proc = start_and_signal(args(tiny_npz, workdir, "--num_epochs=3"), workdir, signal.SIGINT, after_epochs=None,
                          ready=lambda: lock.exists() and lock.read_text().strip())
  assert proc.returncode == 128 + signal.SIGINT and "Traceback" not in proc.stderr, proc.stderr[-2000:]
  assert "SIGINT received" in proc.stderr.strip().splitlines()[-1]
  after = snapshot(workdir)
  assert {p: v for p, v in after.items() if p.name != ".lock"} == {p: v for p, v in before.items() if p.name != ".lock"}


def test_summarize_refuses_a_bad_x_before_writing_anything(tmp_path):
  from tests.test_sweep import final, mark_sweep, write_run  # pylint: disable=g-import-not-at-top

  sweep = tmp_path / "sweep"
  for dim in (2, 3):
    write_run(sweep / f"latent_dim={dim}", final(100.0 - dim, 5.0), latent_dim=dim)
  mark_sweep(sweep)
  proc = run_cli(str(sweep), "--x=no_such_setting", check=False, module="experiments.summarize")
  assert proc.returncode != 0 and proc.stderr.strip().splitlines()[-1].startswith("error: --x=no_such_setting")
  assert not list(sweep.glob("results.*"))


def test_a_full_disk_is_one_error_line_and_the_run_resumes_after(tiny_npz, tmp_path):
  import shlex  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top

  from tests.test_cli import ROOT  # pylint: disable=g-import-not-at-top

  lone, workdir = tmp_path / "lone", tmp_path / "run"
  run_cli(*args(tiny_npz, lone, "--num_epochs=2"))
  # Writes past 20 kB fail with EFBIG, as they would on a full disk with ENOSPC.
  command = shlex.join([sys.executable, "-m", "experiments.mnist", *args(tiny_npz, workdir, "--num_epochs=2")])
  proc = subprocess.run(["bash", "-c", f"ulimit -f 20; trap '' XFSZ; exec {command}"], cwd=ROOT,
                        capture_output=True, text=True, timeout=300, check=False)
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 1 and lines[-1].startswith("error: ") and "Traceback" not in proc.stderr, lines[-5:]
  run_cli(*args(tiny_npz, workdir, "--num_epochs=2"))
  strip = lambda d: [{k: v for k, v in r.items() if k not in TIMING} for r in jaxvae.read_metrics(d / "metrics.jsonl")]
  assert strip(workdir) == strip(lone)


def test_load_model_changes_nothing_on_disk(tiny_npz, tmp_path):
  """A run may be training where a model is loaded: its partial save must stay."""
  workdir = tmp_path / "run"
  run_cli(*args(tiny_npz, workdir, "--num_epochs=1", "--eval_iwae_samples=0"))
  partial = workdir / "checkpoints" / "2.orbax-checkpoint-tmp-1700000000"
  partial.mkdir()
  before = snapshot(workdir)
  jaxvae.load_model(workdir)
  assert snapshot(workdir) == before and partial.is_dir()


def test_a_config_json_from_before_a_field_existed_still_resumes(tiny_npz, tmp_path):
  workdir = tmp_path / "run"
  run_cli(*args(tiny_npz, workdir, "--num_epochs=1", "--eval_iwae_samples=0"))
  saved = json.loads((workdir / "config.json").read_text())
  del saved["architecture"], saved["output_bias"]  # written by a jaxvae that had neither field
  (workdir / "config.json").write_text(json.dumps(saved))
  proc = run_cli(*args(tiny_npz, workdir, "--num_epochs=2", "--eval_iwae_samples=0"))
  assert "epoch    2/2" in proc.stdout and "epoch    1/2" not in proc.stdout


def test_studies_and_earlier_runs_of_other_families_are_never_overwritten(tiny_npz, tmp_path):
  # An earlier CVAE's directory (its results.json, checkpoints and records) is not a latent-space study.
  cvae_like = tmp_path / "cvae"
  for name, text in {"results.json": "{}", "metrics.jsonl": "", "checkpoints/0/x": "params",
                     "model.json": '{"class": "ConditionalVAE"}'}.items():
    (cvae_like / name).parent.mkdir(parents=True, exist_ok=True)
    (cvae_like / name).write_text(text)
  assert_refused([f"--outdir={cvae_like}", "--vae=nowhere", "--ae=nowhere"], "holds no jaxvae latent-space study",
                 cvae_like, module="experiments.latent_space")
  # A directory without a marker is nobody's to delete, whatever its files are called, --overwrite or not.
  old = tmp_path / "classifier"
  old.mkdir()
  (old / "metrics.json").write_text('{"test_accuracy": 0.9}')
  for extra in ([], ["--overwrite"]):
    assert_refused([f"--workdir={old}", NPZ, f"--data_path={tiny_npz}", *extra], "holds no jaxvae classifier run",
                   old, module="experiments.classifier")


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the dropped exception
def test_a_signal_whose_exception_python_dropped_still_stops_the_next_phase():
  """A handler's exception raised inside a __del__ (or a gc callback) is printed and dropped;
  the signal is not: the next StopSignals context, and its checks, raise it."""

  class SignalsWhileCollected:
    def __del__(self):
      os.kill(os.getpid(), signal.SIGINT)
      for _ in range(1000):  # the handler runs at a bytecode boundary, here, and its exception is dropped
        pass

  before = signal.getsignal(signal.SIGINT)
  with jaxvae.loop.StopSignals(raise_now=True, message="setup") as outer:
    SignalsWhileCollected()  # collected at once
    assert outer.signum == signal.SIGINT
    with pytest.raises(jaxvae.Interrupted, match="SIGINT received: training"):
      with jaxvae.loop.StopSignals(raise_now=True, message="training"):
        pass
  assert signal.getsignal(signal.SIGINT) == before  # every handler restored
