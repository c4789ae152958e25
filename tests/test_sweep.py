"""launch.sh (grid, skip/resume, SLURM script) and experiments.summarize (aggregation)."""

import csv
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import jaxvae
from experiments import summarize
from tests.test_cli import ROOT

LAUNCH = str(ROOT / "launch.sh")


def launch(*args, cwd, env=None, check=True):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHON=sys.executable, **(env or {}))
  proc = subprocess.run([LAUNCH, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
  if check and proc.returncode:
    raise AssertionError(proc.stdout[-2000:] + proc.stderr[-2000:])
  return proc


def test_launch_is_shellcheck_clean():
  shellcheck = shutil.which("shellcheck") or str(pathlib.Path(sys.executable).parent / "shellcheck")
  proc = subprocess.run([shellcheck, LAUNCH], capture_output=True, text=True)
  assert proc.returncode == 0, proc.stdout


def test_dry_run_expands_the_grid_with_fixed_flags(tmp_path):
  out = launch("--name=g", "--grid=latent_dim=2,5", "--grid=seed=0,1,2", "--dry-run", "--",
               "--num_epochs=3", cwd=tmp_path).stdout.splitlines()
  commands = [line for line in out if "experiments.mnist" in line]
  assert len(commands) == 6 and out[-1] == f"6 to run, 0 finished, {max(1, os.cpu_count() // 2)} at once"
  assert commands[0].endswith("-m experiments.mnist --latent_dim=2 --seed=0 --num_epochs=3 "
                              "--workdir=runs/g/latent_dim=2,seed=0")
  assert commands[5].endswith("--latent_dim=5 --seed=2 --num_epochs=3 --workdir=runs/g/latent_dim=5,seed=2")
  assert not (tmp_path / "runs").exists()  # a dry run writes nothing
  ensemble = launch("--name=g", "--grid=seed=3,4,5", "--grid=latent_dim=2,5", "--ensemble", "--dry-run",
                    cwd=tmp_path).stdout.splitlines()
  assert [line.split("experiments.mnist ")[1] for line in ensemble if "experiments.mnist" in line] == [
      "--latent_dim=2 --seed=3 --num_replicas=3 --workdir=runs/g/latent_dim=2",
      "--latent_dim=5 --seed=3 --num_replicas=3 --workdir=runs/g/latent_dim=5"]


@pytest.mark.parametrize("args, message", [
    (["--grid=seed=0"], "--name is required"),
    (["--name=g"], "give at least one --grid"),
    (["--name=g", "--grid=seed"], "expected FLAG=V1,V2"),
    (["--name=g", "--grid=seed=0,,1"], "values must be non-empty"),
    (["--name=g", "--grid=seed=0", "--grid=seed=1"], "seed has two axes"),
    (["--name=g", "--grid=latent_dim=2,5,2"], "2 is given twice"),
    (["--name=g", "--grid=seed=0,2", "--ensemble"], "consecutive integer seeds"),
    (["--name=g", "--grid=seed=0", "--", "--workdir=x"], "sets --workdir itself"),
    (["--name=g", "--grid=seed=0", "--jobs=0"], "not a positive integer"),
    (["--name=g", "--grid=seed=0", "--latent_dim=3"], "unknown argument '--latent_dim=3'"),
])
def test_bad_arguments_are_one_error_line(tmp_path, args, message):
  proc = launch(*args, "--dry-run", cwd=tmp_path, check=False)
  assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr


def test_slurm_script_runs_the_same_commands(tmp_path):
  launch("--name=s", "--grid=latent_dim=2,5", "--jobs=4", "--slurm", "--", "--num_epochs=3", cwd=tmp_path)
  script = tmp_path / "runs/s/slurm.sh"
  text = script.read_text()
  assert "#SBATCH --array=0-1%4" in text and "#SBATCH --job-name=s" in text
  assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
  env = dict(os.environ, SLURM_ARRAY_TASK_ID="1", LAUNCH_DRY_RUN="1", PYTHON="python")
  task = subprocess.run(["bash", str(script)], cwd="/", env=env, capture_output=True, text=True)
  assert task.stdout == "python -m experiments.mnist --latent_dim=5 --num_epochs=3 --workdir=runs/s/latent_dim=5\n"
  env.pop("SLURM_ARRAY_TASK_ID")
  assert subprocess.run(["bash", str(script)], env=env, capture_output=True).returncode != 0


def processes_mentioning(text):
  """Command lines of the running processes that contain `text` (Linux /proc)."""
  found = []
  for cmdline in pathlib.Path("/proc").glob("[0-9]*/cmdline"):
    try:
      command = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:  # the process ended meanwhile
      continue
    if text in command:
      found.append(command)
  return found


def test_sweep_killed_and_relaunched_runs_only_what_is_missing(tiny_npz, tmp_path):
  options = ["--name=k", "--grid=latent_dim=2,3", "--grid=seed=0,1", "--jobs=2"]
  fixed = ["--data_source=npz", f"--data_path={tiny_npz}", "--hidden_dim=16", "--batch_size=64", "--num_epochs=6"]
  args = [*options, "--", *fixed, "--eval_iwae_samples=10"]
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHON=sys.executable)
  proc = subprocess.Popen([LAUNCH, *args], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)
  logs = tmp_path / "runs/k/logs"
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None and not list(logs.glob("*.done")):
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  _, stderr = proc.communicate(timeout=300)
  done = sorted(p.stem for p in logs.glob("*.done"))
  assert proc.returncode == 143 and "stopping" in stderr
  assert 1 <= len(done) < 4, done
  # The runs that were going got the signal and stopped before launch.sh exited.
  assert not processes_mentioning(str(tmp_path))
  finished_metrics = {d: (tmp_path / "runs/k" / d / "metrics.jsonl").read_text() for d in done}

  out = launch(*args, cwd=tmp_path).stdout
  assert f"{4 - len(done)} to run, {len(done)} finished" in out and "all 4 runs finished" in out
  for d, text in finished_metrics.items():  # finished runs were not touched
    assert (tmp_path / "runs/k" / d / "metrics.jsonl").read_text() == text
  assert len(list(logs.glob("*.done"))) == 4
  assert "0 to run, 4 finished" in launch("--dry-run", *args, cwd=tmp_path).stdout
  # Another value of a fixed flag is another command: no run counts as finished.
  other = ["--dry-run", *options, "--", *fixed, "--eval_iwae_samples=20"]
  assert "4 to run, 0 finished" in launch(*other, cwd=tmp_path).stdout

  report = summarize.summarize(tmp_path / "runs/k")
  rows = [line for line in report.splitlines() if line.startswith("| ") and not line.startswith("| latent_dim")]
  assert [row.split(" | ")[:2] for row in rows] == [["| 2", "2"], ["| 3", "2"]]
  assert (tmp_path / "runs/k/results.png").stat().st_size > 1000


def mark_sweep(directory):
  """Marks `directory` as a sweep's, as launch.sh does."""
  directory.mkdir(parents=True, exist_ok=True)
  jaxvae.workdir.write_json(directory / "jaxvae.json", {"kind": "sweep", "format": 2})


def write_run(directory, metrics_list=None, marker=None, **config):
  """A fake finished (or, with an unfinished metrics list, incomplete) run, marked as a VAE run."""
  directory.mkdir(parents=True)
  jaxvae.workdir.write_json(directory / "jaxvae.json", marker or {"kind": "vae", "format": 2})
  (directory / "config.json").write_text(jaxvae.Config(**config).to_json())
  (directory / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in metrics_list))


