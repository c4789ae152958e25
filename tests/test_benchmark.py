"""experiments.benchmark runs end to end on a tiny data set and prints every method and ratio.

It checks that the benchmark works, not how fast anything is (the numbers live in README.md).
"""

import re

import pytest

from tests.test_cli import run_cli
from tests.test_reliability import assert_refused

TINY = ["--hidden_dim=32", "--latent_dim=4", "--batch_size=64", "--num_epochs=2", "--num_replicas=2"]
METHODS = {"vae_b128": ("compiled_epoch", "jitted_steps", "roofline", "matmuls_adam", "sgd_epoch", "ensemble_2"),
           "table1_b20": ("compiled_epoch", "roofline", "matmuls_adam")}
ROW = re.compile(r"^(\w+)\s+([\d,]+)\s+([\d,]+)\s+([\d,]+)\s+(\S+)$", re.MULTILINE)


@pytest.mark.slow  # half a minute: two regimes, PyTorch beside each
def test_benchmark_measures_both_regimes_against_their_bounds(tiny_npz):
  proc = run_cli("--data_source=npz", f"--data_path={tiny_npz}", "--torch=false", *TINY,
                 module="experiments.benchmark")
  sections = re.split(r"^== ", proc.stdout, flags=re.MULTILINE)[1:]
  assert [s.split(":")[0] for s in sections] == list(METHODS), proc.stdout
  for section, (regime, methods) in zip(sections, METHODS.items()):
    rows = {m.group(1): m.groups()[1:] for m in ROW.finditer(section)}
    assert tuple(rows) == methods, section
    for name, (median, low, high, loss) in rows.items():
      median, low, high = (float(v.replace(",", "")) for v in (median, low, high))
      assert 0 < low <= median <= high, name
      trains = name not in ("roofline", "matmuls_adam")
      assert (loss != "nan") == trains, name  # the training methods report a finite -ELBO
    assert re.search(r"^compiled_epoch = \d+% \(rounds \d+%-\d+%\) of the bound \(matmuls_adam\); "
                     r"the bound = \d+% \(rounds \d+%-\d+%\) of the roofline$", section, re.M), section
    assert "pytorch" not in section
  assert "ensemble_2 / 2 sequential runs = " in sections[0]
  # The Table-1 regime runs on one core (a child process with XLA's one-thread flags) and
  # states what its rate means for the full schedule.
  assert "batch 20" in sections[1] and "one core" in sections[1]
  assert re.search(r"^Table 1's schedule \(3,280 epochs of 60,000 images\) at compiled_epoch's rate: [\d.]+ h",
                   sections[1], re.M)


@pytest.mark.parametrize("cli_args, message", [
    (["--data_source=npz"], "needs a path"),
    (["--data_source=npz", "--data_path={path}", "--batch_size=4096"], "larger than the 512 training images"),
    (["--data_source=npz", "--data_path={path}", "--regimes=vae_b128,fast"], "--regimes=vae_b128,fast: choose from"),
])
def test_benchmark_refuses_bad_input_with_one_line(tiny_npz, cli_args, message):
  cli_args = [a.format(path=tiny_npz) for a in cli_args]
  assert_refused([*cli_args, "--torch=false"], message, module="experiments.benchmark")
