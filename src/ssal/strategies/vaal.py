"""VAAL (Sinha, Ebrahimi & Darrell, ICCV 2019, "Variational Adversarial Active
Learning", sec. 3, eq. 1-4).

A beta-VAE (encoder q(z|x), decoder p(x|z)) and a discriminator D(z) -> P(x is
labelled) play a min-max game on the labelled images L and the unlabelled
candidates U; only membership is used, never a label. Each step, on one batch
of L and one of U:

* VAE (eq. 3 = eq. 1 + ``adversary_weight`` * eq. 2): for both batches the
  negative ELBO ``recon + beta * KL(q(z|x) || N(0, I))`` (eq. 1), plus the
  adversarial term ``-log D(mu(x_L)) - log D(mu(x_U))`` (eq. 2), which pushes
  both sets to look labelled.
* discriminator (eq. 4): binary cross-entropy with L = 1 and U = 0 on the
  (detached) latent means.

Selection: the ``budget`` candidates with the lowest D(mu(x)), i.e. the least
likely to be labelled (ties: lower position first). As in the released code,
the discriminator sees the latent mean ``mu``, not a sample.

Loss scale: every term is in nats per image, the literal reading of eq. 1-3
with a unit-variance Gaussian decoder: ``recon = 0.5 * sum of squared errors``
over the pixels of the normalised image, KL summed over the latent dimensions,
BCE per image, each averaged over the batch. (The released code adds a
per-pixel MSE to a KL summed over the batch, so there ``beta`` and the
adversarial weight change meaning with the image and batch sizes.)

Differences from the paper, on purpose, so that it runs on a CPU: a smaller VAE
(three 4x4 stride-2 convolutions of ``width``, 2 ``width``, 4 ``width``
channels down to 4x4, mirrored by transposed convolutions, BatchNorm and ReLU;
the paper has 128-1024 channels) on images resized bilinearly to 32x32 (so 1- or
3-channel, 28x28 or 32x32 pools all work); the same MLP discriminator as the
released code (latent -> 512 -> 512 -> 1, ReLU); one VAE step per
discriminator step (the code takes two); a fixed number of ``steps`` (default
300, batch 64 of each of L and U) instead of the released code's
``100 * |pool| / batch`` iterations; and the VAE is trained apart from the task
model, from scratch each cycle. Adam with ``lr`` = 5e-4 for both, as in the
paper. Measured cost at the defaults on 2 idle CPU cores (BENCHMARKS.md,
selection cost): 25 s for 10,000 CIFAR-10 candidates with 5,000 labelled
images, 27 s for 50,000; the fixed step count makes it nearly independent of
the pool size.

Deterministic for a given ``ctx.generator`` on a given device: weights are
initialised under a forked global RNG seeded from it, batches and the
reparameterisation noise come from local generators seeded from it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..clustering import draw_seed
from ..errors import SsalError
from .base import SelectionContext, Strategy, check_request, require_network, top_scores

__all__ = ["VaalStrategy", "VAE", "Discriminator", "vae_loss"]

SIZE = 32  # side of the images the VAE works on


class VAE(nn.Module):
    """Convolutional VAE on (B, channels, 32, 32) images: ``forward`` returns the
    reconstruction, ``mu`` and ``logvar`` of q(z|x) (sample by reparameterisation
    with noise from ``generator``)."""

    def __init__(self, channels: int, latent_dim: int = 32, width: int = 32) -> None:
        super().__init__()
        w = width

        def down(i: int, o: int) -> list[nn.Module]:
            return [nn.Conv2d(i, o, 4, 2, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True)]

        def up(i: int, o: int) -> list[nn.Module]:
            return [nn.ConvTranspose2d(i, o, 4, 2, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True)]

        self.encoder = nn.Sequential(*down(channels, w), *down(w, 2 * w), *down(2 * w, 4 * w), nn.Flatten())
        self.to_stats = nn.Linear(4 * w * 16, 2 * latent_dim)
        self.from_z = nn.Sequential(nn.Linear(latent_dim, 4 * w * 16), nn.ReLU(inplace=True))
        self.decoder = nn.Sequential(*up(4 * w, 2 * w), *up(2 * w, w), nn.ConvTranspose2d(w, channels, 4, 2, 1))
        self.width = w

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``mu`` and ``logvar`` (B, latent_dim) of q(z|x)."""
        mu, logvar = self.to_stats(self.encoder(x)).chunk(2, dim=1)
        return mu, logvar

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encode(x)
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        z = mu + eps * torch.exp(0.5 * logvar)
        recon = self.decoder(self.from_z(z).view(-1, 4 * self.width, 4, 4))
        return recon, mu, logvar


