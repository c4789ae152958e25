r"""Training throughput of jaxvae's step against its own bound, in two regimes, side by side.

  python -m experiments.benchmark --num_epochs=3

Regime `vae_b128`: the 784-400-20 ReLU VAE at batch 128 on grayscale targets (binarization
`none`, Adam 1e-3), as the PyTorch VAE example, on all cores; the batch is split over all
devices (`jaxvae.train.data_mesh`). Regime `table1_b20`: Burda et al.'s one-layer Table-1 model
(784-200-200-50 tanh, output biases at the data mean, Adam eps 1e-4, dynamic binarization) at
their batch of 20 on ONE core, as the README's Table-1 runs use; it runs in a child process
started with `--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1`.

Each regime measures, interleaved epoch by epoch so that every method sees the same machine
load, the median images/s of:
  compiled_epoch  jaxvae's epoch: one jitted `lax.scan` over device-resident data;
  jitted_steps    a Python loop of jitted steps fed host batches (the common pattern; vae_b128);
  pytorch         the same model, loss and optimizer in PyTorch (if torch is installed; on the GPU,
                  data there too, when JAX runs on one);
  roofline        the float32 matmuls of the same shapes alone, forward and backward;
  matmuls_adam    roofline with Adam's update of the weights in place of the plain step: the
                  bound, what compiled_epoch would reach if the rest of its step were free;
  sgd_epoch       compiled_epoch with plain SGD: the gap to compiled_epoch is Adam's cost (vae_b128);
  ensemble_R      R models (seeds 0..R-1) in one vmapped epoch, total images/s of all
                  replicas (R sequential runs reach compiled_epoch's images/s; vae_b128).

Result (experiments/RESULTS.md), Intel Xeon: compiled_epoch at 2.0x PyTorch's images/s at batch
128 and 2.7x at batch 20 on one core; 84% and 74% of the matmuls-and-Adam bound.
"""

import dataclasses
import os
import subprocess
import sys
import time

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxvae

REGIMES = ("vae_b128", "table1_b20")
# Burda et al.'s one-layer Table-1 model and optimizer (see README.md, "Burda et al.'s Table 1").
TABLE1 = dict(latent_dim=50, hidden_dim=200, num_layers=2, activation="tanh", output_bias="data_mean",
              adam_eps=1e-4, batch_size=20, lr_schedule="iwae", binarization="dynamic")
ONE_CORE_FLAGS = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
TABLE1_EPOCHS = 3280

_REGIMES = flags.DEFINE_list("regimes", ",".join(REGIMES), f"Which regimes to measure, of {', '.join(REGIMES)}.")
_NUM_EPOCHS = flags.DEFINE_integer("num_epochs", 5, "Timed epochs per method (after one warm-up).", lower_bound=1)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 128, "Batch size of vae_b128.", lower_bound=1)
_LATENT_DIM = flags.DEFINE_integer("latent_dim", 20, "Latent dimension of vae_b128.", lower_bound=1)
_HIDDEN_DIM = flags.DEFINE_integer("hidden_dim", 400, "Hidden width of vae_b128.", lower_bound=1)
_TORCH = flags.DEFINE_boolean("torch", True, "Include PyTorch when it is installed.")
_NUM_REPLICAS = flags.DEFINE_integer("num_replicas", 8, "Models in vae_b128's ensemble_R method; 0 leaves it out.",
                                     lower_bound=0)
_DATA_SOURCE = flags.DEFINE_enum("data_source", "auto", jaxvae.data.SOURCES, "As in experiments.mnist.")
_DATA_PATH = flags.DEFINE_string("data_path", None, "File for --data_source=npz.")


@dataclasses.dataclass(frozen=True)
class Regime:
  name: str
  config: jaxvae.Config  # the model, optimizer, batch size and binarization of `experiments.mnist`
  one_core: bool  # run with ONE_CORE_FLAGS (in a child process unless they are set already)
  extra_methods: bool  # jitted_steps, sgd_epoch and ensemble_R too
  description: str


