r"""Training throughput of the 784-400-20 MLP VAE at batch 128 on MNIST, side by side.

  python -m experiments.benchmark --num_epochs=5

Measures, interleaved epoch by epoch so that every method sees the same machine
load, the median images/s of:
  compiled_epoch  jaxvae's epoch: one jitted `lax.scan` over device-resident data;
  jitted_steps    a Python loop of jitted steps fed host batches (the common pattern);
  pytorch         the PyTorch VAE example's model, loss and loop (if torch is installed);
  roofline        the float32 matmuls of the same shapes alone, forward and backward;
  matmuls_adam    roofline with Adam's update of the weights in place of the plain step:
                  what compiled_epoch would reach if the rest of its step were free;
  sgd_epoch       compiled_epoch with plain SGD: the gap to compiled_epoch is Adam's cost;
  ensemble_R      R models (seeds 0..R-1) in one vmapped epoch, total images/s of all
                  replicas (R sequential runs reach compiled_epoch's images/s).
All use binarization `none` (grayscale targets), Adam 1e-3, as the PyTorch example.
The batch is split over all devices (`jaxvae.train.data_mesh`).
"""

import time

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxvae

_NUM_EPOCHS = flags.DEFINE_integer("num_epochs", 5, "Timed epochs per method (after one warm-up).", lower_bound=1)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 128, "Batch size.", lower_bound=1)
_LATENT_DIM = flags.DEFINE_integer("latent_dim", 20, "Latent dimension.", lower_bound=1)
_HIDDEN_DIM = flags.DEFINE_integer("hidden_dim", 400, "Hidden width.", lower_bound=1)
_TORCH = flags.DEFINE_boolean("torch", True, "Include PyTorch when it is installed.")
_NUM_REPLICAS = flags.DEFINE_integer("num_replicas", 8, "Models in the ensemble_R method; 0 leaves it out.",
                                     lower_bound=0)
_DATA_SOURCE = flags.DEFINE_enum("data_source", "auto", jaxvae.data.SOURCES, "As in experiments.mnist.")
_DATA_PATH = flags.DEFINE_string("data_path", None, "File for --data_source=npz.")


def compiled_epoch_runner(model, optimizer, images, batch_size, num_replicas=0):
  mesh = jaxvae.train.data_mesh()
  ensemble = num_replicas > 0
  keys = jaxvae.KeyStreams.from_seeds(range(num_replicas)) if ensemble else jaxvae.KeyStreams.from_seed(0)
  state = jaxvae.train.replicate(jaxvae.create_train_state(model, optimizer, keys.init), mesh)
  epoch_fn = jaxvae.make_train_epoch(model, optimizer, batch_size, "none", mesh=mesh, ensemble=ensemble)
  images = jaxvae.train.replicate(images, mesh)

  def run(epoch):
    nonlocal state
    state, metrics = epoch_fn(state, images, jaxvae.train.epoch_key(keys.data, epoch), keys.train)
    return float(np.mean(metrics["neg_elbo"]))

  return run


def jitted_steps_runner(model, optimizer, images, batch_size):
  keys = jaxvae.KeyStreams.from_seed(0)
  state = jaxvae.create_train_state(model, optimizer, keys.init)
  step_fn = jax.jit(jaxvae.make_train_step(model, optimizer, "none"), donate_argnums=0)
  rng = np.random.default_rng(0)
  num_batches = len(images) // batch_size

  def run(epoch):
    nonlocal state
    perm = rng.permutation(len(images))
    for i in range(num_batches):
      batch = images[perm[i * batch_size : (i + 1) * batch_size]]
      state, metrics = step_fn(state, batch, keys.data, keys.train)
    return float(metrics["neg_elbo"])

  return run


def roofline_runner(images, batch_size, latent_dim, hidden_dim, optimizer=None):
  """The matmuls of one training step (forward, and backward without the input gradient), and
  a plain gradient step on the weights; with `optimizer`, its update of the weights instead."""
  d = images.shape[1]
  shapes = [(d, hidden_dim), (hidden_dim, 2 * latent_dim), (latent_dim, hidden_dim), (hidden_dim, d)]
  weights = [jnp.full(s, 1e-3, jnp.float32) for s in shapes]
  state = (weights, None if optimizer is None else optimizer.init(weights))
  images = jax.device_put(images)
  num_batches = len(images) // batch_size

  @jax.jit
  def epoch(state):
    def body(state, i):
      w, opt_state = state
      x = jax.lax.dynamic_slice_in_dim(images, i * batch_size, batch_size).astype(jnp.float32)
      h1 = x @ w[0]
      out1 = h1 @ w[1]
      z = out1[:, :latent_dim]
      h2 = z @ w[2]
      g_out = h2 @ w[3]  # stands in for the output gradient
      g_h2 = g_out @ w[3].T
      g_z = g_h2 @ w[2].T
      g_out1 = jnp.concatenate([g_z, g_z], axis=1)
      g_h1 = g_out1 @ w[1].T
      grads = [x.T @ g_h1, h1.T @ g_out1, z.T @ g_h2, h2.T @ g_out]
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


