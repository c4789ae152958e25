"""experiments.benchmark runs end to end on a tiny data set and prints every method and ratio.

It checks that the benchmark works, not how fast anything is (the numbers live in README.md).
"""

import re

import pytest

from tests.test_cli import run_cli
from tests.test_reliability import assert_refused

TINY = ["--hidden_dim=32", "--latent_dim=4", "--batch_size=64", "--num_epochs=2", "--num_replicas=2"]
METHODS = ("compiled_epoch", "jitted_steps", "roofline", "matmuls_adam", "sgd_epoch", "ensemble_2")


def test_benchmark_prints_each_method_and_the_bound(tiny_npz):
  proc = run_cli("--data_source=npz", f"--data_path={tiny_npz}", "--torch=false", *TINY,
                 module="experiments.benchmark")
  rows = {m.group(1): m.groups()[1:] for m in re.finditer(
      r"^(\w+)\s+([\d,]+)\s+([\d,]+)\s+([\d,]+)\s+(\S+)$", proc.stdout, re.MULTILINE)}
  assert tuple(rows) == METHODS, proc.stdout
  for name, (median, low, high, loss) in rows.items():
    median, low, high = (float(v.replace(",", "")) for v in (median, low, high))
    assert 0 < low <= median <= high, name
    trains = name not in ("roofline", "matmuls_adam")
    assert (loss != "nan") == trains, name  # the training methods report a finite -ELBO
  assert re.search(r"^bound \(matmuls_adam\) = \d+% of the roofline = [\d.]+x compiled_epoch$", proc.stdout, re.M)
  assert "ensemble_2 / 2 sequential runs = " in proc.stdout and "pytorch" not in proc.stdout


@pytest.mark.parametrize("cli_args, message", [
    (["--data_source=npz"], "needs a path"),
    (["--data_source=npz", "--data_path={path}", "--batch_size=4096"], "larger than the 512 training images"),
])
def test_benchmark_refuses_bad_input_with_one_line(tiny_npz, cli_args, message):
  cli_args = [a.format(path=tiny_npz) for a in cli_args]
  assert_refused([*cli_args, "--torch=false"], message, module="experiments.benchmark")