def regime(name: str) -> Regime:
  if name == "vae_b128":
    config = jaxvae.Config(latent_dim=_LATENT_DIM.value, hidden_dim=_HIDDEN_DIM.value,
                           batch_size=_BATCH_SIZE.value, binarization="none")
    return Regime(name, config, one_core=False, extra_methods=True,
                  description=f"784-{config.hidden_dim}-{config.latent_dim} ReLU VAE, batch {config.batch_size}, "
                              "grayscale targets, Adam 1e-3, all cores")
  return Regime(name, jaxvae.Config(**TABLE1), one_core=True, extra_methods=False,
                description="Table-1 one-layer model 784-200-200-50 tanh, batch 20, dynamic binarization, "
                            "Adam eps 1e-4, one core")


def layer_widths(config: jaxvae.Config, data_dim: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """(encoder, decoder) widths of the MLP VAE `config` describes: (D, H.., 2L) and (L, H.., D)."""
  hidden = (config.hidden_dim,) * config.num_layers
  return (data_dim, *hidden, 2 * config.latent_dim), (config.latent_dim, *hidden, data_dim)


def compiled_epoch_runner(config, images, optimizer=None, num_replicas=0, model=None):
  """jaxvae's compiled epoch of `config` (its model, optimizer and binarization) on `images`;
  `model` in place of the one `config` builds (e.g. with `matmul_dtype`)."""
  mesh = jaxvae.train.data_mesh()
  ensemble = num_replicas > 0
  model = jaxvae.build_model(config) if model is None else model
  optimizer = optimizer or jaxvae.train.make_optimizer(config, len(images) // config.batch_size)
  keys = jaxvae.KeyStreams.from_seeds(range(num_replicas)) if ensemble else jaxvae.KeyStreams.from_seed(0)
  bias = jaxvae.models.data_mean_bias(images) if config.output_bias == "data_mean" else None
  state = jaxvae.train.replicate(jaxvae.create_train_state(model, optimizer, keys.init, bias), mesh)
  epoch_fn = jaxvae.make_train_epoch(model, optimizer, config.batch_size, config.binarization, mesh=mesh,
                                     ensemble=ensemble)
  data = jaxvae.train.replicate(jaxvae.data.prepare_train_images(images, config.binarization), mesh)

  def run(epoch):
    nonlocal state
    state, metrics = epoch_fn(state, data, jaxvae.train.epoch_key(keys.data, epoch), keys.train)
    return float(np.mean(metrics["neg_elbo"]))

  return run


def jitted_steps_runner(config, images, model=None):
  """A Python loop of jaxvae's jitted step over host batches of a fresh permutation each epoch."""
  model = jaxvae.build_model(config) if model is None else model
  optimizer = jaxvae.train.make_optimizer(config, len(images) // config.batch_size)
  keys = jaxvae.KeyStreams.from_seed(0)
  state = jaxvae.create_train_state(model, optimizer, keys.init)
  step_fn = jax.jit(jaxvae.make_train_step(model, optimizer, config.binarization), donate_argnums=0)
  rng = np.random.default_rng(0)
  batch_size = config.batch_size
  num_batches = len(images) // batch_size

  def run(epoch):
    nonlocal state
    perm = rng.permutation(len(images))
    for i in range(num_batches):
      batch = images[perm[i * batch_size : (i + 1) * batch_size]]
      state, metrics = step_fn(state, batch, jax.random.fold_in(keys.data, i), keys.train)
    return float(metrics["neg_elbo"])

  return run


def roofline_runner(images, batch_size, encoder_dims, decoder_dims, optimizer=None, matmul_dtype=None):
  """The matmuls of one training step of an MLP VAE with layer widths `encoder_dims` (D, ..., 2L)
  and `decoder_dims` (L, ..., D): forward, and backward without the input gradient; then a plain
  gradient step on the weights, or with `optimizer` its update of the weights. `matmul_dtype`
  (e.g. "bfloat16"): every matmul's operands in that dtype, accumulated in float32, as
  `jaxvae.models.bf16_matmul`."""
  if matmul_dtype is None:
    matmul = lambda a, b: a @ b
  else:
    matmul = lambda a, b: jnp.matmul(a.astype(matmul_dtype), b.astype(matmul_dtype),
                                     preferred_element_type=jnp.float32)
  latent_dim = decoder_dims[0]
  shapes = [*zip(encoder_dims[:-1], encoder_dims[1:]), *zip(decoder_dims[:-1], decoder_dims[1:])]
  num_encoder = len(encoder_dims) - 1
  weights = [jnp.full(s, 1e-3, jnp.float32) for s in shapes]
  state = (weights, None if optimizer is None else optimizer.init(weights))
  images = jax.device_put(images)
  num_batches = len(images) // batch_size

  @jax.jit
  def epoch(state):
    def body(state, i):
      w, opt_state = state
      x = jax.lax.dynamic_slice_in_dim(images, i * batch_size, batch_size).astype(jnp.float32)
      inputs = [x]  # the input of every layer
      for j, wj in enumerate(w[:-1]):
        out = matmul(inputs[-1], wj)
        inputs.append(out[:, :latent_dim] if j == num_encoder - 1 else out)
      g = matmul(inputs[-1], w[-1])  # the output stands in for its gradient
      grads = [None] * len(w)
      for j in reversed(range(len(w))):
        grads[j] = matmul(inputs[j].T, g)
        if j:
          g = matmul(g, w[j].T)
          if j == num_encoder:
            g = jnp.concatenate([g, g], axis=1)  # the gradient of mean and logvar
      if optimizer is None:
        return ([wi - 1e-12 * gi for wi, gi in zip(w, grads)], None), None
      sign = 1 - 2 * (i % 2)  # alternating gradients keep the weights near their start
      updates, opt_state = optimizer.update([sign * 1e-9 * g for g in grads], opt_state, w)
      return (optax.apply_updates(w, updates), opt_state), None

    return jax.lax.scan(body, state, jnp.arange(num_batches))[0]

  def run(_):
    nonlocal state
    state = jax.block_until_ready(epoch(state))
    return float("nan")

  return run


def torch_device() -> str:
  """Where the PyTorch baseline runs: "cuda" when JAX runs on a GPU and PyTorch sees one, else "cpu"."""
  import torch  # pylint: disable=g-import-not-at-top

  return "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"


def torch_runner(config, images, one_core, device="cpu"):
  """The PyTorch VAE example (Linear layers, mean and log-variance heads; BCE sum + KLD; Adam) with
  `config`'s widths, activation, Adam eps and output biases; dynamic binarization draws
  `torch.bernoulli` targets per batch.

  On "cpu" it feeds batches through a DataLoader, as the example does. On "cuda" the data and
  model live on the GPU: each epoch shuffles with `torch.randperm` there and slices batches, and the
  loss is summed on the device, so no step waits for the host (the epoch ends with one sync)."""
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top
  from torch.nn import functional as F  # pylint: disable=g-import-not-at-top

  torch.manual_seed(0)
  if one_core:
    torch.set_num_threads(1)
  (d, *hidden, _), _ = layer_widths(config, images.shape[1])
  latent = config.latent_dim
  act = {"relu": nn.ReLU, "tanh": nn.Tanh}[config.activation]

  def mlp(widths):
    layers = []
    for a, b in zip(widths[:-1], widths[1:]):
      layers += [nn.Linear(a, b), act()]
    return nn.Sequential(*layers)

  class TorchVAE(nn.Module):

    def __init__(self):
      super().__init__()
      self.encoder = mlp((d, *hidden))
      self.fc_mean, self.fc_logvar = nn.Linear(hidden[-1], latent), nn.Linear(hidden[-1], latent)
      self.decoder = mlp((latent, *hidden))
      self.fc_out = nn.Linear(hidden[-1], d)

    def forward(self, x):
      h = self.encoder(x)
      mu, logvar = self.fc_mean(h), self.fc_logvar(h)
      z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
      return torch.sigmoid(self.fc_out(self.decoder(z))), mu, logvar

  model = TorchVAE()
  pixels = torch.from_numpy(images.astype(np.float32) / 255.0)
  if config.output_bias == "data_mean":
    with torch.no_grad():
      model.fc_out.bias.copy_(torch.from_numpy(np.array(jaxvae.models.data_mean_bias(images))))
  if device != "cpu":
    model, pixels = model.to(device), pixels.to(device)
  optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate, eps=config.adam_eps)
  if device == "cpu":
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(pixels), batch_size=config.batch_size,
                                         shuffle=True, drop_last=True)
  else:
    num_batches = len(pixels) // config.batch_size

    def loader_on_device():
      perm = torch.randperm(len(pixels), device=device)
      for i in range(num_batches):
        yield (pixels[perm[i * config.batch_size : (i + 1) * config.batch_size]],)

  def step(x):
    if config.binarization == "dynamic":
      x = torch.bernoulli(x)
    optimizer.zero_grad()
    recon, mu, logvar = model(x)
    bce = F.binary_cross_entropy(recon, x, reduction="sum")
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    loss = (bce + kld) / len(x)
    loss.backward()
    optimizer.step()
    return loss

  def run(_):
    model.train()
    if device == "cpu":
      total = 0.0
      for (x,) in loader:
        total += step(x).item()
      return total / len(loader)
    total = torch.zeros((), device=device)
    for (x,) in loader_on_device():
      total += step(x).detach()
    return total.item() / num_batches  # .item() waits for the epoch's last kernel

  return run


def time_methods(runners: dict, num_epochs: int, images_per_epoch: int, models_trained: dict | None = None,
                 deadline: float | None = None) -> tuple[dict[str, list[float]], dict[str, float]]:
  """Runs every runner once to warm up (compilation), then `num_epochs` rounds of one epoch each,
  interleaved so that every method sees the same machine load. Returns each method's images/s per
  round (`models_trained[name]` models' images for an ensemble) and the loss of its last epoch.
  Past `deadline` (a `time.perf_counter()` value) no further round starts once one is timed."""
  models_trained = models_trained or {}
  rates = {name: [] for name in runners}
  losses = {}
  for epoch in range(num_epochs + 1):  # epoch 0 warms up (compilation)
    if epoch > 1 and deadline is not None and time.perf_counter() > deadline:
      break
    for name, run in runners.items():
      start = time.perf_counter()
      losses[name] = run(epoch)
      if epoch:
        rates[name].append(models_trained.get(name, 1) * images_per_epoch / (time.perf_counter() - start))
  return rates, losses


def round_ratios(rates: dict[str, list[float]], a: str, b: str) -> np.ndarray:
  """a's images/s over b's in each round: neighbours in time, so a drifting machine speed cancels."""
  return np.asarray(rates[a]) / np.asarray(rates[b])


def measure(reg: Regime, images) -> dict[str, float]:
  """Runs every method of `reg` interleaved, prints the table and ratios; returns the medians."""
  config = reg.config
  if len(images) < config.batch_size:
    raise jaxvae.ConfigError(f"--batch_size={config.batch_size} is larger than the {len(images)} training images")
  if config.batch_size % jax.device_count():
    raise jaxvae.ConfigError(f"--batch_size={config.batch_size} is not a multiple of the {jax.device_count()} "
                             "devices each batch is split over")
  widths = layer_widths(config, images.shape[1])
  adam = jaxvae.train.make_optimizer(config, len(images) // config.batch_size)
  runners = {"compiled_epoch": compiled_epoch_runner(config, images)}
  if reg.extra_methods:
    runners["jitted_steps"] = jitted_steps_runner(config, images)
  runners["roofline"] = roofline_runner(images, config.batch_size, *widths)
  runners["matmuls_adam"] = roofline_runner(images, config.batch_size, *widths, adam)
  ensemble = f"ensemble_{_NUM_REPLICAS.value}"
  if reg.extra_methods:
    runners["sgd_epoch"] = compiled_epoch_runner(config, images, optimizer=optax.sgd(config.learning_rate))
    if _NUM_REPLICAS.value:
      runners[ensemble] = compiled_epoch_runner(config, images, num_replicas=_NUM_REPLICAS.value)
  if _TORCH.value:
    try:
      runners["pytorch"] = torch_runner(config, images, reg.one_core, torch_device())
    except ImportError:
      print("torch not installed: skipping the PyTorch baseline (pip install torch)")
  images_per_epoch = (len(images) // config.batch_size) * config.batch_size
  print(f"== {reg.name}: {reg.description}")
  print(f"jax {jax.__version__} on {jax.device_count()} x {jax.devices()[0].device_kind}; "
        f"{images_per_epoch} images/epoch")
  rates, losses = time_methods(runners, _NUM_EPOCHS.value, images_per_epoch, {ensemble: _NUM_REPLICAS.value})
  medians = {name: float(np.median(r)) for name, r in rates.items()}
  print(f"{'method':<16}{'images/s (median)':>18}{'min':>10}{'max':>10}{'last train -ELBO':>18}")
  for name, r in rates.items():
    print(f"{name:<16}{medians[name]:>18,.0f}{min(r):>10,.0f}{max(r):>10,.0f}{losses[name]:>18.2f}")

  def ratio(a, b, percent=False):
    """Median over rounds of a's rate / b's in the same round (neighbours in time, so a drifting
    machine speed cancels), with the range over rounds."""
    r = round_ratios(rates, a, b)
    fmt = (lambda v: f"{v:.0%}") if percent else (lambda v: f"{v:.2f}x")
    return f"{fmt(np.median(r))} (rounds {fmt(r.min())}-{fmt(r.max())})"

  print(f"compiled_epoch = {ratio('compiled_epoch', 'matmuls_adam', True)} of the bound (matmuls_adam); "
        f"the bound = {ratio('matmuls_adam', 'roofline', True)} of the roofline")
  if "jitted_steps" in medians:
    print(f"compiled_epoch / jitted_steps = {ratio('compiled_epoch', 'jitted_steps')}")
  if "sgd_epoch" in medians:
    share = 1 - np.median(np.asarray(rates["compiled_epoch"]) / np.asarray(rates["sgd_epoch"]))
    print(f"Adam's share of compiled_epoch's time = {share:.0%}")
  if ensemble in medians:
    print(f"{ensemble} / {_NUM_REPLICAS.value} sequential runs = {ratio(ensemble, 'compiled_epoch')}")
  if "pytorch" in medians:
    print(f"compiled_epoch / pytorch = {ratio('compiled_epoch', 'pytorch')}; "
          f"the bound / pytorch = {ratio('matmuls_adam', 'pytorch')}")
  if reg.name == "table1_b20":
    hours = TABLE1_EPOCHS * (60_000 // config.batch_size) * config.batch_size / medians["compiled_epoch"] / 3600
    print(f"Table 1's schedule ({TABLE1_EPOCHS:,} epochs of 60,000 images) at compiled_epoch's rate: {hours:.1f} h "
          "of training")
  return medians


def main(argv):
  del argv
  unknown = [r for r in _REGIMES.value if r not in REGIMES]
  if unknown or not _REGIMES.value:
    raise jaxvae.ConfigError(f"--regimes={','.join(_REGIMES.value)}: choose from {', '.join(REGIMES)}")
  images = jaxvae.load_mnist(_DATA_SOURCE.value, path=_DATA_PATH.value).train.images
  one_core_here = ONE_CORE_FLAGS in os.environ.get("XLA_FLAGS", "")
  for name in _REGIMES.value:
    reg = regime(name)
    if reg.one_core and not one_core_here:  # XLA reads its threading flags once, at start-up
      sys.stdout.flush()
      env = dict(os.environ, XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} {ONE_CORE_FLAGS}".strip())
      child = subprocess.run([sys.executable, "-m", "experiments.benchmark", f"--regimes={name}",
                              *(f for f in sys.argv[1:] if not f.startswith("--regimes"))], env=env, check=False)
      if child.returncode:
        raise SystemExit(child.returncode)
      continue
    measure(reg, images)


if __name__ == "__main__":
  jaxvae.cli.run(main)
