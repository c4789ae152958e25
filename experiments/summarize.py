r"""Summarizes a sweep: one table row per configuration, mean ± std over its seeds.

  python -m experiments.summarize runs/latent

Reads the config.json and metrics.jsonl of every run under the directory (each a
directory marked as a jaxvae VAE run or ensemble replica; the `seed=<s>/` replicas of an
ensemble included) and writes into the sweep's directory (one launch.sh made, marked
as a sweep), or into --outdir (new, empty or an earlier summary's):
  results.csv  one row per run: the settings that vary, seed, status and final metrics;
  results.md   a markdown table per configuration (settings that vary across the
               sweep as columns), also printed;
  results.png  test NLL (IWAE, else -ELBO) and KL against --x, with ±1 std error bars.
Runs without a final record are listed as incomplete (with the epoch they reached),
never silently dropped. The three files replace an earlier summary's only once all
three are written.
"""

import csv
import dataclasses
import math
import pathlib

from absl import flags
from absl import logging
import numpy as np

import jaxvae
from jaxvae import config as config_lib
from jaxvae import plots

_X = flags.DEFINE_string("x", None, "Setting on the plot's x axis (default: the first numeric one that varies).")
OUTDIR = flags.DEFINE_string("outdir", None, "Where the results go (default: the sweep's directory, which must be "
                             "one launch.sh made); also experiments.anomaly's.")

KIND = "sweep summary"
OUTPUTS = ("results.csv", "results.md", "results.png")

METRICS = (  # (column, key in the final record, format)
    ("test −ELBO", "test_neg_elbo", ".2f"),
    ("IWAE NLL", "iwae_nll", ".2f"),
    ("KL", "test_kl", ".2f"),
    ("active units", "active_units", ".1f"),
    ("h1 active units", "h1_active_units", ".1f"),  # two stochastic layers only
    ("wall time (s)", "wall_seconds", ".0f"),
)
IGNORED = ("seed", "num_replicas", "data_dir", "data_path", "tfds_download", "checkpoint_every")


@dataclasses.dataclass
class Run:
  directory: pathlib.Path
  config: config_lib.Config
  final: dict | None  # the final metrics record; None while incomplete
  last_epoch: int


def _is_vae_run(directory: pathlib.Path) -> bool:
  """Whether `directory` is marked as a VAE run or a replica of one; a damaged marker is reported
  and the directory left out."""
  try:
    marker = jaxvae.workdir.read_marker(directory)
  except jaxvae.WorkdirError as e:
    logging.warning("%s; left out", e)
    return False
  return marker is not None and marker["kind"] in ("vae", "replica")


def find_runs(root: pathlib.Path) -> list[Run]:
  """Every single-model VAE/AE run under `root` (an ensemble's workdir stands for its replicas;
  runs of other families are left out)."""
  runs = []
  for config_path in sorted(root.rglob("config.json")):
    if not _is_vae_run(config_path.parent):
      continue
    config = config_lib.Config.from_json_file(config_path)
    if config.num_replicas > 1:
      continue
    records = jaxvae.read_metrics(config_path.parent / "metrics.jsonl")
    final = records[-1] if records and records[-1].get("final") else None
    epochs = [r["epoch"] for r in records if not r.get("final")]
    runs.append(Run(config_path.parent, config, final, max(epochs, default=0)))
  return runs


def varying_fields(runs: list[Run]) -> list[str]:
  """Settings (other than seed and bookkeeping) that differ between runs, in Config order."""
  names = [f.name for f in dataclasses.fields(config_lib.Config) if f.name not in IGNORED]
  return [n for n in names if len({getattr(r.config, n) for r in runs}) > 1]


def mean_std(values: list[float]) -> tuple[float, float]:
  """Mean and sample standard deviation (NaN for a single value)."""
  values = np.asarray(values, np.float64)
  return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else math.nan


def aggregate(runs: list[Run], fields: list[str]) -> list[dict]:
  """One row per configuration of the complete runs: settings, seeds, and (mean, std) per metric."""
  groups = {}
  for run in runs:
    if run.final is not None:
      groups.setdefault(tuple(getattr(run.config, f) for f in fields), []).append(run)
  rows = []
  for key in sorted(groups, key=lambda k: tuple((str(type(v)), v) for v in k)):
    members = groups[key]
    row = {"settings": dict(zip(fields, key)), "seeds": sorted(r.config.seed for r in members), "metrics": {}}
    for _, name, _ in METRICS:
      values = [r.final[name] for r in members if name in r.final]
      if len(values) == len(members):
        row["metrics"][name] = mean_std(values)
    rows.append(row)
  return rows


def markdown(rows: list[dict], fields: list[str]) -> str:
  """The table of `aggregate`'s rows; a metric no row has (h1 active units of one-layer models) is left out."""
  metrics = [m for m in METRICS if any(m[1] in row["metrics"] for row in rows)]
  header = [*fields, "seeds", *(column for column, _, _ in metrics)]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for row in rows:
    cells = [str(row["settings"][f]) for f in fields] + [str(len(row["seeds"]))]
    for _, name, fmt in metrics:
      if name not in row["metrics"]:
        cells.append("—")
        continue
      mean, std = row["metrics"][name]
      cells.append(f"{mean:{fmt}}" + ("" if math.isnan(std) else f" ± {std:{fmt}}"))
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def write_csv(path: pathlib.Path, runs: list[Run], fields: list[str], root: pathlib.Path) -> None:
  """One row per run, its directory relative to the sweep `root`."""
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["directory", *fields, "seed", "status", "last_epoch", *(name for _, name, _ in METRICS)])
    for run in runs:
      final = run.final or {}
      writer.writerow([run.directory.relative_to(root), *(getattr(run.config, name) for name in fields),
                       run.config.seed,
                       "complete" if run.final else "incomplete", run.last_epoch,
                       *(final.get(name, "") for _, name, _ in METRICS)])


