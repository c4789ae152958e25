r"""Anomaly detection by leaving one digit out: AUROC per held-out digit and score, VAE and AE.

  ./launch.sh --name anomaly --grid=model=vae,ae --grid=exclude_digit=0,1,2,3,4,5,6,7,8,9 \
      -- --num_epochs=20 --eval_iwae_samples=0
  python -m experiments.anomaly runs/anomaly

Each run trains on the training set without one digit. Its whole test set is then
scored (`jaxvae.anomaly_scores`: -ELBO, IWAE NLL and reconstruction error for a
VAE; reconstruction error for an AE, which has no density), and the AUROC of each
score at telling the held-out digit from the nine seen ones is computed
(`jaxvae.auroc`). Writes anomaly.json, anomaly.md (also printed) and anomaly.png
into the sweep's directory (one launch.sh made, marked as a sweep), or into --outdir (new,
empty or an earlier analysis's); they replace those of an earlier analysis only once all
three are written. With several seeds per setting, AUROCs are averaged.

Result (experiments/RESULTS.md): mean AUROC over the ten held-out digits 0.685 to 0.691 for every
score (VAE or AE); a held-out 1 is the hardest (0.047 to 0.068).
"""

import json
import pathlib

from absl import flags
import jax
import numpy as np

import jaxvae
from experiments import summarize
from jaxvae import plots

_IWAE_SAMPLES = flags.DEFINE_integer("iwae_samples", 100, "Importance samples of the IWAE NLL score.",
                                     lower_bound=1)
_DATA_SOURCE = flags.DEFINE_enum("data_source", "auto", jaxvae.data.SOURCES, "As in experiments.mnist.")
_DATA_PATH = flags.DEFINE_string("data_path", None, "File for --data_source=npz.")

KIND = "anomaly analysis"
OUTPUTS = ("anomaly.md", "anomaly.json", "anomaly.png")

SCORES = (  # (column, model, score key)
    ("VAE −ELBO", "vae", "neg_elbo"),
    ("VAE IWAE NLL", "vae", "iwae_nll"),
    ("VAE reconstruction", "vae", "reconstruction"),
    ("AE reconstruction", "ae", "reconstruction"),
)


def score_runs(runs, test_x, test_labels, iwae_samples: int) -> dict[str, dict[int, list[float]]]:
  """{column: {held-out digit: [AUROC of each seed]}} over the complete leave-one-out runs."""
  table = {column: {} for column, _, _ in SCORES}
  for run in runs:
    digit = run.config.exclude_digit
    model, params, config = jaxvae.load_model(run.directory)
    scores = jaxvae.anomaly_scores(model, params, jax.random.key(config.seed), test_x, config.model, iwae_samples)
    for column, model_type, key in SCORES:
      if model_type == config.model:
        table[column].setdefault(digit, []).append(jaxvae.auroc(scores[key], test_labels == digit))
    print(f"{run.directory}: " + ", ".join(f"{k} AUROC {jaxvae.auroc(v, test_labels == digit):.3f}"
                                           for k, v in scores.items()), flush=True)
  return table


def markdown(table, digits) -> str:
  lines = ["| held-out digit | " + " | ".join(c for c, _, _ in SCORES) + " |", "|---" * (len(SCORES) + 1) + "|"]
  for digit in digits:
    cells = [f"{np.mean(table[c][digit]):.3f}" if digit in table[c] else "—" for c, _, _ in SCORES]
    lines.append(f"| {digit} | " + " | ".join(cells) + " |")
  means = [f"**{np.mean([np.mean(v) for v in table[c].values()]):.3f}**" if table[c] else "—" for c, _, _ in SCORES]
  lines.append("| mean | " + " | ".join(means) + " |")
  return "\n".join(lines) + "\n"


def main(argv):
  root = pathlib.Path(argv[1])
  if not root.is_dir():
    raise jaxvae.ConfigError(f"{root} is not a directory")
  outdir = summarize.OUTDIR.value  # --outdir, as experiments.summarize's
  if outdir is None:
    summarize.check_sweep(root, "--outdir=DIR for the analysis (a new or empty directory)")
  with jaxvae.workdir.Workdir(outdir or root, KIND, OUTPUTS, flag="--outdir" if outdir else "SWEEP_DIR",
                              accept=("sweep",)) as wd:
    wd.check()
    analyse(root, wd)


def analyse(root: pathlib.Path, wd) -> None:
  """Scores every complete leave-one-out run under `root`; the three files go into `wd`."""
  runs = [r for r in summarize.find_runs(root) if r.final is not None and r.config.exclude_digit is not None]
  if not runs:
    raise jaxvae.ConfigError(f"{root} holds no complete run with --exclude_digit")
  data_sources = {(r.config.data_source, r.config.data_path, r.config.binarization) for r in runs}
  if len(data_sources) > 1:
    raise jaxvae.ConfigError(f"the runs under {root} use different data or binarizations: {sorted(data_sources)}")
  mnist = jaxvae.load_mnist(_DATA_SOURCE.value, path=_DATA_PATH.value)
  test_x = jaxvae.test_targets(mnist.test.images, runs[0].config.binarization)
  table = score_runs(runs, test_x, mnist.test.labels, _IWAE_SAMPLES.value)
  digits = sorted({r.config.exclude_digit for r in runs})
  text = markdown(table, digits)
  wd.open()
  staged = jaxvae.workdir.Staged(wd, {})
  staged.path("anomaly.md").write_text(text)
  staged.path("anomaly.json").write_text(json.dumps(
      {"iwae_samples": _IWAE_SAMPLES.value,
       "auroc": {c: {str(d): v for d, v in sorted(per_digit.items())} for c, per_digit in table.items()}},
      indent=2) + "\n")
  plot(staged.path("anomaly.png"), table, digits)
  staged.commit(OUTPUTS, OUTPUTS)
  print(text)
  print(f"anomaly.md, anomaly.json and anomaly.png in {wd.path}")


def plot(path, table, digits) -> None:
  """Grouped bars: AUROC per held-out digit, one bar per score."""
  plt = plots.pyplot()
  fig, ax = plt.subplots(figsize=(9, 3.6))
  width = 0.8 / len(SCORES)
  for i, (column, _, _) in enumerate(SCORES):
    values = [np.mean(table[column][d]) if d in table[column] else np.nan for d in digits]
    ax.bar(np.arange(len(digits)) + (i - (len(SCORES) - 1) / 2) * width, values, width, label=column)
  ax.axhline(0.5, color="gray", lw=0.8, ls="--")
  ax.set_xticks(np.arange(len(digits)), [str(d) for d in digits])
  ax.set_xlabel("digit left out of training (the anomaly)")
  ax.set_ylabel("AUROC")
  ax.set_ylim(0, 1.12)
  ax.legend(fontsize=8, ncol=len(SCORES), loc="upper center", frameon=False)
  plots.save_figure(fig, path)


if __name__ == "__main__":
  jaxvae.cli.run(main, positional="SWEEP_DIR")
