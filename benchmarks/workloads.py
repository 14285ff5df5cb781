"""The benchmark's workloads, each written once per framework.

Every workload gives the same network and optimizer to each contender:

* ``keras_steps``: a :class:`keras_steps.StepModel` (the ``supervised`` step,
  or a GAN step);
* ``keras_handwritten``: a ``keras.Model`` subclass with the seed guide's
  hand-written ``train_step`` (the guide's first example for the supervised
  workloads, its GAN class for the GAN);
* ``lightning``: a ``LightningModule`` on the equivalent ``torch.nn`` network;
* ``torch``: a plain PyTorch loop on that network, the floor.

All of them read the same batches: a list of tensors already on the device,
served by a ``torch.utils.data.DataLoader(batches, batch_size=None)``, so that
the input pipeline costs every framework the same and only the training
machinery differs. Keras models take channels-last images (the seed's layout),
torch ones channels-first (torch's).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from typing import Any

import keras
import torch
from keras import layers
from keras_steps_plugins.gan import seed_networks
from torch import nn

import keras_steps

LATENT_DIM = 128


@dataclasses.dataclass
class Workload:
    """One training task, buildable for each framework.

    Attributes:
        name: short name used on the command line.
        description: one line for the results table.
        batch_size: samples per step.
        steps: steps per timed epoch on the CPU.
        reps: timed epochs per contender.
        cuda_steps: steps per timed epoch on a GPU, where a step is much shorter.
        keras_batches / torch_batches: ``f(steps, device) -> list of tuples``.
        keras_network: builds the Keras network(s) (a model, or a dict of roles).
        keras_steps_model: ``f(steps_per_execution, jit_compile) -> StepModel``.
        keras_handwritten_model: the seed's hand-written model, compiled.
        torch_trainer: ``f(device) -> (modules, run_epoch(loader))``.
        lightning_module: ``f(device) -> LightningModule`` (``None`` if the
            ``bench`` extra is missing).
    """

    name: str
    description: str
    batch_size: int
    steps: int
    reps: int
    keras_batches: Callable[[int, str], list]
    torch_batches: Callable[[int, str], list]
    keras_steps_model: Callable[..., Any]
    keras_handwritten_model: Callable[[], Any]
    torch_trainer: Callable[[str], Any]
    lightning_module: Callable[[str], Any]
    cuda_steps: int = 128


# -- the seed guide's hand-written models ---------------------------------------------
class SeedCustomModel(keras.Model):
    """The seed guide's first example, verbatim: compiled loss and metrics by hand."""

    def train_step(self, data):
        x, y = data
        self.zero_grad()
        y_pred = self(x, training=True)
        loss = self.compute_loss(y=y, y_pred=y_pred)
        loss.backward()
        trainable_weights = [v for v in self.trainable_weights]
        gradients = [v.value.grad for v in trainable_weights]
        with torch.no_grad():
            self.optimizer.apply(gradients, trainable_weights)
        for metric in self.metrics:
            if metric.name == "loss":
                metric.update_state(loss)
            else:
                metric.update_state(y, y_pred)
        return {m.name: m.result() for m in self.metrics}


