"""The latent-space studies end to end on tiny data: AE runs, pictures, classifier, tables, AUROCs."""

import json
import shutil

import jax
import numpy as np
import pytest
from PIL import Image

import jaxvae
from tests.test_cli import run_cli

TINY = dict(latent_dim=2, hidden_dim=32, batch_size=64, num_epochs=3, eval_iwae_samples=0, data_source="npz")


@pytest.fixture(scope="module")
def studies(tiny_npz, tmp_path_factory):
  """A VAE and an AE trained with digit 3 left out, and a classifier, in one directory."""
  root = tmp_path_factory.mktemp("studies")
  (root / "sweep").mkdir()
  jaxvae.workdir.write_json(root / "sweep" / "jaxvae.json", {"kind": "sweep", "format": 2})  # as launch.sh marks it
  finals = {}
  for model in ("vae", "ae"):
    config = jaxvae.Config(model=model, exclude_digit=3, data_path=str(tiny_npz), **TINY)
    finals[model] = jaxvae.train_and_evaluate(config, root / "sweep" / model)
  run_cli(f"--workdir={root / 'classifier'}", "--num_epochs=3", "--data_source=npz", f"--data_path={tiny_npz}",
          module="experiments.classifier")
  return root, finals


def test_ae_run_records_its_reconstruction_and_no_iwae(studies, tiny_npz):
  root, finals = studies
  final = finals["ae"]
  assert final["test_kl"] == 0.0 and "iwae_nll" not in final and "iwae_samples" not in final
  assert final["test_neg_elbo"] == pytest.approx(-final["test_reconstruction"])
  # Complete: the same config (IWAE on by default, but not for an AE) only reports the result.
  config = jaxvae.Config(model="ae", exclude_digit=3, data_path=str(tiny_npz), **{**TINY, "eval_iwae_samples": 5000})
  assert jaxvae.train_and_evaluate(config, root / "sweep" / "ae") == final