class Discriminator(nn.Module):
    """MLP latent -> 512 -> 512 -> 1 (ReLU), the logit of P(labelled) (released code's D)."""

    def __init__(self, latent_dim: int = 32, hidden: int = 512) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(latent_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 1)
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).squeeze(1)


def vae_loss(x: torch.Tensor, recon: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, beta: float) -> torch.Tensor:
    """Negative ELBO of eq. 1 in nats per image (batch mean): ``0.5 * ||x - recon||^2``
    (unit-variance Gaussian decoder, constants dropped) ``+ beta * KL(N(mu,
    exp(logvar)) || N(0, I))``."""
    rec = 0.5 * (recon - x).square().flatten(1).sum(1)
    kl = -0.5 * (1 + logvar - mu.square() - logvar.exp()).sum(1)
    return (rec + beta * kl).mean()


class VaalStrategy(Strategy):
    """VAAL: the candidates a VAE + discriminator trained on L vs U find least
    likely labelled (see the module docstring). Needs ``ctx.network`` for the images."""

    name = "vaal"
    summary = "least likely labelled for a VAE + discriminator trained on L vs U"
    needs_network = True  # the loop refuses train.mode=frozen before any work

    def __init__(
        self,
        steps: int = 300,
        epochs: float | None = None,
        batch_size: int = 64,
        latent_dim: int = 32,
        width: int = 32,
        beta: float = 1.0,
        adversary_weight: float = 1.0,
        lr: float = 5e-4,
    ) -> None:
        if int(steps) != steps or steps < 1 or int(batch_size) != batch_size or batch_size < 1:
            raise SsalError(f"vaal needs integer steps >= 1 and batch_size >= 1, got {steps} and {batch_size}")
        if epochs is not None and not float(epochs) > 0:
            raise SsalError(f"vaal epochs must be > 0 (or unset to use steps), got {epochs}")
        if int(latent_dim) != latent_dim or latent_dim < 1 or int(width) != width or width < 1:
            raise SsalError(f"vaal needs integer latent_dim >= 1 and width >= 1, got {latent_dim} and {width}")
        if not (beta >= 0 and adversary_weight >= 0 and lr > 0):
            raise SsalError(f"vaal needs beta >= 0, adversary_weight >= 0 and lr > 0, got {beta}, {adversary_weight}, {lr}")
        self.steps, self.epochs, self.batch_size = int(steps), epochs, int(batch_size)
        self.latent_dim, self.width = int(latent_dim), int(width)
        self.beta, self.adversary_weight, self.lr = float(beta), float(adversary_weight), float(lr)

    def num_steps(self, n_candidates: int) -> int:
        """Training steps: ``steps``, or ``ceil(epochs * n_candidates / batch_size)``
        (one epoch = one pass over the candidates) when ``epochs`` is set."""
        if self.epochs is None:
            return self.steps
        return max(1, math.ceil(float(self.epochs) * n_candidates / self.batch_size))

    def select(self, ctx: SelectionContext, budget: int) -> torch.Tensor:
        check_request(ctx, budget)
        if budget == 0:
            return torch.empty(0, dtype=torch.long)
        net = require_network(ctx, self.name)
        if ctx.labelled.numel() == 0:
            raise SsalError("vaal needs at least one labelled image to train its discriminator")
        device = torch.device(net.device)
        unl = net.pool_images(ctx.candidates).to(device)
        lab = net.labelled_images.to(device)
        if unl.ndim != 4 or lab.ndim != 4 or unl.shape[1:] != lab.shape[1:] or unl.shape[1] not in (1, 3):
            raise SsalError(f"vaal needs (N, 1 or 3, H, W) images alike in L and U, got {tuple(lab.shape)} and {tuple(unl.shape)}")

        def load(images: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
            x = net.prepare(images[idx.to(images.device)]).float().contiguous()
            if x.shape[-2:] != (SIZE, SIZE):
                x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
            return x

        seed = draw_seed(ctx.generator)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            vae = VAE(int(unl.shape[1]), self.latent_dim, self.width)
            disc = Discriminator(self.latent_dim)
        vae.to(device).train()
        disc.to(device).train()
        batches = torch.Generator().manual_seed(seed + 1)
        noise = torch.Generator(device=device).manual_seed(seed + 2)
        opt_vae = torch.optim.Adam(vae.parameters(), lr=self.lr)
        opt_disc = torch.optim.Adam(disc.parameters(), lr=self.lr)
        lab_order, unl_order = _Batches(lab.shape[0], self.batch_size, batches), _Batches(unl.shape[0], self.batch_size, batches)
        for _ in range(self.num_steps(unl.shape[0])):
            xl, xu = load(lab, lab_order.next()), load(unl, unl_order.next())
            # VAE step (eq. 3): ELBO of both sets + make both look labelled (eq. 2).
            rl, mu_l, lv_l = vae(xl, noise)
            ru, mu_u, lv_u = vae(xu, noise)
            elbo = vae_loss(xl, rl, mu_l, lv_l, self.beta) + vae_loss(xu, ru, mu_u, lv_u, self.beta)
            dl, du = disc(mu_l), disc(mu_u)
            adv = F.binary_cross_entropy_with_logits(dl, torch.ones_like(dl)) + F.binary_cross_entropy_with_logits(du, torch.ones_like(du))
            opt_vae.zero_grad(set_to_none=True)
            (elbo + self.adversary_weight * adv).backward()
            opt_vae.step()
            # Discriminator step (eq. 4): L -> 1, U -> 0 on the latent means.
            with torch.no_grad():
                mu_l, _ = vae.encode(xl)
                mu_u, _ = vae.encode(xu)
            dl, du = disc(mu_l), disc(mu_u)
            loss_d = F.binary_cross_entropy_with_logits(dl, torch.ones_like(dl)) + F.binary_cross_entropy_with_logits(du, torch.zeros_like(du))
            opt_disc.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_disc.step()
        vae.eval()
        disc.eval()
        logit_labelled = []
        with torch.no_grad():
            for s in range(0, unl.shape[0], net.batch_size):
                idx = torch.arange(s, min(s + net.batch_size, unl.shape[0]))
                mu, _ = vae.encode(load(unl, idx))
                logit_labelled.append(disc(mu).double().cpu())
        scores = -torch.cat(logit_labelled)  # least likely labelled first
        if not bool(torch.isfinite(scores).all()):
            raise SsalError("vaal's discriminator produced NaN or infinite outputs; try a lower lr")
        return ctx.candidates[top_scores(scores, budget)]


class _Batches:
    """Batches of ``size`` positions of ``range(n)``: successive slices of random
    permutations (a fresh one when exhausted), batches of min(size, n)."""

    def __init__(self, n: int, size: int, generator: torch.Generator) -> None:
        self.n, self.size, self.generator = n, min(size, n), generator
        self.order, self.at = torch.empty(0, dtype=torch.long), 0

    def next(self) -> torch.Tensor:
        if self.at + self.size > self.order.numel():
            self.order, self.at = torch.randperm(self.n, generator=self.generator), 0
        self.at += self.size
        return self.order[self.at - self.size : self.at]