class SeedGAN(keras.Model):
    """The seed guide's GAN class, verbatim but for the latent size argument."""

    def __init__(self, discriminator, generator, latent_dim):
        super().__init__()
        self.discriminator = discriminator
        self.generator = generator
        self.latent_dim = latent_dim
        self.d_loss_tracker = keras.metrics.Mean(name="d_loss")
        self.g_loss_tracker = keras.metrics.Mean(name="g_loss")
        self.seed_generator = keras.random.SeedGenerator(1337)
        self.built = True

    @property
    def metrics(self):
        return [self.d_loss_tracker, self.g_loss_tracker]

    def compile(self, d_optimizer, g_optimizer, loss_fn):
        super().compile()
        self.d_optimizer = d_optimizer
        self.g_optimizer = g_optimizer
        self.loss_fn = loss_fn

    def train_step(self, real_images):
        device = "cuda" if torch.cuda.is_available() else "cpu"
        if isinstance(real_images, tuple) or isinstance(real_images, list):  # noqa: SIM101
            real_images = real_images[0]
        batch_size = real_images.shape[0]
        random_latent_vectors = keras.random.normal(
            shape=(batch_size, self.latent_dim), seed=self.seed_generator
        )
        generated_images = self.generator(random_latent_vectors)
        real_images = torch.tensor(real_images, device=device)
        combined_images = torch.concat([generated_images, real_images], axis=0)
        labels = torch.concat(
            [
                torch.ones((batch_size, 1), device=device),
                torch.zeros((batch_size, 1), device=device),
            ],
            axis=0,
        )
        labels += 0.05 * keras.random.uniform(labels.shape, seed=self.seed_generator)
        self.zero_grad()
        predictions = self.discriminator(combined_images)
        d_loss = self.loss_fn(labels, predictions)
        d_loss.backward()
        grads = [v.value.grad for v in self.discriminator.trainable_weights]
        with torch.no_grad():
            self.d_optimizer.apply(grads, self.discriminator.trainable_weights)
        random_latent_vectors = keras.random.normal(
            shape=(batch_size, self.latent_dim), seed=self.seed_generator
        )
        misleading_labels = torch.zeros((batch_size, 1), device=device)
        self.zero_grad()
        predictions = self.discriminator(self.generator(random_latent_vectors))
        g_loss = self.loss_fn(misleading_labels, predictions)
        grads = g_loss.backward()
        grads = [v.value.grad for v in self.generator.trainable_weights]
        with torch.no_grad():
            self.g_optimizer.apply(grads, self.generator.trainable_weights)
        self.d_loss_tracker.update_state(d_loss)
        self.g_loss_tracker.update_state(g_loss)
        return {
            "d_loss": self.d_loss_tracker.result(),
            "g_loss": self.g_loss_tracker.result(),
        }


def _bce_logits(labels, logits):
    return keras.ops.mean(keras.ops.binary_crossentropy(labels, logits, from_logits=True))


# -- data ----------------------------------------------------------------------------
def _batches(make: Callable[[torch.Generator], tuple], steps: int, device: str) -> list:
    gen = torch.Generator().manual_seed(0)
    return [tuple(t.to(device) for t in make(gen)) for _ in range(steps)]


def loader(batches: list) -> torch.utils.data.DataLoader:
    """A DataLoader that serves ready-made batches (no collation, no copies)."""
    return torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False)


# -- MLP: the seed guide's first example ----------------------------------------------
def _mlp_keras_batches(steps, device):
    return _batches(lambda g: (torch.rand(32, 32, generator=g), torch.rand(32, 1, generator=g)),
                    steps, device)


def _mlp_steps_model(steps_per_execution=1, jit_compile=False):
    inputs = keras.Input(shape=(32,))
    model = keras_steps.StepModel(inputs, layers.Dense(1)(inputs), step="supervised")
    model.compile(optimizer="adam", loss="mse", metrics=["mae"],
                  steps_per_execution=steps_per_execution, jit_compile=jit_compile)
    return model


def _mlp_handwritten():
    inputs = keras.Input(shape=(32,))
    model = SeedCustomModel(inputs, layers.Dense(1)(inputs))
    model.compile(optimizer="adam", loss="mse", metrics=["mae"])
    return model


def _regression_torch(device):
    net = nn.Linear(32, 1).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)

    def run_epoch(data):
        loss_sum = torch.zeros((), device=device)
        mae_sum = torch.zeros((), device=device)
        for x, y in data:
            opt.zero_grad(set_to_none=True)
            pred = net(x)
            loss = nn.functional.mse_loss(pred, y)
            loss.backward()
            opt.step()
            loss_sum += loss.detach()
            mae_sum += (pred.detach() - y).abs().mean()
        return loss_sum, mae_sum

    return net, run_epoch


# -- CNN: a small classifier on 28x28 images ------------------------------------------
# Two layouts for Keras: channels-first (torch's own, the `cnn` workload) and
# Keras's default channels-last (`cnn_nhwc`), which on torch costs a transpose
# around every convolution and pooling, and element-wise ops on permuted views.
CNN_BATCH = 64


