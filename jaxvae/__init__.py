"""jaxvae: variational autoencoders in JAX/Flax, as pure functions.

Everything an experiment uses is importable from here; see README.md for a tour.
"""

from jaxvae import checkpoints
from jaxvae import classifier
from jaxvae import cli
from jaxvae import conditional
from jaxvae import cvae
from jaxvae import data
from jaxvae import inference
from jaxvae import latent
from jaxvae import loop
from jaxvae import models
from jaxvae import pictures
from jaxvae import records
from jaxvae import registry
from jaxvae import report
from jaxvae import run
from jaxvae import semisupervised
from jaxvae import superres
from jaxvae import seqvae
from jaxvae import sequence
from jaxvae import text
from jaxvae import train
from jaxvae import workdir
from jaxvae.checkpoints import load_model
from jaxvae.config import Config, build_model
from jaxvae.data import BINARIZATIONS, Mnist, Split, load_mnist, test_targets, train_targets
from jaxvae.errors import CheckpointError, ConfigError, DataError, Interrupted, NonFiniteError, WorkdirError
from jaxvae.distributions import (
    bernoulli_log_density,
    bernoulli_log_likelihood,
    gaussian_log_likelihood,
    kl_to_standard_normal,
    reparameterize,
    standard_normal_log_density,
)
from jaxvae.conditional import (
    M2,
    ConditionalVAE,
    conditional_elbo,
    labelled_bound,
    m2_loss,
    unlabelled_bound,
)
from jaxvae.evaluate import (ElboEstimate, active_units, elbo_estimate, elbo_terms, h1_active_units, iwae_bounds,
                             latent_means, posteriors)
from jaxvae.models import ACTIVATIONS, ARCHITECTURES, WEIGHT_INITS, Decoder, Encoder, TwoLayerVAE, VAE, init_params
from jaxvae.latent import (
    anomaly_scores,
    auroc,
    decode_means,
    inpaint,
    interpolate,
    knn_classify,
    manifold_grid,
    nearest_neighbours,
)
from jaxvae.objectives import (
    OBJECTIVES,
    Elbo,
    KLSchedule,
    autoencoder,
    batch_elbo,
    batch_iwae_bound,
    elbo,
    iwae_bound,
    importance_sampler,
    iwae_objective,
    log_likelihood,
    log_importance_weights,
    multi_sample_elbo,
    reconstruction_log_likelihood,
    training_objective,
    two_layer_elbo,
)
from jaxvae.plots import image_grid, save_image_grid
from jaxvae.loop import fit
from jaxvae.records import read_metrics
from jaxvae.run import train_and_evaluate
from jaxvae.sequence import SequenceVAE, decode, homotopy
from jaxvae.text import Vocabulary, tokenize
from jaxvae.train import (
    KeyStreams,
    TrainState,
    create_train_state,
    make_optimizer,
    init_state,
    make_epoch,
    make_step,
    make_train_epoch,
    make_train_step,
)

__version__ = "0.1.0"