def test_excluded_digit_is_not_trained_on(studies, tiny_npz):
  root, finals = studies
  mnist = jaxvae.load_mnist("npz", path=tiny_npz)
  kept = int(np.sum(mnist.train.labels != 3))
  assert kept < len(mnist.train.labels)
  assert finals["vae"]["step"] == 3 * (kept // 64)  # 3 epochs of full batches of the other digits
  # The checkpoint records the training set without the 3s.
  config = jaxvae.Config(exclude_digit=3, data_path=str(tiny_npz), **TINY)
  target = jaxvae.create_train_state(jaxvae.build_model(config), jaxvae.make_optimizer(config), jax.random.key(0))
  with jaxvae.checkpoints.manager(root / "sweep" / "vae") as mngr:
    with pytest.raises(jaxvae.CheckpointError, match="trained on other data"):
      jaxvae.checkpoints.restore(mngr, target, data_fingerprint=jaxvae.data.fingerprint(mnist.train))
    jaxvae.checkpoints.restore(mngr, target, data_fingerprint=jaxvae.data.fingerprint(
        jaxvae.data.without_digit(mnist.train, 3)))


def test_ensemble_of_autoencoders_writes_each_replicas_pictures(tiny_npz, tmp_path):
  config = jaxvae.Config(model="ae", num_replicas=2, exclude_digit=5, data_path=str(tiny_npz),
                         **{**TINY, "num_epochs": 1})
  finals = jaxvae.train_and_evaluate(config, tmp_path / "ens")
  assert len(finals) == 2 and all("iwae_nll" not in f and f["test_kl"] == 0.0 for f in finals)
  for seed in (0, 1):
    for name in ("latent.png", "interpolations.png", "manifold.png", "samples.png"):
      assert (tmp_path / "ens" / f"seed={seed}" / name).is_file(), (seed, name)


def test_runs_write_latent_pictures(studies):
  root, _ = studies
  for model in ("vae", "ae"):
    workdir = root / "sweep" / model
    for name in ("latent.png", "interpolations.png", "manifold.png", "manifold_linear.png"):
      assert (workdir / name).is_file(), (model, name)
    manifold = np.asarray(Image.open(workdir / "manifold.png"))
    assert manifold.shape == (20 * 30 + 2, 20 * 30 + 2)  # 20 x 20 decoded digits of 28 px, 2 px borders
    assert len(np.unique(manifold)) > 50  # pictures, not a constant fill
    interpolations = np.asarray(Image.open(workdir / "interpolations.png"))
    assert interpolations.shape[1] == 2 * (12 * 30 + 2)  # original, 10 path points, original; scaled x2


def test_latent_space_study_writes_tables_and_pictures(studies, tiny_npz):
  root, _ = studies
  out = root / "latent_space"
  proc = run_cli(f"--vae={root / 'sweep' / 'vae'}", f"--ae={root / 'sweep' / 'ae'}",
                 f"--classifier={root / 'classifier'}", f"--outdir={out}", "--data_source=npz",
                 f"--data_path={tiny_npz}", "--num_samples=200", "--num_paths=20", "--num_inpaint=40",
                 "--inpaint_steps=20", "--inpaint_samples=50", module="experiments.latent_space")
  assert "| VAE, z ~ N(0, I) |" in proc.stdout
  results = json.loads((out / "results.json").read_text())
  assert set(results["prior_samples"]) == {"VAE, z ~ N(0, I)", "AE, z ~ N(0, I)",
                                           "AE, z ~ Gaussian fitted to its codes"}
  for row in results["prior_samples"].values():
    assert 0.1 <= row["mean_max_prob"] <= 1 and 0 <= row["confident"] <= 1
  assert set(results["interpolation"]) == {f"{m}, {i}" for m in ("VAE", "AE") for i in ("linear", "spherical")}
  assert all(v["length_ratio"] >= 1 - 1e-6 for v in results["interpolation"].values())
  assert all(0 <= v <= 1 for v in results["knn_accuracy"].values())
  for fills in results["inpainting"].values():
    assert set(fills) == {"mean training image", "VAE, predictive", "VAE, optimize", "VAE, iterate", "AE, optimize",
                         "AE, iterate"}
  for name in ("prior_samples.png", "interpolations.png", "inpainting.png", "latent_means.png", "results.md"):
    assert (out / name).is_file(), name


@pytest.mark.parametrize("problem", ["swapped models", "outdir is a run", "outdir holds other files"])
def test_latent_space_study_refuses_bad_input(studies, tiny_npz, tmp_path, problem):
  root, _ = studies
  vae, ae, outdir = root / "sweep" / "vae", root / "sweep" / "ae", tmp_path / "out"
  if problem == "swapped models":
    vae, ae = ae, vae
    expected = f"error: --vae={vae} does not hold a single vae run"
  elif problem == "outdir is a run":
    outdir = vae
    expected = f"error: --outdir={outdir} holds a vae run, not a latent-space study one"
  else:
    outdir.mkdir()
    (outdir / "notes.txt").write_text("mine")
    expected = f"error: --outdir={outdir} is not empty and holds no jaxvae latent-space study run (no jaxvae.json"
  before = sorted(p.name for p in outdir.iterdir()) if outdir.exists() else None
  proc = run_cli(f"--vae={vae}", f"--ae={ae}", f"--classifier={root / 'classifier'}", f"--outdir={outdir}",
                 "--data_source=npz", f"--data_path={tiny_npz}", check=False, module="experiments.latent_space")
  assert proc.returncode != 0
  assert proc.stderr.strip().splitlines()[-1].startswith(expected)
  assert (sorted(p.name for p in outdir.iterdir()) if outdir.exists() else None) == before


def test_anomaly_study_reports_auroc_per_score(studies, tiny_npz):
  root, _ = studies
  proc = run_cli(str(root / "sweep"), "--iwae_samples=10", "--data_source=npz", f"--data_path={tiny_npz}",
                 module="experiments.anomaly")
  assert "| mean |" in proc.stdout
  aurocs = json.loads((root / "sweep" / "anomaly.json").read_text())["auroc"]
  assert set(aurocs) == {"VAE −ELBO", "VAE IWAE NLL", "VAE reconstruction", "AE reconstruction"}
  assert all(set(per_digit) == {"3"} and 0 <= per_digit["3"][0] <= 1 for per_digit in aurocs.values())
  assert (root / "sweep" / "anomaly.png").is_file()


def test_classifier_is_kept_unless_overwritten(studies, tiny_npz, tmp_path):
  root, _ = studies
  workdir = tmp_path / "classifier"
  shutil.copytree(root / "classifier", workdir)
  before = (workdir / "metrics.jsonl").read_text()
  proc = run_cli(f"--workdir={workdir}", "--num_epochs=3", "--data_source=npz", f"--data_path={tiny_npz}",
                 module="experiments.classifier")
  assert "is complete" in proc.stdout
  assert (workdir / "metrics.jsonl").read_text() == before
  proc = run_cli(f"--workdir={workdir}", "--num_epochs=3", "--seed=1", "--data_source=npz", f"--data_path={tiny_npz}",
                 check=False, module="experiments.classifier")
  assert proc.returncode != 0 and "seed: 0 -> 1" in proc.stderr.strip().splitlines()[-1]
  run_cli(f"--workdir={workdir}", "--num_epochs=1", "--overwrite", "--data_source=npz", f"--data_path={tiny_npz}",
          module="experiments.classifier")
  assert json.loads((workdir / "config.json").read_text())["num_epochs"] == 1
  assert [r["epoch"] for r in jaxvae.read_metrics(workdir / "metrics.jsonl")] == [1, 1]
  jaxvae.classifier.load_classifier(workdir)
  (tmp_path / "notes").mkdir()
  (tmp_path / "notes" / "todo.txt").write_text("mine")
  proc = run_cli(f"--workdir={tmp_path / 'notes'}", "--data_source=npz", f"--data_path={tiny_npz}", check=False,
                 module="experiments.classifier")
  assert proc.returncode != 0 and "holds no jaxvae classifier run" in proc.stderr.strip().splitlines()[-1]
  assert (tmp_path / "notes" / "todo.txt").read_text() == "mine"


def test_bad_exclude_digit_is_one_error_line(tmp_path, tiny_npz):
  proc = run_cli("--exclude_digit=12", f"--workdir={tmp_path / 'run'}", "--data_source=npz",
                 f"--data_path={tiny_npz}", check=False)
  assert proc.returncode != 0
  assert proc.stderr.strip().splitlines()[-1] == "error: exclude_digit must be a digit 0..9, got 12"
  assert not (tmp_path / "run").exists()