def _cnn_nhwc_batches(steps, device):
    return _batches(
        lambda g: (torch.rand(CNN_BATCH, 28, 28, 1, generator=g),
                   torch.randint(0, 10, (CNN_BATCH,), generator=g)),
        steps, device)


def _cnn_nchw_batches(steps, device):
    return [(x.permute(0, 3, 1, 2).contiguous(), y) for x, y in _cnn_nhwc_batches(steps, device)]


def _cnn_keras_layers(inputs, data_format):
    f = data_format
    x = layers.Conv2D(16, 3, activation="relu", data_format=f)(inputs)
    x = layers.MaxPooling2D(data_format=f)(x)
    x = layers.Conv2D(32, 3, activation="relu", data_format=f)(x)
    x = layers.MaxPooling2D(data_format=f)(x)
    return layers.Dense(10)(layers.Flatten()(x))


def _cnn_input(data_format):
    return keras.Input(shape=(28, 28, 1) if data_format == "channels_last" else (1, 28, 28))


_CNN_COMPILE = dict(
    optimizer="adam",
    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    metrics=["sparse_categorical_accuracy"],
)


def _cnn_steps_model(data_format):
    def make(steps_per_execution=1, jit_compile=False):
        inputs = _cnn_input(data_format)
        model = keras_steps.StepModel(
            inputs, _cnn_keras_layers(inputs, data_format), step="supervised"
        )
        model.compile(**_CNN_COMPILE, steps_per_execution=steps_per_execution,
                      jit_compile=jit_compile)
        return model

    return make


def _cnn_handwritten(data_format):
    def make():
        inputs = _cnn_input(data_format)
        model = SeedCustomModel(inputs, _cnn_keras_layers(inputs, data_format))
        model.compile(**_CNN_COMPILE)
        return model

    return make


def _cnn_torch_net():
    return nn.Sequential(
        nn.Conv2d(1, 16, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 5 * 5, 10),
    )


def _cnn_torch(device):
    net = _cnn_torch_net().to(device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)

    def run_epoch(data):
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device)
        for x, y in data:
            opt.zero_grad(set_to_none=True)
            logits = net(x)
            loss = nn.functional.cross_entropy(logits, y)
            loss.backward()
            opt.step()
            loss_sum += loss.detach()
            correct += (logits.detach().argmax(1) == y).float().mean()
        return loss_sum, correct

    return net, run_epoch


# -- GAN: the seed guide's end-to-end example -----------------------------------------
GAN_BATCH = 64
GAN_STEP = {"name": "gan", "options": {"latent_dim": LATENT_DIM}}


def _gan_keras_batches(steps, device):
    return _batches(lambda g: (torch.rand(GAN_BATCH, 28, 28, 1, generator=g),), steps, device)


def _gan_torch_batches(steps, device):
    return [(x.permute(0, 3, 1, 2).contiguous(),) for (x,) in _gan_keras_batches(steps, device)]


def _gan_steps_model(steps_per_execution=1, jit_compile=False):
    generator, discriminator = seed_networks(latent_dim=LATENT_DIM)  # the seed's, verbatim
    model = keras_steps.StepModel(
        models={"generator": generator, "discriminator": discriminator},
        step=GAN_STEP["name"],
        step_options=GAN_STEP["options"],
    )
    model.compile(
        optimizer={
            "generator": keras.optimizers.Adam(learning_rate=0.0003),
            "discriminator": keras.optimizers.Adam(learning_rate=0.0003),
        },
        steps_per_execution=steps_per_execution,
        jit_compile=jit_compile,
    )
    return model