def final(nll, kl, epochs=10):
  return [{"epoch": epochs, "train_neg_elbo": 1.0},
          {"final": True, "epoch": epochs, "test_neg_elbo": nll + 5, "iwae_nll": nll, "test_kl": kl,
           "active_units": kl / 2, "wall_seconds": 60.0}]


def test_summary_shows_h1_active_units_when_a_two_layer_run_has_them(tmp_path):
  mark_sweep(tmp_path)
  write_run(tmp_path / "stochastic_layers=1", final(90.0, 20.0), stochastic_layers=1)
  two = final(88.0, 24.0)
  two[-1]["h1_active_units"] = 30
  write_run(tmp_path / "stochastic_layers=2", two, stochastic_layers=2)
  lines = summarize.summarize(tmp_path).splitlines()
  assert lines[0] == ("| stochastic_layers | seeds | test −ELBO | IWAE NLL | KL | active units | h1 active units | "
                      "wall time (s) |")
  assert lines[2].endswith("| 10.0 | — | 60 |") and lines[3].endswith("| 12.0 | 30.0 | 60 |")


def test_summary_aggregates_seeds_and_lists_incomplete_runs(tmp_path):
  mark_sweep(tmp_path)
  for latent, seed, nll in [(2, 0, 130.0), (2, 1, 132.0), (2, 2, 134.0), (20, 0, 100.0)]:
    write_run(tmp_path / f"latent_dim={latent},seed={seed}", final(nll, latent + seed), latent_dim=latent, seed=seed)
  write_run(tmp_path / "latent_dim=20,seed=1", [{"epoch": 3, "train_neg_elbo": 1.0}], latent_dim=20, seed=1)
  # An ensemble: its workdir stands for the replicas in seed=<s>/.
  write_run(tmp_path / "latent_dim=5", [], {"kind": "vae", "format": 2, "num_replicas": 2}, latent_dim=5,
            num_replicas=2)
  for index, (seed, nll) in enumerate([(0, 110.0), (1, 112.0)]):
    write_run(tmp_path / f"latent_dim=5/seed={seed}", final(nll, 7.0), {"kind": "replica", "format": 2, "index": index},
              latent_dim=5, seed=seed)

  report = summarize.summarize(tmp_path)
  lines = report.splitlines()
  assert lines[0] == "| latent_dim | seeds | test −ELBO | IWAE NLL | KL | active units | wall time (s) |"
  assert lines[2] == "| 2 | 3 | 137.00 ± 2.00 | 132.00 ± 2.00 | 3.00 ± 1.00 | 1.5 ± 0.5 | 60 ± 0 |"
  assert lines[3] == "| 5 | 2 | 116.00 ± 1.41 | 111.00 ± 1.41 | 7.00 ± 0.00 | 3.5 ± 0.0 | 60 ± 0 |"
  assert lines[4] == "| 20 | 1 | 105.00 | 100.00 | 20.00 | 10.0 | 60 |"
  assert "1 incomplete run(s)" in report and "latent_dim=20,seed=1  (epoch 3/50)" in report
  assert (tmp_path / "results.md").read_text() == report
  with open(tmp_path / "results.csv") as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 7 and {r["status"] for r in rows} == {"complete", "incomplete"}
  assert {r["directory"] for r in rows if r["latent_dim"] == "5"} == {"latent_dim=5/seed=0", "latent_dim=5/seed=1"}
  np.testing.assert_allclose(sorted(float(r["iwae_nll"]) for r in rows if r["latent_dim"] == "2"), [130, 132, 134])
  assert (tmp_path / "results.png").stat().st_size > 1000


def test_summary_of_nothing_is_one_error_line(tmp_path):
  mark_sweep(tmp_path)
  proc = subprocess.run([sys.executable, "-m", "experiments.summarize", str(tmp_path)], cwd=ROOT,
                        capture_output=True, text=True)
  assert proc.returncode == 1 and proc.stderr.strip() == f"error: {tmp_path} holds no jaxvae runs (no config.json below it)"
