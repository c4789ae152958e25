"""Nothing that is not jaxvae's is ever touched: hostile directories, files, settings and signals.

Each class of hostile input gets a representative case through the real command; the error
messages that need no process are checked in-process.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import jaxvae
from jaxvae import workdir as workdir_lib
from tests.test_cli import ROOT, run_cli
from tests.test_reliability import args, assert_refused, snapshot, start_and_signal

# The most common file names of ML directories, none of them jaxvae's marker.
USERS_FILES = {"config.json": '{"latent_dim": 20}', "metrics.json": '{"accuracy": 0.9}', "results.md": "# mine\n",
               "results.json": "{}", "results.csv": "a,b\n", "anomaly.md": "mine", "images/a.png": "png",
               "checkpoints/1/params": "weights", "seed=0/config.json": "{}", "logs/x.log": "log"}


def users_directory(path):
  for name, text in USERS_FILES.items():
    (path / name).parent.mkdir(parents=True, exist_ok=True)
    (path / name).write_text(text)
  return path


def tree(path):
  """Every path under `path` with its bytes (None for a directory): byte-identical or not."""
  return {p: (None if p.is_dir() else p.read_bytes()) for p in sorted(path.rglob("*"))}


@pytest.fixture(scope="module")
def vae_run(tiny_npz, tmp_path_factory):
  """A tiny trained VAE (2 epochs, one checkpoint per epoch)."""
  workdir = tmp_path_factory.mktemp("hostile") / "vae"
  run_cli(*args(tiny_npz, workdir, "--num_epochs=2", "--latent_dim=2"))
  return workdir


def entry_points(tiny_npz, tiny_text, foreign, elsewhere):
  """(module, arguments) of every entry point, each pointed at `foreign` as the directory it writes."""
  npz = ["--data_source=npz", f"--data_path={tiny_npz}", "--num_epochs=1"]
  return [
      ("experiments.mnist", [f"--workdir={foreign}", *npz]),
      ("experiments.cvae", [f"--workdir={foreign}", f"--classifier={elsewhere}", *npz]),
      ("experiments.classifier", [f"--workdir={foreign}", *npz]),
      ("experiments.semisupervised", [f"--outdir={foreign}", *npz]),
      ("experiments.mnist_rows", [f"--workdir={foreign}", *npz]),
      ("experiments.sentences", [f"--workdir={foreign}", "--corpus=lines", f"--text_path={tiny_text}",
                                 "--vocab_size=20", "--num_epochs=1"]),
      ("experiments.report", [f"--outdir={foreign}", f"--workdir={elsewhere}"]),
      ("experiments.latent_space", [f"--outdir={foreign}", f"--vae={elsewhere}", f"--ae={elsewhere}"]),
      ("experiments.summarize", [str(foreign)]),
      ("experiments.anomaly", [str(foreign)]),
  ]


OVERWRITABLE = ("experiments.mnist", "experiments.cvae", "experiments.classifier", "experiments.semisupervised",
                "experiments.mnist_rows", "experiments.sentences")


def test_every_entry_point_refuses_a_users_directory(tiny_npz, tiny_text, tmp_path):
  foreign = users_directory(tmp_path / "mine")
  before = tree(foreign)
  for module, cli in entry_points(tiny_npz, tiny_text, foreign, tmp_path / "nowhere"):
    for extra in ([], ["--overwrite"]) if module in OVERWRITABLE else ([],):
      proc = run_cli(*cli, *extra, check=False, module=module)
      lines = proc.stderr.strip().splitlines()
      assert proc.returncode == 1 and "Traceback" not in proc.stderr, (module, proc.stderr[-1500:])
      assert lines[-1].startswith("error: ") and str(foreign) in lines[-1], (module, lines[-1])
      assert tree(foreign) == before, (module, extra)


def test_launch_refuses_a_users_directory_as_its_runs_or_sweep_directory(tmp_path):
  foreign = users_directory(tmp_path / "mine")
  before = tree(foreign)
  env = dict(os.environ, PYTHON=sys.executable)
  for options in (["--runs-dir=" + str(foreign), "--name=x"], ["--runs-dir=" + str(tmp_path), "--name=mine"]):
    proc = subprocess.run([str(ROOT / "launch.sh"), *options, "--grid=seed=0", "--", "--num_epochs=1"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.startswith("launch.sh: error: ") and "nothing in it was changed" in \
        proc.stderr, proc.stderr
    assert tree(foreign) == before


def test_a_report_interrupted_keeps_the_previous_one_and_resumes_where_it_stopped(vae_run, tiny_npz, tmp_path):
  outdir = tmp_path / "report"
  tiny = ["--num_images=4", "--num_simulated=2", "--ais_steps=400", "--ais_chains=2", "--leapfrog=2",
          "--iwae_samples=10", "--gap_steps=5", "--elbo_samples=10", "--superres_images=0", "--batch_size=2",
          f"--workdir={vae_run}", "--data_source=npz", f"--data_path={tiny_npz}"]
  run_cli(*tiny, f"--outdir={outdir}", module="experiments.report")
  complete = tree(outdir)
  again = run_cli(*tiny, f"--outdir={outdir}", module="experiments.report")  # nothing to compute
  assert "holds the complete report of these settings and models" in again.stdout and tree(outdir) == complete

  # Another seed: stopped once its first section is saved, the previous report stays whole.
  sections = outdir / ".incoming.inference-report" / "sections.json"
  proc = start_and_signal([*tiny, f"--outdir={outdir}", "--seed=1"], outdir, signal.SIGTERM, after_epochs=None,
                          module="experiments.report", ready=sections.exists)
  assert proc.returncode == 128 + signal.SIGTERM, proc.stderr[-2000:]
  assert proc.stderr.strip().splitlines()[-1] == ("SIGTERM received: stopped; every finished step is kept: run the "
                                                  "same command again to go on")
  assert {p: v for p, v in tree(outdir).items() if ".incoming" not in str(p) and p.name != ".lock"} == \
      {p: v for p, v in complete.items() if p.name != ".lock"}
  resumed = run_cli(*tiny, f"--outdir={outdir}", "--seed=1", module="experiments.report")
  assert "likelihood finished before" in resumed.stdout
  assert not list(outdir.glob(".incoming*"))
  # The resumed report is the uninterrupted one's.
  run_cli(*tiny, f"--outdir={tmp_path / 'straight'}", "--seed=1", module="experiments.report")
  untimed = lambda path: json.loads((path / "results.json").read_text(), object_hook=lambda d: {
      k: v for k, v in d.items() if k != "seconds"})
  assert untimed(outdir) == untimed(tmp_path / "straight") != {}


def test_long_phases_print_their_progress(capsys):
  with jaxvae.progress.Progress("AIS", total=10, every=0.05) as progress:
    time.sleep(0.2)
    progress.advance(4)
    time.sleep(0.2)
  lines = capsys.readouterr().out.splitlines()
  assert any("0/10 images, first batch running for" in line for line in lines)
  assert any(line.startswith("AIS: 4/10 images, ") and "images/s, about" in line and "left" in line for line in lines)
  assert lines[-1].startswith("AIS: 10 images in ")


def test_staged_result_is_replaced_only_when_complete(tmp_path):
  with workdir_lib.Workdir(tmp_path / "out", "study") as wd:
    wd.check()
    wd.open()
    staged = workdir_lib.Staged(wd, {"seed": 0})
    staged.path("results.md").write_text("first")
    staged.save("a", 1)
    staged.commit(["results.md"], ["results.md", "extra.png"])
  assert (tmp_path / "out/results.md").read_text() == "first"
  with workdir_lib.Workdir(tmp_path / "out", "study") as wd:
    wd.check()
    wd.open()
    staged = workdir_lib.Staged(wd, {"seed": 1})
    staged.save("a", 2)
    staged.path("results.md").write_text("second")  # then the process is stopped: no commit
  assert (tmp_path / "out/results.md").read_text() == "first"
  with workdir_lib.Workdir(tmp_path / "out", "study") as wd:
    wd.check()
    assert workdir_lib.Staged(wd, {"seed": 1}).sections == {"a": 2}  # the same identity resumes
    assert workdir_lib.Staged(wd, {"seed": 2}).sections == {}  # another starts afresh


def test_m1_m2_refuses_an_m1_that_changed(tiny_npz, tmp_path):
  m1 = tmp_path / "m1"
  run_cli(*args(tiny_npz, m1, "--num_epochs=1", "--eval_iwae_samples=0"))
  study = ["--outdir=" + str(tmp_path / "m1m2"), f"--m1={m1}", "--num_labels=10", "--seeds=0", "--num_epochs=1",
           "--m1_units=all", "--batch_size=64", "--labelled_batch_size=10", "--hidden_dim=16", "--latent_dim=2", "--data_source=npz",
           f"--data_path={tiny_npz}"]
  run_cli(*study, module="experiments.semisupervised")
  run_cli(*args(tiny_npz, m1, "--num_epochs=2", "--eval_iwae_samples=0"))  # M1 trained further: allowed
  before = snapshot(tmp_path / "m1m2")
  assert_refused([*study[:4], "--num_epochs=2", *study[5:]], "is not known to be the M1 that", tmp_path / "m1m2",
                 module="experiments.semisupervised")
  assert snapshot(tmp_path / "m1m2") == before


def test_evaluation_memory_is_checked_before_training(tiny_npz, tmp_path):
  workdir = tmp_path / "run"
  assert_refused(args(tiny_npz, workdir, "--eval_iwae_samples=1000000", "--eval_batch_size=1000000",
                      "--iwae_chunk_size=1000000"), "the final IWAE estimate at eval_batch_size 1000000")
  assert not workdir.exists()


@pytest.mark.parametrize("content, message", [
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ('{"kind": "vae", "format": 2, "num_replicas": "many"}', "num_replicas 'many' is not an integer"),
    ('{"kind": "vae", "format": 2, "num_replicas": 1e400}', "num_replicas inf is not an integer"),
    ('{"kind": "vae", "format": 99}', "written by a newer jaxvae"),
    ('{"kind": "vae", "format": 2, "model": ["VAE"]}', "its model spec is not {class, fields}"),
    ('{"kind": "replica", "format": 2}', "a replica marker without its index"),
])
def test_a_damaged_marker_is_one_error(tmp_path, content, message):
  (tmp_path / "jaxvae.json").write_text(content)
  with pytest.raises(jaxvae.errors.Error, match=message):
    jaxvae.load_model(tmp_path)


def test_a_replica_index_out_of_range_is_refused(tmp_path):
  model = jaxvae.VAE(latent_dim=2, output_dim=784, hidden_dim=8)
  workdir_lib.write_json(tmp_path / "jaxvae.json", {"kind": "vae", "format": 2, "num_replicas": 2,
                                                    "model": jaxvae.checkpoints.model_spec(model)})
  (tmp_path / "seed=5").mkdir()
  workdir_lib.write_json(tmp_path / "seed=5/jaxvae.json", {"kind": "replica", "format": 2, "index": 5})
  with pytest.raises(jaxvae.CheckpointError, match="replica index 5 is out of range"):
    jaxvae.load_model(tmp_path / "seed=5")


@pytest.mark.parametrize("special", ["fifo", "device"])
def test_a_fifo_or_device_as_a_marker_is_one_error_line_not_a_hang(tiny_npz, tmp_path, special):
  workdir = tmp_path / "run"
  workdir.mkdir()
  if special == "fifo":
    os.mkfifo(workdir / "jaxvae.json")
  else:
    os.symlink("/dev/zero", workdir / "jaxvae.json")
  assert_refused(args(tiny_npz, workdir, "--num_epochs=1"), "the marker is not a regular file")


def test_a_fifo_as_text_path_is_one_error_line(tmp_path):
  os.mkfifo(tmp_path / "corpus")
  assert_refused([f"--workdir={tmp_path / 'run'}", "--corpus=lines", f"--text_path={tmp_path / 'corpus'}"],
                 "not a regular file", module="experiments.sentences")


def test_summarize_refuses_a_config_with_values_of_the_wrong_type(tmp_path):
  from tests.test_sweep import final, mark_sweep, write_run  # pylint: disable=g-import-not-at-top

  mark_sweep(tmp_path)
  write_run(tmp_path / "a", final(90.0, 20.0), latent_dim=2)
  write_run(tmp_path / "b", final(91.0, 20.0), latent_dim=3)
  (tmp_path / "b/config.json").write_text('{"latent_dim": [3, 4]}')
  before = snapshot(tmp_path)
  assert_refused([str(tmp_path)], "latent_dim must be int, got [3, 4]", module="experiments.summarize")
  assert {p: v for p, v in snapshot(tmp_path).items() if p.name != ".lock"} == before


def test_a_forged_marker_without_a_model_spec_is_completed_by_the_run(tiny_npz, tmp_path):
  workdir = tmp_path / "run"
  workdir.mkdir()
  workdir_lib.write_json(workdir / "jaxvae.json", {"kind": "vae", "format": 2})
  run_cli(*args(tiny_npz, workdir, "--num_epochs=1", "--eval_iwae_samples=0"))
  model, params, _ = jaxvae.load_model(workdir)
  assert model.latent_dim == 3 and jax.tree.leaves(params)


@pytest.mark.parametrize("settings, message", [
    (dict(adam_eps=1e30), "adam_eps 1e+30 is above 1"),
    (dict(learning_rate=1e-30), "learning_rate 1e-30 is below 1e-09"),
    (dict(seed=2**31 - 1, num_replicas=2), "gives replicas seeds up to 2,147,483,648"),
])
def test_settings_that_train_nothing_or_overflow_are_refused(settings, message):
  with pytest.raises(jaxvae.ConfigError, match=re.escape(message)):
    jaxvae.Config(**settings).validate()


def test_sighup_checkpoints_and_stops_like_sigterm(tiny_npz, tmp_path):
  workdir = tmp_path / "run"
  cli = args(tiny_npz, workdir, "--num_epochs=30", "--checkpoint_every=50")
  proc = start_and_signal(cli, workdir, signal.SIGHUP, after_epochs=2)
  assert proc.returncode == 128 + signal.SIGHUP, proc.stderr[-2000:]
  stopped_at = int(proc.stderr.strip().splitlines()[-1].split("after epoch ")[1].split()[0])
  assert (workdir / "checkpoints" / str(stopped_at)).is_dir()


# Slow: passed in every run but one, which ended with -15 under a heavily loaded machine and was never
# reproduced (a window outside Python's handlers, if any, is not found yet); run with -m slow.
@pytest.mark.slow
def test_signals_during_shutdown_keep_the_clean_exit_code(tiny_npz, tmp_path):
  workdir = tmp_path / "run"
  proc = subprocess.Popen([sys.executable, "-m", "experiments.mnist", *args(tiny_npz, workdir, "--num_epochs=30")],
                          cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  metrics = workdir / "metrics.jsonl"
  deadline = time.time() + 240
  while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 2):
    time.sleep(0.01)
  while proc.poll() is None:  # one signal after another until it has stopped
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.002)
  proc.communicate(timeout=60)
  assert proc.returncode == 128 + signal.SIGTERM


def test_a_finished_run_reports_itself_complete_on_a_read_only_directory(tiny_npz, tmp_path, monkeypatch):
  workdir = tmp_path / "run"
  config = jaxvae.Config(latent_dim=2, hidden_dim=16, num_epochs=1, batch_size=64, eval_iwae_samples=0,
                         data_source="npz", data_path=str(tiny_npz))
  first = jaxvae.train_and_evaluate(config, workdir)
  (workdir / ".lock").unlink()
  real_open = open

  def read_only_open(file, mode="r", *rest, **kw):  # what a read-only mount answers to a write
    if any(c in mode for c in "wax+") and str(file).startswith(str(workdir)):
      raise OSError(30, "Read-only file system", str(file))
    return real_open(file, mode, *rest, **kw)

  monkeypatch.setattr("builtins.open", read_only_open)
  before = snapshot(workdir)
  assert jaxvae.train_and_evaluate(config, workdir) == first
  assert snapshot(workdir) == before
  with pytest.raises(jaxvae.WorkdirError, match="cannot be written"):
    jaxvae.train_and_evaluate(jaxvae.Config(**{**config.to_dict(), "num_epochs": 2}), workdir)
  np.testing.assert_equal(snapshot(workdir), before)