def plot(path: pathlib.Path, rows: list[dict], x: str) -> None:
  """NLL and KL against setting `x`, one line per combination of the other settings."""
  plt = plots.pyplot()
  nll = "iwae_nll" if all("iwae_nll" in r["metrics"] for r in rows) else "test_neg_elbo"
  panels = [(nll, "test NLL, IWAE (nats)" if nll == "iwae_nll" else "test −ELBO (nats)"), ("test_kl", "KL (nats)")]
  if any(r["settings"].get("model") == "ae" for r in rows):
    panels[0] = (nll, "test −ELBO; AE: −log p(x | z) (nats)")
  lines = {}
  for row in rows:
    rest = ", ".join(f"{k}={v}" for k, v in row["settings"].items() if k != x)
    lines.setdefault(rest, []).append(row)
  fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), constrained_layout=True)
  for ax, (name, label) in zip(axes, panels):
    for rest, members in lines.items():
      members = sorted(members, key=lambda r: r["settings"][x])
      xs = [r["settings"][x] for r in members]
      means = [r["metrics"][name][0] for r in members]
      stds = [np.nan_to_num(r["metrics"][name][1]) for r in members]
      ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=rest or None)
    ax.set_xlabel(x)
    ax.set_ylabel(label)
    if all(isinstance(r["settings"][x], (int, float)) and r["settings"][x] > 0 for r in rows):
      ax.set_xscale("log")
      ticks = sorted({r["settings"][x] for r in rows})
      ax.set_xticks(ticks, [str(v) for v in ticks])
      ax.minorticks_off()
    ax.grid(alpha=0.3)
  if any(lines):
    axes[0].legend(fontsize=7)
  fig.savefig(path, dpi=120)
  plt.close(fig)


def check_sweep(root: pathlib.Path, remedy: str) -> None:
  """Refuses to write into `root` unless launch.sh marked it as a sweep (`remedy`: what to pass instead)."""
  marker = jaxvae.workdir.read_marker(root)
  if marker is None or marker["kind"] != "sweep":
    what = "has no jaxvae.json" if marker is None else f"is marked as a jaxvae {marker['kind']}"
    raise jaxvae.WorkdirError(f"{root} is not a sweep directory of launch.sh ({what}); nothing was written there. "
                              f"Its runs can still be read: pass {remedy}")


def summarize(root, x: str | None = None, outdir=None) -> str:
  """Writes results.csv, results.md and (when a setting varies) results.png into `outdir` (default
  `root`, which must then be a sweep's directory); returns the report."""
  root = pathlib.Path(root)
  if not root.is_dir():
    raise ValueError(f"{root} is not a directory")
  flag = "--outdir" if outdir is not None else "SWEEP_DIR"
  if outdir is None:
    check_sweep(root, "--outdir=DIR for the results (a new or empty directory)")
  with jaxvae.workdir.Workdir(root if outdir is None else outdir, KIND, OUTPUTS, flag=flag, accept=("sweep",)) as wd:
    wd.check()  # before anything is read
    runs = find_runs(root)
    if not runs:
      raise ValueError(f"{root} holds no jaxvae runs (no config.json below it)")
    fields = varying_fields(runs)
    if x is not None and x not in fields:  # before anything is written
      raise ValueError(f"--x={x} is not a setting that varies in this sweep; these do: {', '.join(fields) or 'none'}")
    wd.open()
    staged = jaxvae.workdir.Staged(wd, {})
    report = _write(staged, root, runs, fields, x)
    staged.commit([name for name in OUTPUTS if staged.path(name).exists()], OUTPUTS)
  return report


def _write(staged, root: pathlib.Path, runs: list[Run], fields: list[str], x: str | None) -> str:
  rows = aggregate(runs, fields)
  write_csv(staged.path("results.csv"), runs, fields, root)
  table = markdown(rows, fields)
  incomplete = [r for r in runs if r.final is None]
  report = table
  if any(r.config.model == "ae" for r in runs):
    report += "\nFor model=ae the test −ELBO column holds the reconstruction NLL −log p(x | z): an AE has no ELBO.\n"
  if incomplete:
    report += f"\n{len(incomplete)} incomplete run(s), not in the table:\n" + "".join(
        f"  {r.directory}  (epoch {r.last_epoch}/{r.config.num_epochs})\n" for r in incomplete)
  staged.path("results.md").write_text(report)
  numeric = [f for f in fields if all(isinstance(row["settings"][f], (int, float)) for row in rows)]
  x = x or (numeric[0] if numeric else None)
  if x is not None and rows:  # else no plot: the commit removes the one of an earlier state
    plot(staged.path("results.png"), rows, x)
  return report


def main(argv):
  try:
    report = summarize(argv[1], _X.value, OUTDIR.value)
  except jaxvae.errors.Error:
    raise
  except ValueError as e:
    raise jaxvae.ConfigError(str(e)) from None
  print(report, end="")
  root = pathlib.Path(OUTDIR.value or argv[1])
  written = [str(root / name) for name in ("results.csv", "results.md", "results.png") if (root / name).exists()]
  print(f"wrote {', '.join(written)}")


if __name__ == "__main__":
  jaxvae.cli.run(main, positional="SWEEP_DIR")
