"""experiments.report end to end on a tiny trained VAE, and its refusals."""

import json

import numpy as np
import pytest

import jaxvae
from tests.test_cli import run_cli
from tests.test_reliability import assert_refused

TINY = dict(latent_dim=2, hidden_dim=32, batch_size=64, num_epochs=2, eval_iwae_samples=0, data_source="npz")
SMALL = ["--num_images=6", "--num_simulated=4", "--ais_steps=30", "--ais_chains=4", "--leapfrog=3",
         "--iwae_samples=50", "--gap_steps=30", "--elbo_samples=40", "--superres_images=5", "--batch_size=4"]


@pytest.fixture(scope="module")
def runs(tiny_npz, tmp_path_factory):
  """A VAE, a two-layer VAE, an AE and a VAE on grayscale targets, trained for two epochs."""
  root = tmp_path_factory.mktemp("report_runs")
  for name, extra in (("vae", {}), ("two", {"stochastic_layers": 2, "h1_dim": 4, "top_hidden_dim": 8}),
                      ("ae", {"model": "ae"}), ("gray", {"binarization": "none"})):
    jaxvae.train_and_evaluate(jaxvae.Config(data_path=str(tiny_npz), **TINY, **extra), root / name)
  return root


def data_flags(tiny_npz):
  return ["--data_source=npz", f"--data_path={tiny_npz}"]


def test_report_writes_ais_iwae_and_bdmc_with_errors(runs, tiny_npz, tmp_path):
  outdir = tmp_path / "report"
  proc = run_cli(f"--workdir={runs / 'vae'}", f"--outdir={outdir}", *data_flags(tiny_npz), *SMALL,
                 module="experiments.report")
  assert "AIS from the prior, 30 steps × 4 chains" in proc.stdout and "BDMC on 4 images" in proc.stdout
  results = json.loads((outdir / "results.json").read_text())
  assert (outdir / "results.md").read_text().strip() == jaxvae.report.markdown(results)
  lik, bdmc = results["likelihood"], results["bdmc"]
  for estimate in (lik["iwae"], lik["ais"], lik["ais_minus_iwae"], bdmc["forward_nll"], bdmc["reverse_nll"],
                   bdmc["gap"]):
    assert np.isfinite(estimate["mean"]) and estimate["stderr"] > 0
  assert lik["ais"]["mc_stderr_per_image"] > 0 and lik["num_images"] == 6
  np.testing.assert_allclose(lik["ais_minus_iwae"]["mean"], lik["ais"]["mean"] - lik["iwae"]["mean"], rtol=1e-9)
  kl = results["kl"]
  assert kl["num_images"] == 128 and len(kl["kl_per_dimension"]) == 2 and 0 <= kl["active_units"] <= 2
  assert kl["mutual_information"]["mean"] + kl["marginal_kl"]["mean"] == pytest.approx(kl["average_kl"])
  assert kl["mutual_information"]["mean"] <= kl["log_num_images"] + 3 * kl["mutual_information"]["stderr"]
  gaps = results["gaps"]
  assert gaps["log_px"]["mean"] == pytest.approx(-lik["ais"]["mean"])
  assert gaps["elbo_encoder"]["mean"] == pytest.approx(-lik["neg_elbo"]["mean"])
  assert gaps["approximation"]["mean"] + gaps["amortization"]["mean"] == pytest.approx(gaps["inference"]["mean"])
  assert gaps["amortization"]["mean"] > 0  # q* is fitted from the encoder's q: the fit raises the ELBO
  assert lik["neg_elbo"]["mc_stderr_per_image"] > 0 and len(gaps["per_image"]["amortization"]) == 6
  assert "| approximation gap | amortization gap |" in proc.stdout
  assert (outdir / "results.png").read_bytes()[:4] == b"\x89PNG"
  sr = results["superres"]
  for factor in (2, 4):
    methods = sr[f"factor_{factor}"]["methods"]
    assert set(methods) == {"VAE, p(x | counts)", *jaxvae.superres.BASELINES}
    assert all(0 <= m["accuracy"]["mean"] <= 1 and m["nats_per_pixel"]["mean"] > 0 for m in methods.values())
  assert sr["num_images"] == 5 and "| 4×4 | bilinear |" in proc.stdout and (outdir / "superres.png").exists()


@pytest.mark.slow  # the joint latent's AIS is tested by default in test_inference
def test_report_of_a_two_layer_vae(runs, tiny_npz, tmp_path):
  """AIS and q* on the joint latent (h1, z); the KL split is left out, the active units of both
  layers reported."""
  outdir = tmp_path / "report"
  proc = run_cli(f"--workdir={runs / 'two'}", f"--outdir={outdir}", *data_flags(tiny_npz), *SMALL,
                 module="experiments.report")
  results = json.loads((outdir / "results.json").read_text())
  for estimate in (results["likelihood"]["ais"], results["bdmc"]["gap"], results["gaps"]["amortization"]):
    assert np.isfinite(estimate["mean"]) and estimate["stderr"] > 0
  assert set(results["kl"]) == {"num_images", "active_units", "h1_active_units", "latent_dim", "h1_dim"}
  assert "of h1 (two stochastic layers" in proc.stdout and (outdir / "results.png").exists()
  assert "superres" not in results  # the mean path through h1 is not the model's p(x | z)


@pytest.mark.parametrize("problem, message", [
    ("ae", "does not hold a single VAE run"),
    ("gray", "was trained on grayscale targets"),
    ("--num_images=129", "--num_images=129 exceeds the 128 test images"),
    ("--superres_images=129", "--superres_images=129 exceeds the 128 test images"),
    ("--ais_steps=0", "ais_steps must be positive"),
    ("--num_images=1", "num_images must be at least 2 for a standard error"),
    ("--ais_chains=0", "ais_chains must be positive"),
    ("--gap_steps=0", "gap_steps must be positive"),
    ("foreign_outdir", "is not empty and holds no jaxvae inference report"),
])
def test_report_refuses_bad_input_with_one_line(runs, tiny_npz, tmp_path, problem, message):
  workdir, outdir, extra = runs / "vae", tmp_path / "report", []
  if problem in ("ae", "gray"):
    workdir = runs / problem
  elif problem == "foreign_outdir":
    outdir.mkdir()
    (outdir / "notes.txt").write_text("mine")
  else:
    extra = [problem]
  assert_refused([f"--workdir={workdir}", f"--outdir={outdir}", *data_flags(tiny_npz), *SMALL, *extra], message,
                 outdir if outdir.exists() else None, module="experiments.report")