def _gan_handwritten():
    # The seed copies its (already tensor) batch with torch.tensor(); torch
    # warns about that on every step.
    warnings.filterwarnings("ignore", message="To copy construct from a tensor")
    generator, discriminator = seed_networks(latent_dim=LATENT_DIM)  # the seed's, verbatim
    gan = SeedGAN(discriminator, generator, LATENT_DIM)
    gan.compile(
        d_optimizer=keras.optimizers.Adam(learning_rate=0.0003),
        g_optimizer=keras.optimizers.Adam(learning_rate=0.0003),
        loss_fn=keras.losses.BinaryCrossentropy(from_logits=True),
    )
    return gan


class _Reshape(nn.Module):
    def __init__(self, *shape):
        super().__init__()
        self.shape = shape

    def forward(self, x):
        return x.reshape(x.shape[0], *self.shape)


def gan_torch_nets(device):
    """The seed's generator and discriminator in ``torch.nn`` (channels first)."""
    discriminator = nn.Sequential(
        nn.Conv2d(1, 64, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
        nn.Conv2d(64, 128, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
        nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(128, 1),
    ).to(device)
    generator = nn.Sequential(
        nn.Linear(LATENT_DIM, 7 * 7 * 128), nn.LeakyReLU(0.2), _Reshape(128, 7, 7),
        nn.ConvTranspose2d(128, 128, 4, stride=2, padding=1), nn.LeakyReLU(0.2),
        nn.ConvTranspose2d(128, 128, 4, stride=2, padding=1), nn.LeakyReLU(0.2),
        nn.Conv2d(128, 1, 7, padding=3), nn.Sigmoid(),
    ).to(device)
    return generator, discriminator


def gan_torch_update(generator, discriminator, opt_g, opt_d, real):
    """One step of the seed's GAN algorithm in plain PyTorch; returns the losses."""
    bce = nn.functional.binary_cross_entropy_with_logits
    batch_size, device = real.shape[0], real.device
    with torch.no_grad():  # the discriminator's loss does not reach the generator
        fake = generator(torch.randn(batch_size, LATENT_DIM, device=device))
    combined = torch.cat([fake, real])
    labels = torch.cat([torch.ones(batch_size, 1, device=device),
                        torch.zeros(batch_size, 1, device=device)])
    labels += 0.05 * torch.rand(labels.shape, device=device)
    d_loss = bce(discriminator(combined), labels)
    opt_d.zero_grad(set_to_none=True)
    d_loss.backward()
    opt_d.step()
    g_params = list(generator.parameters())
    fake = generator(torch.randn(batch_size, LATENT_DIM, device=device))
    g_loss = bce(discriminator(fake), torch.zeros(batch_size, 1, device=device))
    opt_g.zero_grad(set_to_none=True)
    g_loss.backward(inputs=g_params)
    opt_g.step()
    return d_loss.detach(), g_loss.detach()


def _gan_torch(device):
    generator, discriminator = gan_torch_nets(device)
    opt_g = torch.optim.Adam(generator.parameters(), lr=0.0003)
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=0.0003)

    def run_epoch(data):
        d_sum = torch.zeros((), device=device)
        g_sum = torch.zeros((), device=device)
        for (real,) in data:
            d_loss, g_loss = gan_torch_update(generator, discriminator, opt_g, opt_d, real)
            d_sum += d_loss
            g_sum += g_loss
        return d_sum, g_sum

    return (generator, discriminator), run_epoch


# -- Lightning -----------------------------------------------------------------------
def import_lightning():
    """Return ``lightning.pytorch`` (or ``pytorch_lightning``), or None if absent."""
    try:
        import lightning.pytorch as pl
    except ImportError:
        try:
            import pytorch_lightning as pl
        except ImportError:
            return None
    return pl


def _lightning_supervised(net_fn, metric_fn, loss_fn):
    def make(device):
        pl = import_lightning()
        if pl is None:
            return None

        class Supervised(pl.LightningModule):
            def __init__(self):
                super().__init__()
                self.net = net_fn()
                self.opt = torch.optim.Adam(self.net.parameters(), lr=1e-3)

            def training_step(self, batch, batch_idx):
                x, y = batch
                pred = self.net(x)
                loss = loss_fn(pred, y)
                self.log_dict({"loss": loss, "metric": metric_fn(pred.detach(), y)})
                return loss

            def configure_optimizers(self):
                return self.opt

        return Supervised()

    return make


def _lightning_gan(device):
    pl = import_lightning()
    if pl is None:
        return None

    class GAN(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False
            self.generator, self.discriminator = gan_torch_nets("cpu")
            self.opt_g = torch.optim.Adam(self.generator.parameters(), lr=0.0003)
            self.opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=0.0003)

        def training_step(self, batch, batch_idx):
            (real,) = batch
            opt_g, opt_d = self.optimizers()
            bce = nn.functional.binary_cross_entropy_with_logits
            batch_size = real.shape[0]
            with torch.no_grad():
                fake = self.generator(torch.randn(batch_size, LATENT_DIM, device=self.device))
            labels = torch.cat([torch.ones(batch_size, 1, device=self.device),
                                torch.zeros(batch_size, 1, device=self.device)])
            labels += 0.05 * torch.rand(labels.shape, device=self.device)
            d_loss = bce(self.discriminator(torch.cat([fake, real])), labels)
            opt_d.zero_grad()
            self.manual_backward(d_loss)
            opt_d.step()
            fake = self.generator(torch.randn(batch_size, LATENT_DIM, device=self.device))
            g_loss = bce(self.discriminator(fake), torch.zeros(batch_size, 1, device=self.device))
            opt_g.zero_grad()
            self.manual_backward(g_loss, inputs=list(self.generator.parameters()))
            opt_g.step()
            self.log_dict({"d_loss": d_loss, "g_loss": g_loss})

        def configure_optimizers(self):
            return [self.opt_g, self.opt_d]

    return GAN()


def _cnn_workload(name, description, data_format):
    """The CNN workload with Keras in ``data_format``; torch always channels-first."""
    return Workload(
        name=name,
        description=description,
        batch_size=CNN_BATCH,
        steps=64,
        reps=7,
        keras_batches=_cnn_nchw_batches if data_format == "channels_first" else _cnn_nhwc_batches,
        torch_batches=_cnn_nchw_batches,
        keras_steps_model=_cnn_steps_model(data_format),
        keras_handwritten_model=_cnn_handwritten(data_format),
        torch_trainer=_cnn_torch,
        lightning_module=_lightning_supervised(
            _cnn_torch_net,
            lambda logits, y: (logits.argmax(1) == y).float().mean(),
            nn.functional.cross_entropy,
        ),
    )


WORKLOADS = {
    "mlp": Workload(
        name="mlp",
        description="seed MLP: Dense(32 -> 1), batch 32, Adam, mse + mae",
        batch_size=32,
        steps=128,
        reps=11,
        keras_batches=_mlp_keras_batches,
        torch_batches=_mlp_keras_batches,
        keras_steps_model=_mlp_steps_model,
        keras_handwritten_model=_mlp_handwritten,
        torch_trainer=_regression_torch,
        lightning_module=_lightning_supervised(
            lambda: nn.Linear(32, 1),
            lambda pred, y: (pred - y).abs().mean(),
            nn.functional.mse_loss,
        ),
    ),
    "cnn": _cnn_workload(
        "cnn",
        f"small CNN: 2 conv + dense on 1x28x28 (channels-first), 10 classes, batch {CNN_BATCH}, "
        "Adam",
        "channels_first",
    ),
    "cnn_nhwc": _cnn_workload(
        "cnn_nhwc",
        "the same CNN, Keras in its default channels-last layout (28x28x1); torch and Lightning "
        "channels-first as in `cnn`",
        "channels_last",
    ),
    "gan": Workload(
        name="gan",
        description=f"seed GAN: conv generator + discriminator, batch {GAN_BATCH}, 2 x Adam",
        batch_size=GAN_BATCH,
        steps=16,
        reps=5,
        cuda_steps=64,
        keras_batches=_gan_keras_batches,
        torch_batches=_gan_torch_batches,
        keras_steps_model=_gan_steps_model,
        keras_handwritten_model=_gan_handwritten,
        torch_trainer=_gan_torch,
        lightning_module=_lightning_gan,
    ),
}