def torch_runner(images, batch_size, latent_dim, hidden_dim):
  """The PyTorch VAE example (fc1, fc21, fc22, fc3, fc4; BCE sum + KLD; Adam 1e-3)."""
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top
  from torch.nn import functional as F  # pylint: disable=g-import-not-at-top

  torch.manual_seed(0)
  d = images.shape[1]

  class TorchVAE(nn.Module):

    def __init__(self):
      super().__init__()
      self.fc1 = nn.Linear(d, hidden_dim)
      self.fc21 = nn.Linear(hidden_dim, latent_dim)
      self.fc22 = nn.Linear(hidden_dim, latent_dim)
      self.fc3 = nn.Linear(latent_dim, hidden_dim)
      self.fc4 = nn.Linear(hidden_dim, d)

    def forward(self, x):
      h1 = F.relu(self.fc1(x))
      mu, logvar = self.fc21(h1), self.fc22(h1)
      z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
      return torch.sigmoid(self.fc4(F.relu(self.fc3(z)))), mu, logvar

  model = TorchVAE()
  optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
  dataset = torch.utils.data.TensorDataset(torch.from_numpy(images.astype(np.float32) / 255.0))
  loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True)

  def run(_):
    model.train()
    total = 0.0
    for (x,) in loader:
      optimizer.zero_grad()
      recon, mu, logvar = model(x)
      bce = F.binary_cross_entropy(recon, x, reduction="sum")
      kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
      loss = bce + kld
      loss.backward()
      optimizer.step()
      total += loss.item()
    return total / (len(loader) * batch_size)

  return run


def main(argv):
  del argv
  images = jaxvae.load_mnist(_DATA_SOURCE.value, path=_DATA_PATH.value).train.images
  if len(images) < _BATCH_SIZE.value:
    raise jaxvae.ConfigError(f"--batch_size={_BATCH_SIZE.value} is larger than the {len(images)} training images")
  if _BATCH_SIZE.value % jax.device_count():
    raise jaxvae.ConfigError(f"--batch_size={_BATCH_SIZE.value} is not a multiple of the {jax.device_count()} "
                             "devices each batch is split over")
  model = jaxvae.VAE(latent_dim=_LATENT_DIM.value, hidden_dim=_HIDDEN_DIM.value)
  optimizer = optax.adam(1e-3)
  args = (images, _BATCH_SIZE.value)
  runners = {
      "compiled_epoch": compiled_epoch_runner(model, optimizer, *args),
      "jitted_steps": jitted_steps_runner(model, optimizer, *args),
      "roofline": roofline_runner(*args, _LATENT_DIM.value, _HIDDEN_DIM.value),
      "matmuls_adam": roofline_runner(*args, _LATENT_DIM.value, _HIDDEN_DIM.value, optimizer),
      "sgd_epoch": compiled_epoch_runner(model, optax.sgd(1e-3), *args),
  }
  ensemble = f"ensemble_{_NUM_REPLICAS.value}"
  if _NUM_REPLICAS.value:
    runners[ensemble] = compiled_epoch_runner(model, optimizer, *args, num_replicas=_NUM_REPLICAS.value)
  if _TORCH.value:
    try:
      runners["pytorch"] = torch_runner(*args, _LATENT_DIM.value, _HIDDEN_DIM.value)
    except ImportError:
      print("torch not installed: skipping the PyTorch baseline (pip install torch)")
  images_per_epoch = (len(images) // _BATCH_SIZE.value) * _BATCH_SIZE.value
  rates = {name: [] for name in runners}
  losses = {}
  print(f"jax {jax.__version__} on {jax.device_count()} x {jax.devices()[0].device_kind}; "
        f"{images_per_epoch} images/epoch")
  for epoch in range(_NUM_EPOCHS.value + 1):  # epoch 0 warms up (compilation)
    for name, run in runners.items():
      start = time.perf_counter()
      losses[name] = run(epoch)
      if epoch:
        models_trained = _NUM_REPLICAS.value if name == ensemble else 1
        rates[name].append(models_trained * images_per_epoch / (time.perf_counter() - start))
  medians = {name: float(np.median(r)) for name, r in rates.items()}
  print(f"{'method':<16}{'images/s (median)':>18}{'min':>10}{'max':>10}{'last train -ELBO':>18}")
  for name, r in rates.items():
    print(f"{name:<16}{medians[name]:>18,.0f}{min(r):>10,.0f}{max(r):>10,.0f}{losses[name]:>18.2f}")
  compiled = medians["compiled_epoch"]
  print(f"compiled_epoch / jitted_steps = {compiled / medians['jitted_steps']:.2f}x")
  print(f"compiled_epoch / roofline = {compiled / medians['roofline']:.0%}")
  print(f"Adam's share of compiled_epoch's time = {1 - compiled / medians['sgd_epoch']:.0%}")
  bound = medians["matmuls_adam"]
  print(f"bound (matmuls_adam) = {bound / medians['roofline']:.0%} of the roofline = {bound / compiled:.2f}x "
        "compiled_epoch")
  if ensemble in medians:
    print(f"{ensemble} / {_NUM_REPLICAS.value} sequential runs = {medians[ensemble] / compiled:.2f}x "
          f"(bound {bound / compiled:.2f}x)")
  if "pytorch" in medians:
    print(f"compiled_epoch / pytorch = {compiled / medians['pytorch']:.2f}x (bound {bound / medians['pytorch']:.2f}x)")


if __name__ == "__main__":
  jaxvae.cli.run(main)
