"""Conditional Multimodal Autoencoder (CMMA): faces generated from attributes.

Gaurav Pandey & Ambedkar Dukkipati, "Variational methods for conditional multimodal learning:
Generating human faces from attributes", arXiv:1603.01801 (2016). No public code; settings the
paper leaves out are our choices, each named below or in a flag's help.

The model (paper sec. 2, Table 1). x: a 64x64 RGB face, pixels in [0, 1]; y: its attributes
(CelebA's 40 in {0, 1}, or LFW's 73 real-valued scores); z in R^500.
    prior      p_f(z|y) = N(f_mu(y), diag exp(f_sigma(y)))       f: attributes -> 800 softplus -> 500 + 500
    decoder    p_g(x|z) = N(g_mu(z), diag exp(g_sigma(z)))       g: deconvolutional, sigmoid mean,
                                                                   per-pixel log-variance
    encoder    q_h(z|x, y) = N(h_mu(x), diag exp(h_sigma(x)))     h: convolutional (image only by
                                                                   default, as in the reported run)
Every *_sigma is a log-variance. The bound maximised (eq. 6):
    L(x, y) = E_q[log p_g(x|z)] - KL(q_h(z|x, y) || p_f(z|y))                     nats per image
    (eq. 7)  KL = 1/2 sum_j [f_sig - h_sig + exp(h_sig - f_sig) + (h_mu - f_mu)^2 exp(-f_sig) - 1]
    (eq. 8)  log p_g(x|z) = -1/2 sum_l [(x_l - g_mu,l)^2 exp(-g_sig,l) + g_sig,l + log 2 pi]
    (eq. 10) z = h_mu + eps * exp(h_sig / 2),  eps ~ N(0, I)
Eq. 7 as printed drops the -1 and eq. 8 prints exp(g_sigma) for g_sigma and drops log 2 pi;
eq. 10 prints h_sigma for the standard deviation. The exact forms above are used (misprints of eq. 7, 8 and 10 corrected)
and the test bound is reported with and without the constants.
To generate from attributes, h is replaced by f (Fig. 5): z = f_mu(y), x = g_mu(z) at noise 0.

Baselines in this file, with the same networks (`--model`):
    cvae  Kingma et al. 2014 (eq. 13): prior N(0, I), q(z|x, y) with y joined to h's features,
          p(x|z, y) with g's first layer taking [z, y].
    cgan  Mirza & Osindero 2014: generator shaped like g ([noise, y] -> sigmoid image),
          discriminator shaped like h, y tiled into its first convolution and joined again to its
          features (at the last layer alone D could largely ignore y). Sec. 4.4 chose its learning
          rates and weight scale on the validation log-likelihood: benchmarks/tune_cgan.py.

Choices the paper does not make, or makes differently (each a flag):
    --dataset celeba     the default data, 40 binary attributes; the paper's LFW (73 real-valued
                         attribute scores) is --dataset lfw. CelebA has no "Asian": Pale_Skin
                         stands in for it in Fig. 4. --dataset mnist (the class as 10 one-hot
                         attributes) is the laptop-scale stand-in of benchmarks/claims.py.
    base vector          Figs. 4, 6 and `edit` start from the training set's per-attribute mode on
                         CelebA (an all-zero vector means bearded, old, unattractive: no face has
                         it) and from the training mean on LFW; `edit` uses the face's own
                         attributes when the data set lists it.
    --lr 3e-4            Adagrad's rate is not stated; measured on faces (see the flag's help).
    --logvar-min/max     g's log-variance is squashed into [-9, 3] by a sigmoid, so the learned
                         pixel variance can neither collapse nor stall at a bound (a clamp's
                         gradient is 0 there).
    --steps 50000        "500 iterations" read as epochs, matched on CelebA at batch 100.
    --eval-images, --valid-images, --parzen-samples
                         Tables 2-3 on seeded random subsets (1,000 test and 1,000 validation
                         faces, K = 1000, as the paper); disjoint when one split serves both.
    --image-size, --width
                         64 px and the paper's 192/96/48 channels by default; any multiple of 8
                         from 32 px and a channel multiplier for small runs.
    --gan-optimizer adam, --d-projection
                         the CGAN's deviations for runs below the paper's scale, off by default.
                         MNIST, 32 px, 1200 steps (judge accuracy of its samples, pixel change for a
                         new class at the same noise): Adagrad drew blobs (0.09); Adam drew digits
                         that ignored y (0.13, 0.036); Adam with D's projection term y^T V phi(x)
                         (Miyato & Koyama 2018) drew the asked class (0.49, 0.106); with 100 noise
                         dims (DCGAN's) 0.55 at 1200 steps and 0.92 at 3600 (confidence 0.95).
    CMMA's samples of a class are near copies on MNIST (1200 steps, 500 dims): the codes of one
    class vary along a few directions (85% of their variance in 5), which the diagonal p_f(z|y)
    cannot follow, so its draws stay near the class's mean code (benchmarks/claims measures it).
    Fewer dims do not help at this scale: --latent-dim 16 and 4 read as the asked class 0.29 and
    0.18 (500: 0.64), their reconstructions 0.49 and 0.38.
    --kl-weight          1: the bound. The CVAE's 4-dim codes carry the class too (their per-class
                         means spread as much as the codes within a class), so a draw of N(0, I)
                         lands in another class's region. MNIST, 1200 steps, z of 4, -4 floor:
                         weight 1, 4, 16 read as the asked class 0.39, 0.47, 0.88, with confidence
                         0.61, 0.60, 0.76 (one run each). benchmarks/claims trains its CVAE at 16:
                         at 3600 steps it reads as the asked class 0.946 (CMMA 0.963), and its
                         edits (Fig. 6) 0.966 (CMMA 0.738).
    CelebA faces are centre-cropped to 140 px.

Usage:
    python cmma.py --dataset celeba --data-dir data/celeba                 # CMMA
    python cmma.py --dataset celeba --data-dir data/celeba --model cvae    # baselines
    python cmma.py --dataset celeba --data-dir data/celeba --model cgan
    python cmma.py eval --checkpoint runs/cmma-celeba-cmma/checkpoint.pt,runs/cmma-celeba-cvae/checkpoint.pt,runs/cmma-celeba-cgan/checkpoint.pt
    python benchmarks/fidelity.py cmma --checkpoint runs/cmma-celeba-cmma --fid --kid   # FID / KID (metrics extra)
    python cmma.py figures --checkpoint (the same list)                    # Figs. 4, 6, 7
    python cmma.py edit --checkpoint C --image face.jpg --set Eyeglasses=1 --set Smiling=0
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from torch.nn.parallel import DistributedDataParallel as DDP

import common
import data

SCRIPT = "cmma"
CELEBA_CROP = (39, 19, 140, 140)  # top, left, height, width: centre 140 of the 178x218 aligned faces
# Fig. 4: rows (Male, Asian) with CelebA's Pale_Skin for Asian; columns switch one attribute each
FIG4_ROWS = [("Male", 0, "Asian", 1), ("Male", 0, "Asian", 0), ("Male", 1, "Asian", 1), ("Male", 1, "Asian", 0)]
FIG4_COLUMNS = [None, "Mouth_Slightly_Open", "Eyeglasses", "Bushy_Eyebrows", "Big_Nose", "Pointy_Nose", "Big_Lips"]
FIG6_ROWS = [None, "Big_Nose", "Eyeglasses", "Mustache", "Big_Lips"]
# CelebA has no Asian attribute; LFW names differ in spelling
ALIASES = {"celeba": {"Asian": "Pale_Skin"},
           "lfw": {"Mouth_Slightly_Open": "Mouth Slightly Open", "Bushy_Eyebrows": "Bushy Eyebrows",
                   "Big_Nose": "Big Nose", "Pointy_Nose": "Pointy Nose", "Big_Lips": "Big Lips",
                   "Mustache": "Mustache"}}


# ----------------------------------------------------------------------------------------------
# config
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Config(common.RunConfig):
    dataset: str = common.arg("celeba", "celeba (40 binary attributes), lfw (73 real-valued, the paper's) or "
                                        "mnist (the class as 10 one-hot attributes: a laptop-scale stand-in)",
                              choices=("celeba", "lfw", "mnist"))
    model: str = common.arg("cmma", "cmma (the paper), cvae or cgan (its baselines)", choices=("cmma", "cvae", "cgan"))
    checkpoint: str = common.arg("", "checkpoint(s) for sample/figures/eval/edit, comma-separated to compare "
                                     "models (default: OUT/checkpoint.pt)")
    steps: int = common.arg(50_000, "training steps; the paper's '500 iterations' (sec. 4) read as epochs "
                                    "(0: no training, evaluate the initial or resumed network)")
    batch_size: int = common.arg(100, "images per step per process (not stated in the paper)")
    # Adagrad's first steps move every weight by about lr, and g's log-variance conv sums 4,800
    # inputs: with a clamped head, 1e-3 sent it to -9 at step 2 (loss x700) and Adagrad's sum of
    # squares kept that gradient. The squashed head trains at 1e-3 as at 3e-4 on faces (a test
    # holds it); 1e-2 still diverges. MNIST digits learn faster at 3e-3 (benchmarks/claims.py)
    lr: float = common.arg(3e-4, "Adagrad learning rate (not stated in the paper; 3e-4 and 1e-3 measured stable "
                                 "on faces, 1e-2 diverges)")
    lr_d: float = common.arg(0.0, "cgan: discriminator learning rate (0: same as --lr)", at_least=0.0)
    gan_optimizer: str = common.arg("adagrad", "cgan: adagrad (sec. 4.3: every model) or adam (DCGAN's Adam, betas "
                                               "0.5, 0.999, the usual GAN optimizer; a deviation)",
                                    choices=("adagrad", "adam"))
    d_projection: bool = common.arg(False, "cgan: add Miyato & Koyama's projection term y^T V phi(x) to D's logit, so "
                                           "that D scores the image against its class (a deviation; measured in "
                                           "benchmarks/claims: without it G ignored y on MNIST)")
    init_std: float = common.arg(0.0, "cgan: weights drawn from N(0, init_std^2), biases 0 (0: PyTorch's default "
                                      "init)", at_least=0.0)
    image_size: int = common.arg(64, "image side in pixels, a multiple of 8 from 32 (64: the paper's layer sizes)")
    width: float = common.arg(1.0, "channel multiplier of every convolution (1: the paper's 192/96/48; "
                                   "smaller for laptop-scale runs)", above=0.0)
    channels: int = common.arg(0, "image channels; set from the data (3, or 1 for MNIST)")
    latent_dim: int = common.arg(500, "J, the size of z (paper: 500)")
    hidden: int = common.arg(800, "softplus units of f (paper: 800)")
    h_sees_attributes: bool = common.arg(False, "feed y to h too (the paper found no gain and did not)")
    kl_weight: float = common.arg(1.0, "cmma, cvae: weight of the KL in the training loss (1: the bound, eq. 6; more "
                                       "is a deviation, a beta-VAE: see the docstring); eval reports the bound",
                                  at_least=0.0)
    logvar_min: float = common.arg(-9.0, "lower bound of g's per-pixel log-variance, sigmoid-squashed (deviation)")
    logvar_max: float = common.arg(3.0, "upper bound of g's per-pixel log-variance, sigmoid-squashed (deviation)")
    eval_images: int = common.arg(1000, "test faces for Tables 2 and 3")
    valid_images: int = common.arg(1000, "validation faces to choose the Parzen window (paper: 1,000)", at_least=1)
    parzen_samples: int = common.arg(1000, "K samples per test face for the Parzen estimate (paper: 1000)")
    parzen_grid: str = common.arg("0.01,1,21", "Parzen window grid lo,hi,n: n log-spaced sigmas from lo to hi, "
                                               "[0, 1] pixel units (the paper's 9,487 nats imply sigma ~0.1)")
    is_samples: int = common.arg(1000, "importance samples per face for the extra log p(x|y) estimate")
    attributes: int = common.arg(0, "size of y; set from the data (40 CelebA, 73 LFW); another value is refused")


# the flags that may differ from the checkpoint a run resumes or evaluates
RUN_FIELDS = common.RUN_FIELDS | {"eval_images", "valid_images", "parzen_samples", "parzen_grid", "is_samples"}
DATA_FIELDS = ("attributes",)  # set from the data when training starts (`attribute_count`), not from a flag
# ----------------------------------------------------------------------------------------------
# --- paper: the three models ---
# ----------------------------------------------------------------------------------------------
class CMMA(nn.Module):
    """f, g, h of the paper. All methods take x (B, 3, 64, 64) in [0, 1], y (B, A)."""

    def __init__(self, cfg: Config, attributes: int):
        super().__init__()
        self.f = AttributeEncoder(attributes, cfg.hidden, cfg.latent_dim)
        self.h = GaussianEncoder(cfg.latent_dim, cfg.channels, cfg.image_size, cfg.width,
                                 attributes if cfg.h_sees_attributes else 0)
        self.g = GaussianDecoder(cfg.latent_dim, cfg.channels, cfg.image_size, (cfg.logvar_min, cfg.logvar_max),
                                 cfg.width)
        self.h_sees_attributes = cfg.h_sees_attributes

    def forward(self, x, y) -> dict:
        """The bound's terms per image (see `elbo_terms`); training calls the model (DDP hooks in)."""
        return elbo_terms(self, x, y)

    def posterior(self, x, y):
        """q_h(z|x, y) as (mu, logvar)."""
        return self.h(x, y if self.h_sees_attributes else None)

    def prior(self, y):
        """p_f(z|y) as (mu, logvar)."""
        return self.f(y)

    def decode(self, z, y):
        """p_g(x|z) as (mean, logvar); y is unused (the decoder sees only z)."""
        return self.g(z)

    @torch.no_grad()
    def generate(self, y, noise: float = 1.0, eps: torch.Tensor | None = None):
        """Faces from attributes (Fig. 5): z = f_mu + noise * eps * f_std, x = g_mu(z); eps ~ N(0, I)
        unless given. Returns (B, C, S, S) in [0, 1]."""
        mu, logvar = self.prior(y)
        eps = torch.randn_like(mu) if eps is None else eps
        return self.decode(mu + noise * eps * torch.exp(0.5 * logvar), y)[0]

    @torch.no_grad()
    def edit(self, x, y_orig, y_new):
        """Sec. 4.5.2: z' = h_mu(x, y_new) + f_mu(y_new) - f_mu(y_orig); x' = g_mu(z')."""
        h_mu, _ = self.posterior(x, y_new)
        return self.decode(h_mu + self.prior(y_new)[0] - self.prior(y_orig)[0], y_new)[0]


class CVAE(nn.Module):
    """Eq. 13: prior N(0, I), q(z|x, y) with y joined to h's features, p(x|z, y) with [z, y]."""

    def __init__(self, cfg: Config, attributes: int):
        super().__init__()
        self.h = GaussianEncoder(cfg.latent_dim, cfg.channels, cfg.image_size, cfg.width, attributes)
        self.g = GaussianDecoder(cfg.latent_dim + attributes, cfg.channels, cfg.image_size,
                                 (cfg.logvar_min, cfg.logvar_max), cfg.width)
        self.latent_dim = cfg.latent_dim

    def forward(self, x, y) -> dict:
        return elbo_terms(self, x, y)

    def posterior(self, x, y):
        return self.h(x, y)

    def prior(self, y):
        zeros = y.new_zeros(y.shape[0], self.latent_dim)
        return zeros, zeros

    def decode(self, z, y):
        return self.g(torch.cat([z, y], dim=1))

    @torch.no_grad()
    def generate(self, y, noise: float = 1.0, eps: torch.Tensor | None = None):
        eps = torch.randn(y.shape[0], self.latent_dim, device=y.device) if eps is None else eps
        return self.decode(noise * eps, y)[0]

    @torch.no_grad()
    def edit(self, x, y_orig, y_new):
        """Our choice for the CVAE (the paper edits only with CMMA, sec. 4.5.2): z = mean of q(z|x, y_orig),
        x' = g_mu(z, y_new)."""
        return self.decode(self.posterior(x, y_orig)[0], y_new)[0]


class CGAN(nn.Module):
    """Conditional GAN with G shaped like g and D like h. Only generation; no bound, no edit."""

    def __init__(self, cfg: Config, attributes: int):
        super().__init__()
        self.generator = GaussianDecoder(cfg.latent_dim + attributes, cfg.channels, cfg.image_size,
                                         (cfg.logvar_min, cfg.logvar_max), cfg.width)
        self.discriminator = Discriminator(cfg.channels, cfg.image_size, attributes, cfg.width, cfg.d_projection)
        if cfg.init_std > 0:  # the paper tunes "the variance of weights" of its CGAN (sec. 4.4)
            for m in self.modules():  # of the paper's layers: --d-projection's V keeps PyTorch's init
                if isinstance(m, (nn.Linear, nn.Conv2d)) and m is not self.discriminator.project:
                    nn.init.normal_(m.weight, 0.0, cfg.init_std)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
        self.latent_dim = cfg.latent_dim

    def forward(self, x, y, part: str) -> torch.Tensor:
        """The discriminator's loss (part 'd') or the generator's (part 'g') on a batch; see
        `gan_losses`. One forward per backward, so DDP averages each part's gradients."""
        noise = torch.randn(x.shape[0], self.latent_dim, device=x.device)
        with torch.set_grad_enabled(part == "g" and torch.is_grad_enabled()):
            fake = self.generator(torch.cat([noise, y], dim=1))[0]
        return gan_losses(self.discriminator, x, y, fake)[0 if part == "d" else 1]

    @torch.no_grad()
    def generate(self, y, noise: float = 1.0, eps: torch.Tensor | None = None):
        eps = torch.randn(y.shape[0], self.latent_dim, device=y.device) if eps is None else eps
        return self.generator(torch.cat([noise * eps, y], dim=1))[0]


def build_model(cfg: Config, attributes: int) -> nn.Module:
    """The --model network, with PyTorch's default init (close to Torch7's, the paper's framework)."""
    return {"cmma": CMMA, "cvae": CVAE, "cgan": CGAN}[cfg.model](cfg, attributes)


# ----------------------------------------------------------------------------------------------
# --- paper: their networks (sec. 4.1) ---
# ----------------------------------------------------------------------------------------------
def feature_side(size: int) -> int:
    """Side of h's last feature map for a size x size image (64 -> 10, 32 -> 2)."""
    return ((size - 4) // 2 - 4) // 2 - 3


def conv_widths(width: float) -> tuple[int, int, int]:
    """The three convolution widths, the paper's (192, 96, 48) times `width`."""
    return tuple(max(1, round(c * width)) for c in (192, 96, 48))


def decoder_side(size: int) -> int:
    """Side of g's first feature map so that its three x2 upsamplings and unpadded convs end at
    `size` (64 -> 10, 32 -> 6): 8 s - 16 = size."""
    return (size + 16) // 8


class ConvFeatures(nn.Module):
    """h's convolutional stack: CxSxS -> conv5 192 -> pool -> relu -> conv5 96 -> pool -> relu
    -> conv4 48 -> relu -> 48 * feature_side(S)^2 features (4,800 at 64 px; unpadded convs, as
    Torch7's default). With `condition` = A, y (B, A) enters the first convolution as A tiled
    constant maps: with unpadded convolutions that is exactly a learned linear map of y added to
    each of conv1's 192 output maps, which is how it is computed (the CGAN's discriminator)."""

    def __init__(self, channels: int, size: int, width: float = 1.0, condition: int = 0):
        super().__init__()
        c1, c2, c3 = conv_widths(width)
        self.conv1 = nn.Conv2d(channels, c1, 5)                                        # 64 -> 60
        self.tiled_y = nn.Linear(condition, c1, bias=False) if condition else None
        self.rest = nn.Sequential(nn.MaxPool2d(2), nn.ReLU(),                          # 60 -> 30
                                  nn.Conv2d(c1, c2, 5), nn.MaxPool2d(2), nn.ReLU(),    # 26 -> 13
                                  nn.Conv2d(c2, c3, 4), nn.ReLU(), nn.Flatten())       # 10x10x48
        self.out_features = c3 * feature_side(size) ** 2

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        t = self.conv1(x)
        if self.tiled_y is not None:
            t = t + self.tiled_y(y)[:, :, None, None]
        return self.rest(t)


class GaussianEncoder(nn.Module):
    """h: image (B, C, S, S) in [0, 1] (and y (B, A) with `extra`=A) -> (mu, logvar), (B, J)."""

    def __init__(self, latent_dim: int, channels: int, size: int, width: float = 1.0, extra: int = 0):
        super().__init__()
        self.features = ConvFeatures(channels, size, width)
        n = self.features.out_features + extra
        self.mu, self.logvar = nn.Linear(n, latent_dim), nn.Linear(n, latent_dim)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None):
        f = self.features(x)
        if y is not None:
            f = torch.cat([f, y], dim=1)
        return self.mu(f), self.logvar(f)


class AttributeEncoder(nn.Module):
    """f: attributes (B, A) -> p_f(z|y) as (mu, logvar), (B, J): 800 softplus units, two heads."""

    def __init__(self, attributes: int, hidden: int, latent_dim: int):
        super().__init__()
        self.hidden = nn.Sequential(nn.Linear(attributes, hidden), nn.Softplus())
        self.mu, self.logvar = nn.Linear(hidden, latent_dim), nn.Linear(hidden, latent_dim)

    def forward(self, y: torch.Tensor):
        h = self.hidden(y)
        return self.mu(h), self.logvar(h)


class GaussianDecoder(nn.Module):
    """g: code (B, J [+ A]) -> p_g(x|z) as (mean in [0, 1], log-variance), each (B, C, S, S).

    Linear -> 48 x s x s (s = 10 at 64 px) -> up2, conv3 96, relu -> up2, conv3 192, relu -> up2
    -> two parallel conv5 to C channels: the mean (sigmoid) and the log-variance, squashed into
    logvar_range by lo + (hi - lo) * sigmoid(.) (deviation: the paper leaves it unbounded)."""

    def __init__(self, in_features: int, channels: int, size: int, logvar_range: tuple[float, float],
                 width: float = 1.0):
        super().__init__()
        c1, c2, c3 = conv_widths(width)
        self.side, self.c3 = decoder_side(size), c3
        self.fc = nn.Linear(in_features, c3 * self.side ** 2)
        up = nn.Upsample(scale_factor=2, mode="nearest")
        self.body = nn.Sequential(up, nn.Conv2d(c3, c2, 3), nn.ReLU(),          # 20 -> 18
                                  up, nn.Conv2d(c2, c1, 3), nn.ReLU(), up)      # 36 -> 34 -> 68
        self.mean, self.logvar = nn.Conv2d(c1, channels, 5), nn.Conv2d(c1, channels, 5)   # 68 -> 64
        self.logvar_range = logvar_range

    def forward(self, code: torch.Tensor):
        t = self.body(self.fc(code).view(-1, self.c3, self.side, self.side))
        # A smooth bound, not a clamp: Adagrad's first steps move each of the log-variance conv's
        # 4,800 weights by about lr, so an unbounded or clamped head ran to -9 by step 2 at lr 1e-3
        # and its gradient, 0 at a clamp, could not bring it back; the squash keeps it alive
        lo, hi = self.logvar_range
        return torch.sigmoid(self.mean(t)), lo + (hi - lo) * torch.sigmoid(self.logvar(t))


class Discriminator(nn.Module):
    """CGAN's D, shaped like h: y tiled into the first convolution (see ConvFeatures) and joined
    again to the conv features -> one logit (B,). x (B, C, S, S) in [0, 1]. With `projection`, the
    logit also gets y^T V phi(x) (Miyato & Koyama 2018, eq. 3): a per-class score of the features."""

    def __init__(self, channels: int, size: int, attributes: int, width: float = 1.0, projection: bool = False):
        super().__init__()
        self.features = ConvFeatures(channels, size, width, condition=attributes)
        self.out = nn.Linear(self.features.out_features + attributes, 1)
        self.project = nn.Linear(attributes, self.features.out_features, bias=False) if projection else None

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        phi = self.features(x, y)
        logit = self.out(torch.cat([phi, y], dim=1)).squeeze(1)
        return logit if self.project is None else logit + (self.project(y) * phi).sum(1)


# ----------------------------------------------------------------------------------------------
# --- paper: losses ---
# ----------------------------------------------------------------------------------------------
LOG_2PI = math.log(2.0 * math.pi)


def gaussian_log_likelihood(x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
                            with_constant: bool = True) -> torch.Tensor:
    """log N(x; mu, diag exp(logvar)) in nats per sample, summed over all non-batch dims.

    `x`, `mu`, `logvar` broadcast to (B, ...); returns (B,). `with_constant=False` drops the
    -1/2 log(2 pi) per element, the form some papers report.
    """
    per_element = -0.5 * (logvar + (x - mu).pow(2) * torch.exp(-logvar))
    if with_constant:
        per_element = per_element - 0.5 * LOG_2PI
    return per_element.flatten(1).sum(dim=1)


def elbo_terms(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
    """Eq. 6-10 per image, nats: log p(x|z) with one z ~ q (B,), KL(q || prior) (B,), and the
    bound elbo = log p(x|z) - KL, plus the bound without constants (no log 2 pi per pixel, and
    KL without its -1 per dim, as eq. 7-8 are printed). x (B, 3, 64, 64) in [0, 1]."""
    h_mu, h_logvar = model.posterior(x, y)
    z = common.reparameterize(h_mu, h_logvar)                                   # eq. 10
    g_mu, g_logvar = model.decode(z, y)
    p_mu, p_logvar = model.prior(y)
    log_px = gaussian_log_likelihood(x.float(), g_mu.float(), g_logvar.float())   # eq. 8
    kl = common.kl_normal(h_mu.float(), h_logvar.float(), p_mu.float(), p_logvar.float())  # eq. 7
    constants = 0.5 * math.log(2 * math.pi) * x[0].numel() - 0.5 * h_mu.shape[1]
    elbo = log_px - kl
    return {"elbo": elbo, "log_px": log_px, "kl": kl, "elbo_no_constants": elbo + constants}


def gan_losses(discriminator: nn.Module, x: torch.Tensor, y: torch.Tensor, fake: torch.Tensor):
    """Conditional GAN losses (Mirza & Osindero 2014), non-saturating generator:
    d_loss = BCE(D(x, y), 1) + BCE(D(fake, y), 0) with fake detached;  g_loss = BCE(D(fake, y), 1).
    x, fake (B, 3, 64, 64) in [0, 1]; returns (d_loss, g_loss), scalars (nats per image)."""
    real_logit, fake_logit = discriminator(x, y).float(), discriminator(fake.detach(), y).float()
    d_loss = (F.binary_cross_entropy_with_logits(real_logit, torch.ones_like(real_logit))
              + F.binary_cross_entropy_with_logits(fake_logit, torch.zeros_like(fake_logit)))
    g_logit = discriminator(fake, y).float() if fake.requires_grad else fake_logit
    g_loss = F.binary_cross_entropy_with_logits(g_logit, torch.ones_like(g_logit))
    return d_loss, g_loss


# ----------------------------------------------------------------------------------------------
# --- paper: training steps ---
# ----------------------------------------------------------------------------------------------
def train_step(net, optimizers: dict, scaler, batches: list, cfg: Config, device) -> dict:
    """One Adagrad step on the (x in [0, 1], y) micro-batches (one unless --grad-accum; their
    gradients are averaged, DDP syncing on the last). For the GAN: a D step, then a G step on
    fresh noise."""
    if cfg.model != "cgan":
        def vae_loss(x, y):
            terms = net(x, y)
            # -eq. 6, the KL weighted by --kl-weight (1: the bound itself)
            loss = -(terms["log_px"] - cfg.kl_weight * terms["kl"]).mean()
            return loss, {"log_px": terms["log_px"].mean(), "kl": terms["kl"].mean()}
        loss, parts = step_on(net, optimizers["model"], scaler, batches, vae_loss, device, cfg.amp)
        return {"loss": loss, **parts}
    d_loss, _ = step_on(net, optimizers["discriminator"], scaler, batches, lambda x, y: (net(x, y, "d"), {}),
                        device, cfg.amp)
    # D's gradients from this pass are discarded: the next D step zeroes them
    g_loss, _ = step_on(net, optimizers["generator"], scaler, batches, lambda x, y: (net(x, y, "g"), {}),
                        device, cfg.amp)
    return {"loss": d_loss + g_loss, "d_loss": d_loss, "g_loss": g_loss}


def step_on(net, optimizer, scaler, batches: list, loss_fn, device, amp: bool) -> tuple:
    """Sum the gradients of loss_fn(x, y) / len(batches) over the micro-batches, then step.
    Returns the mean loss and the mean of its extra terms, detached."""
    optimizer.zero_grad(set_to_none=True)
    total, parts = 0.0, {}
    for i, (x, y) in enumerate(batches):
        sync = i == len(batches) - 1 or not hasattr(net, "no_sync")
        with contextlib.nullcontext() if sync else net.no_sync():
            with common.autocast(device, amp):
                loss, extra = loss_fn(x, y)
            scaler.scale(loss / len(batches)).backward()
        total = total + loss.detach() / len(batches)
        parts = {k: parts.get(k, 0.0) + v.detach() / len(batches) for k, v in extra.items()}
    scaler.step(optimizer)
    scaler.update()
    return total, parts


def make_optimizers(model: nn.Module, cfg: Config) -> dict:
    """Adagrad (sec. 4.3): one for the VAEs; separate D and G ones for the GAN (--gan-optimizer adam:
    Adam with betas (0.5, 0.999), DCGAN's)."""
    if cfg.model != "cgan":
        return {"model": torch.optim.Adagrad(model.parameters(), lr=cfg.lr)}
    make = (lambda params, lr: torch.optim.Adam(params, lr=lr, betas=(0.5, 0.999))) if cfg.gan_optimizer == "adam" \
        else (lambda params, lr: torch.optim.Adagrad(params, lr=lr))
    return {"generator": make(model.generator.parameters(), cfg.lr),
            "discriminator": make(model.discriminator.parameters(), cfg.lr_d)}


# ----------------------------------------------------------------------------------------------
# --- paper: evaluation (Tables 2 and 3) ---
# ----------------------------------------------------------------------------------------------
def parzen_sigmas(grid: str) -> torch.Tensor:
    """--parzen-grid 'lo,hi,n' -> n log-spaced window widths (S,) from lo to hi. Raises
    ValueError naming the flag for anything but 0 < lo < hi and n >= 2."""
    try:
        lo, hi, n = (float(v) for v in grid.split(","))
    except ValueError:
        lo = hi = n = 0.0
    if not (0 < lo < hi and n >= 2 and n == int(n)):
        raise ValueError(f"--parzen-grid must be lo,hi,n with 0 < lo < hi and n >= 2 (e.g. 0.01,1,21), got {grid!r}")
    return torch.logspace(math.log10(lo), math.log10(hi), int(n))


def parzen_log_likelihood(x: torch.Tensor, samples: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Gaussian Parzen-window log-density of one face under K generated samples, for each window.

    log p(x) = logsumexp_k[-||x - s_k||^2 / (2 s^2)] - log K - D/2 log(2 pi s^2)   (nats)
    x (D,) or (C, H, W); samples (K, ...) of the same size; sigmas (S,). Returns (S,)."""
    d2 = (samples.flatten(1).double() - x.flatten().double()).pow(2).sum(1)           # (K,)
    sig = sigmas.double().to(d2.device)
    dim, k = x.numel(), samples.shape[0]
    return (torch.logsumexp(-d2[None, :] / (2 * sig[:, None] ** 2), dim=1) - math.log(k)
            - 0.5 * dim * torch.log(2 * math.pi * sig ** 2))


def parzen_scores(model, x: torch.Tensor, y: torch.Tensor, k: int, sigmas: torch.Tensor, chunk: int = 250):
    """Mean Parzen log-likelihood (nats per face) over faces x (N, C, S, S) in [0, 1], each
    against k samples generated from its own attributes y (N, A); one value per window: (S,)."""
    return parzen_per_face(model, x, y, k, sigmas, chunk).mean(0)


@torch.no_grad()
def parzen_per_face(model, x: torch.Tensor, y: torch.Tensor, k: int, sigmas: torch.Tensor, chunk: int = 250):
    """Each face's Parzen log-likelihood (nats) under k samples generated from its own attributes,
    per window: (N, S) float64. Faces with identical attribute vectors (every MNIST digit of a
    class) share one set of k samples: each face's estimate is the same, only the faces' errors
    are correlated."""
    out = torch.zeros(len(x), len(sigmas), dtype=torch.float64)
    unique, which = torch.unique(y, dim=0, return_inverse=True)
    progress = common.Progress(f"Parzen ({k} samples each, {len(unique)} attribute vectors)", len(x), "faces",
                               announce=True)
    for u, yu in enumerate(unique):
        samples = torch.cat([model.generate(yu.expand(min(chunk, k - s), -1)).float()
                             for s in range(0, k, chunk)])
        for i in torch.nonzero(which == u).flatten().tolist():
            out[i] = parzen_log_likelihood(x[i], samples, sigmas).cpu()
            progress.update()
    return out


@torch.no_grad()
def importance_log_likelihood(model, x: torch.Tensor, y: torch.Tensor, k: int, chunk: int = 250) -> torch.Tensor:
    """Extra (not in the paper): log p(x|y) ~ logmeanexp_k[log p(x|z_k) + log p(z_k|y)
    - log q(z_k|x, y)], z_k ~ q (JMVAE's estimator). x (N, ...) in [0, 1]; returns (N,) nats.
    The k samples of a face are decoded `chunk` at a time (all 1000 at once: ~4.5 GB at 64x64)."""
    out, progress = [], common.Progress(f"importance-sampled log p(x|y) ({k} samples each)", len(x), "faces",
                                        announce=True)
    for xi, yi in zip(x, y):
        mu, logvar = model.posterior(xi[None], yi[None])
        p_mu, p_logvar = model.prior(yi[None])
        log_w = []
        for start in range(0, k, chunk):
            n = min(chunk, k - start)
            z = common.reparameterize(mu.expand(n, -1), logvar.expand(n, -1))
            g_mu, g_logvar = model.decode(z, yi.expand(n, -1))
            log_w.append(gaussian_log_likelihood(xi.expand(n, *xi.shape), g_mu.float(), g_logvar.float())
                         + gaussian_log_likelihood(z, p_mu.expand(n, -1), p_logvar.expand(n, -1))
                         - gaussian_log_likelihood(z, mu.expand(n, -1), logvar.expand(n, -1)))
        out.append(torch.logsumexp(torch.cat(log_w).double(), 0) - math.log(k))
        progress.update()
    return torch.stack(out)


# ----------------------------------------------------------------------------------------------
# --- paper: figures ---
# ----------------------------------------------------------------------------------------------
def attribute_index(cfg: Config, names: list, name: str) -> int:
    """Column of attribute `name` (a CelebA name) in this dataset, through ALIASES."""
    actual = ALIASES.get(cfg.dataset, {}).get(name, name)
    if actual not in names:
        raise ValueError(f"attribute {name!r} ({actual!r}) is not among this dataset's: {', '.join(names)}")
    return names.index(actual)


def attribute_levels(cfg: Config, train_attributes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(base, off, on) vectors (A,). CelebA and MNIST: the training set's per-attribute mode / 0 / 1
    (an all-zero CelebA vector means bearded, old, unattractive, which no face has); LFW: the
    training mean / mean - 2 std / mean + 2 std (its attributes are classifier scores, Kumar et al.)."""
    if cfg.dataset != "lfw":
        mode = (train_attributes.mean(0) > 0.5).astype(np.float32)
        return mode, np.zeros_like(mode), np.ones_like(mode)
    mean, std = train_attributes.mean(0), train_attributes.std(0)
    return mean, mean - 2 * std, mean + 2 * std


@torch.no_grad()
def fig4_from_attributes(model, cfg: Config, names: list, levels, device) -> torch.Tensor:
    """Fig. 4: 4 rows (Female/Male x Asian/not; Pale_Skin on CelebA) x 7 columns (none, then one
    attribute switched on each), generated at noise 0. Returns (28, 3, 64, 64) in [0, 1]."""
    base, off, on = levels
    ys = []
    for a, va, b, vb in FIG4_ROWS:
        row = base.copy()
        for name, value in ((a, va), (b, vb)):
            i = attribute_index(cfg, names, name)
            row[i] = on[i] if value else off[i]
        for column in FIG4_COLUMNS:
            y = row.copy()
            if column:
                y[attribute_index(cfg, names, column)] = on[attribute_index(cfg, names, column)]
            ys.append(y)
    return model.generate(torch.tensor(np.stack(ys), device=device), noise=0.0)


@torch.no_grad()
def fig6_edits(model, cfg: Config, x: torch.Tensor, y: torch.Tensor, names: list, level: np.ndarray,
               rows=FIG6_ROWS) -> torch.Tensor:
    """Fig. 6 / 7: for each row attribute, the faces x (N, ...) in [0, 1] edited by the model with
    that attribute set to its value in `level` (A,); row None is the plain reconstruction.
    Returns (len(rows) * N, 3, 64, 64) in [0, 1]."""
    out = []
    for name in rows:
        y_new = y.clone()
        if name:
            i = attribute_index(cfg, names, name)
            y_new[:, i] = float(level[i])
        out.append(model.edit(x, y, y_new))
    return torch.cat(out)


@torch.no_grad()
def fig4_from_classes(model, device, draws: int = 7) -> torch.Tensor:
    """Fig. 4 on MNIST: a row per class 0..9, its mean image (noise 0) then `draws` samples.
    Returns (10 * (draws + 1), C, S, S) in [0, 1]."""
    classes = torch.eye(10, device=device)
    means = model.generate(classes, noise=0.0)
    samples = model.generate(classes.repeat_interleave(draws, 0)).view(10, draws, *means.shape[1:])
    return torch.cat([means[:, None], samples], 1).flatten(0, 1)


@torch.no_grad()
def fig6_class_edits(model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Fig. 6 on MNIST: each digit x (N, ...) edited to every class 0..9 (sec. 4.5.2), a row per
    class. Returns (10 * N, C, S, S) in [0, 1]."""
    return torch.cat([model.edit(x, y, torch.eye(10, device=x.device)[c].expand_as(y)) for c in range(10)])


# ----------------------------------------------------------------------------------------------
# --- plumbing: data, checkpoints, training loop ---
# ----------------------------------------------------------------------------------------------
def resolve_defaults(cfg: Config) -> Config:
    cfg = dataclasses.replace(cfg, data_dir=os.path.abspath(cfg.data_dir or os.path.join("data", cfg.dataset)),
                              out=cfg.out or os.path.join("runs", f"cmma-{cfg.dataset}-{cfg.model}"),
                              lr_d=cfg.lr_d or cfg.lr, channels=cfg.channels or (1 if cfg.dataset == "mnist" else 3))
    common.check_run_config(cfg)
    checks = [(cfg.image_size >= 32 and cfg.image_size % 8 == 0,
               f"--image-size must be a multiple of 8 from 32 (64 is the paper's), got {cfg.image_size}"),
              (cfg.init_std >= 0, "--init-std must be >= 0"),
              (0 < cfg.width <= 4, f"--width must be in (0, 4], got {cfg.width}"),
              (cfg.logvar_min < cfg.logvar_max, "--logvar-min must be below --logvar-max"),
              (cfg.parzen_samples >= 1 and cfg.is_samples >= 1, "--parzen-samples and --is-samples must be >= 1")]
    common.require(checks)
    parzen_sigmas(cfg.parzen_grid)
    return cfg


def crop_for(cfg: Config):
    return CELEBA_CROP if cfg.dataset == "celeba" else None


def load_split(cfg: Config, split: str, verbose: bool = True) -> data.ImageSet:
    """The split with labels['attributes'] (N, A): CelebA's 40, LFW's 73, or MNIST's class as a
    one-hot vector of 10 (names '0'..'9')."""
    dataset = data.load_dataset(cfg.dataset, cfg.data_dir, split, cfg.image_size, crop_for(cfg),
                                cfg.cache_dir or None, verbose)
    if cfg.dataset == "mnist":
        dataset.labels["attributes"] = np.eye(10, dtype=np.float32)[dataset.labels["class"]]
        dataset.names["attributes"] = dataset.names["class"]
    return dataset


def faces_and_attributes(dataset: data.ImageSet, index, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, C, S, S) in [0, 1] and attributes (N, A) float32 for `index`."""
    x = data.to_float_images(torch.from_numpy(np.array(dataset.images[index])).to(device))
    y = torch.from_numpy(np.asarray(dataset.labels["attributes"][index], dtype=np.float32)).to(device)
    return (x + 1) / 2, y


def train(cfg: Config, explicit: set, figures: bool = True) -> nn.Module:
    """Train cfg.model into cfg.out or resume it there exactly; figures and OUT/eval.json unless figures=False."""
    rank, world, local_rank = common.init_distributed()
    device = common.pick_device(cfg.device, local_rank)
    train_set = load_split(cfg, "train", verbose=common.is_main())
    cfg = dataclasses.replace(cfg, attributes=attribute_count(cfg, train_set))
    cfg, state = common.checkpoint_to_resume(cfg, explicit, SCRIPT, RUN_FIELDS, resolve_defaults)  # locks cfg.out
    common.seed_everything(cfg.seed)  # the same initial weights on every rank
    model = build_model(cfg, cfg.attributes).to(device, memory_format=common.memory_format(device))
    optimizers, scaler = make_optimizers(model, cfg), common.make_grad_scaler(device, cfg.amp)
    start = common.restore_training_state(state, {"model": model}, optimizers, scaler, cfg.seed)  # 0 for a fresh run
    batches = data.Batches(train_set, cfg.batch_size, cfg.seed, device, rank, world, ("attributes",),
                           channels_last=device.type == "cuda")
    meter = common.start_run_folder(cfg, train_set, model, start, device, cfg.batch_size * cfg.grad_accum * world,
                                    label=f"{cfg.model}: ")
    net = DDP(model, device_ids=[device.index] if device.type == "cuda" else None,
              find_unused_parameters=cfg.model == "cgan") if world > 1 else model  # G is idle in D's pass
    net = torch.compile(net) if cfg.compile else net  # outside DDP (torch's advice): the all-reduce overlaps the backward
    bad = torch.zeros((), dtype=torch.bool, device=device)  # a NaN or inf loss so far; read only at log and save steps
    with common.StopSignal() as stop:
        for step in range(start + 1, cfg.steps + 1):  # `step` optimizer steps done after this one
            micro = [batches.get((step - 1) * cfg.grad_accum + i) for i in range(cfg.grad_accum)]
            terms = train_step(net, optimizers, scaler, [((x + 1) / 2, labels["attributes"].float())
                                                         for x, labels in micro], cfg, device)  # x in [0, 1]
            bad |= ~torch.isfinite(terms["loss"])
            if step % cfg.log_every == 0 or step == cfg.steps:
                common.check_finite(bad, step, cfg.out)
                meter.log(step, terms)
            stopping = stop.poll(step, device)
            if step % cfg.ckpt_every == 0 or step == cfg.steps or stopping:
                common.check_finite(bad, step, cfg.out)  # a NaN never overwrites the last good checkpoint
                with meter.paused():
                    common.save_training_state(cfg, SCRIPT, step, {"model": model}, optimizers, scaler, curve_keys(cfg))
            if stopping:
                stop.exit(step)
    common.cleanup_distributed()  # the figures and eval below run on rank 0 alone
    if rank == 0 and figures:
        draw_figures([(cfg, model.eval())], cfg.out, device)
        evaluate([(cfg, model)], cfg.out, device)
    return model.eval()


def attribute_count(cfg: Config, train_set: data.ImageSet) -> int:
    """y's size, the data's attributes per image (a smaller y would drop columns); the held-out
    splits are decoded now, so a broken held-out image stops the run before training. ValueError
    for an --attributes that differs from the data's."""
    for held in ("test", "valid"):
        load_split(cfg, held, verbose=False)
    found = train_set.labels["attributes"].shape[1]
    if cfg.attributes and cfg.attributes != found:
        raise ValueError(f"--attributes {cfg.attributes}: the data set has {found} attributes per image, and y takes "
                         f"them all; leave --attributes out (it is set from the data)")
    return found


def curve_keys(cfg: Config) -> list:
    return ["loss", "d_loss", "g_loss", "images_per_s"] if cfg.model == "cgan" else ["loss", "log_px", "kl", "images_per_s"]


# ----------------------------------------------------------------------------------------------
# --- plumbing: sample / figures / eval / edit over one or several checkpoints ---
# ----------------------------------------------------------------------------------------------
def load_run(cfg: Config, explicit: set, device) -> tuple[Config, nn.Module, dict]:
    """The config, the trained model (eval mode, on device) and the checkpoint's state, from
    --checkpoint (a run folder or its file; default OUT/checkpoint.pt). Its outputs go to the run
    folder unless --out is given."""
    saved, state = common.checkpoint_to_evaluate(cfg, explicit, SCRIPT, RUN_FIELDS, resolve_defaults,
                                                 os.path.join("runs", f"cmma-{cfg.dataset}-{cfg.model}"))
    model = build_model(saved, saved.attributes)
    common.load_weights(model, state, "model")
    return saved, model.to(device).eval(), state


def load_models(cfg: Config, explicit: set, device) -> list:
    """[(config, model in eval mode on device)] for each comma-separated --checkpoint."""
    paths = [p for p in cfg.checkpoint.split(",") if p] or [""]
    explicit = explicit - {"out"} if len(paths) > 1 else explicit
    return [load_run(dataclasses.replace(cfg, checkpoint=p), explicit, device)[:2] for p in paths]


def draw_figures(runs: list, out: str, device) -> list:
    """Figs. 4, 6, 7 for each (config, model): into each run's figures/, and side by side
    into OUT/figures/ when several models are given."""
    cfg0 = runs[0][0]
    train_set, written, panels = load_split(cfg0, "train", verbose=False), [], {"fig4": [], "fig6": [], "fig7": []}
    names, levels = train_set.names["attributes"], attribute_levels(cfg0, train_set.labels["attributes"])
    six_plain, six_glasses = pick_faces(cfg0, train_set, names)
    progress = common.Progress("figures", len(runs), "models", announce=True)
    for cfg, model in runs:
        torch.manual_seed(cfg.seed)
        if cfg.dataset == "mnist":
            grids = {"fig4": (fig4_from_classes(model, device), 8)}
            if cfg.model != "cgan":
                x, y = faces_and_attributes(train_set, six_plain, device)
                grids["fig6"] = (torch.cat([x, fig6_class_edits(model, x, y)]), len(six_plain))
        else:
            grids = {"fig4": (fig4_from_attributes(model, cfg, names, levels, device), 7)}
        if cfg.model != "cgan" and cfg.dataset != "mnist":
            x, y = faces_and_attributes(train_set, six_plain, device)
            grids["fig6"] = (torch.cat([x, fig6_edits(model, cfg, x, y, names, levels[2])]), len(six_plain))
            x, y = faces_and_attributes(train_set, six_glasses, device)
            grids["fig7"] = (torch.cat([x, fig6_edits(model, cfg, x, y, names, levels[1], rows=[None, "Eyeglasses"])]),
                             len(six_glasses))
        for name, (images, nrow) in grids.items():
            path = os.path.join(cfg.out, "figures", f"{name}_{cfg.model}.png")
            panels[name].append(common.save_grid(images, path, nrow, value_range=(0.0, 1.0)))
            written.append(path)
        progress.update()
    if len(runs) > 1:
        for name, grids in panels.items():
            if len(grids) > 1:
                written.append(os.path.join(out, "figures", f"{name}_compare.png"))
                common.save_png(common.hstack_panels(grids), written[-1])
    common.print0("figures: " + ", ".join(map(common.shown, written)))
    return written


def pick_faces(cfg: Config, dataset: data.ImageSet, names: list, n: int = 6):
    """Training faces for Fig. 6 (men, so that its Mustache row means something, with none of its
    attributes present) and Fig. 7 (with eyeglasses); on MNIST, the first digit of classes 0..n-1."""
    if cfg.dataset == "mnist":
        first = [np.flatnonzero(dataset.labels["class"] == c)[:1] for c in range(10)]
        return np.concatenate(first)[:n], None
    attrs = dataset.labels["attributes"]
    present = lambda name: attrs[:, attribute_index(cfg, names, name)] > (0.5 if cfg.dataset == "celeba" else 0.0)
    plain = ~np.any([present(r) for r in FIG6_ROWS if r], axis=0)
    if (plain & present("Male")).sum() >= n:
        plain &= present("Male")
    plain_idx, glasses_idx = np.flatnonzero(plain)[:n], np.flatnonzero(present("Eyeglasses"))[:n]
    return (plain_idx if len(plain_idx) else np.arange(n)), (glasses_idx if len(glasses_idx) else np.arange(n))


def evaluate(runs: list, out: str, device) -> dict:
    """Tables 2 and 3 (plus the IS estimate) for each run (`evaluate_run`), and the table printed."""
    table = {run_label(cfg, [c for c, _ in runs]): evaluate_run(cfg, model, device) for cfg, model in runs}
    print_tables(table)
    if len(runs) > 1 and out not in {c.out for c, _ in runs}:  # an explicit --out: the comparison goes there
        common.save_json(os.path.join(out, "eval_comparison.json"), table)
    return table


def evaluate_run(cfg: Config, model: nn.Module, device) -> dict:
    """One run's Table 2 (ELBO) and Table 3 (Parzen log-likelihood, its window chosen on the
    validation faces) on its own saved settings (seed, subsets, grid), into its OUT/eval.json."""
    (x_test, y_test), (x_val, y_val), (test, valid) = eval_faces(cfg, device)
    sigmas = parzen_sigmas(cfg.parzen_grid)
    common.seed_everything(cfg.seed)  # every draw of the eval, so a checkpoint gives one eval.json
    val_scores = parzen_scores(model, x_val, y_val, cfg.parzen_samples, sigmas)
    best = int(val_scores.argmax())
    if best in (0, len(sigmas) - 1):
        print(f"warning: {cfg.model}'s Parzen window {sigmas[best].item():.4g} is at the "
              f"{'low' if best == 0 else 'high'} end of --parzen-grid {cfg.parzen_grid}: the score is cut by "
              f"the grid; widen it", file=sys.stderr)
    result = {"model": cfg.model, "data": test.description, "test_faces": len(x_test), "valid_faces": len(x_val),
              "subsets": "seeded random subsets of the test and validation splits, disjoint"
                         + (" halves of the one held-out split" if test.files == valid.files else ""),
              "parzen_samples": cfg.parzen_samples, "parzen_sigma": sigmas[best].item(), "parzen_sigma_index": best,
              "parzen_grid": [s.item() for s in sigmas], "parzen_sigma_at_grid_edge": best in (0, len(sigmas) - 1),
              "parzen_valid_nats_per_face": val_scores.tolist(),
              "parzen_test_nats_per_face": parzen_scores(model, x_test, y_test, cfg.parzen_samples,
                                                         sigmas[best:best + 1]).item()}
    if cfg.model == "cgan":
        result.update(lr_g=cfg.lr, lr_d=cfg.lr_d, init_std=cfg.init_std)
    else:
        with torch.no_grad():
            terms = [elbo_terms(model, xb, yb) for xb, yb in zip(x_test.split(250), y_test.split(250))]
        for key in ("elbo", "elbo_no_constants", "log_px", "kl"):
            result[f"{key}_nats_per_face"] = torch.cat([t[key] for t in terms]).mean().item()
        result["is_samples"] = cfg.is_samples
        result["is_log_p_x_given_y_nats_per_face"] = importance_log_likelihood(
            model, x_test, y_test, cfg.is_samples).mean().item()
    result["units"] = ("nats per 64x64x3 face, pixels in [0, 1]; elbo = E_q log p(x|z) - KL with one z per "
                       "face; elbo_no_constants drops the log 2pi per pixel and the -1 per latent of eq. 7-8; "
                       "Parzen: K samples per face from its attributes, sigma chosen on the valid faces from "
                       "parzen_grid ([0, 1] pixel units)")
    common.save_json(os.path.join(cfg.out, "eval.json"), result)
    return result


def run_label(cfg: Config, configs: list) -> str:
    """The model's name, with its run folder where two compared runs share the model."""
    same = sum(c.model == cfg.model for c in configs) > 1
    return f"{cfg.model} ({os.path.basename(cfg.out)})" if same else cfg.model


def eval_faces(cfg: Config, device) -> tuple:
    """((x, y) test, (x, y) validation, (test, valid) ImageSets): the `eval_subsets` faces in [0, 1]."""
    test, valid = load_split(cfg, "test", verbose=False), load_split(cfg, "valid", verbose=False)
    test_index, valid_index = eval_subsets(cfg, test, valid)
    return (faces_and_attributes(test, test_index, device), faces_and_attributes(valid, valid_index, device),
            (test, valid))


def eval_subsets(cfg: Config, test: data.ImageSet, valid: data.ImageSet) -> tuple[np.ndarray, np.ndarray]:
    """Seeded random indices of --eval-images test and --valid-images validation faces (not the
    first N: files are sorted by name, MNIST's and folder sets by class). When the data set has one
    held-out split for both (MNIST's t10k-only sample), they are disjoint parts of it, so the
    Parzen window is never chosen on the faces it is scored on."""
    rng = np.random.default_rng(cfg.seed)
    if test.files != valid.files:
        return (np.sort(rng.permutation(len(test))[:cfg.eval_images]),
                np.sort(rng.permutation(len(valid))[:cfg.valid_images]))
    order = rng.permutation(len(test))
    n_valid = min(cfg.valid_images, len(test) // 2)
    return np.sort(order[n_valid:][:cfg.eval_images]), np.sort(order[:n_valid])


def print_tables(table: dict) -> None:
    r0 = next(iter(table.values()))
    print(f"this run: {r0['data']}; {r0['test_faces']} test faces, {r0['valid_faces']} validation faces, "
          f"K = {r0['parzen_samples']} samples per face")
    print("Table 2: variational lower bound on the test faces (nats per face; the paper's numbers are on LFW, "
          "not these faces: CMMA 17,973, CVAE 14,356)")
    for name, r in table.items():
        if "elbo_nats_per_face" in r:
            print(f"  {name:5s} {r['elbo_nats_per_face']:12,.1f}   without constants {r['elbo_no_constants_nats_per_face']:12,.1f}")
    print("Table 3: Parzen-window conditional log-likelihood (nats per face; the paper's, on LFW: CMMA 9,487 > "
          "CVAE 8,714 > CGAN 8,320)")
    for name, r in table.items():
        edge = "  AT THE GRID'S EDGE" if r["parzen_sigma_at_grid_edge"] else ""
        print(f"  {name:5s} {r['parzen_test_nats_per_face']:12,.1f}   (sigma {r['parzen_sigma']:.4f}{edge})")
        if r["model"] == "cgan":
            print(f"        lr_G {r['lr_g']:.3g}, lr_D {r['lr_d']:.3g}, init_std {r['init_std'] or 'PyTorch default'} "
                  f"(sec. 4.4's tuning: benchmarks/tune_cgan.py)")
    for name, r in table.items():
        if "is_log_p_x_given_y_nats_per_face" in r:
            print(f"  extra, importance-sampled log p(x|y): {name} {r['is_log_p_x_given_y_nats_per_face']:,.1f}")


def sample(runs: list, out: str, device) -> None:
    """Faces from the attributes of 8 test faces, 8 noise draws each, per model."""
    cfg0 = runs[0][0]
    test = load_split(cfg0, "test", verbose=False)
    for cfg, model in runs:
        torch.manual_seed(cfg.seed)
        _, y = faces_and_attributes(test, np.arange(min(8, len(test))), device)
        images = model.generate(y.repeat_interleave(8, 0))
        path = os.path.join(cfg.out, "figures", f"samples_{cfg.model}.png")
        replaced = os.path.exists(path)
        common.save_grid(images, path, 8, value_range=(0.0, 1.0))
        common.wrote(path, replaced)


def own_attributes(cfg: Config, image: str) -> np.ndarray | None:
    """The CelebA attributes (A,) of `image` when its file name is listed in the data set's
    list_attr_celeba.txt, else None (LFW, MNIST and photos from elsewhere)."""
    path = os.path.join(cfg.data_dir, "list_attr_celeba.txt")
    if cfg.dataset != "celeba" or not os.path.isfile(path):
        return None
    return data.read_celeba_attributes(path)[1].get(os.path.basename(image))


def check_changes(changes: list) -> None:
    """`edit`'s --set values: at least one, each attribute once (ValueError otherwise)."""
    if not changes:
        raise ValueError("edit needs at least one --set NAME=0 or NAME=1 (the attribute to change); without one the "
                         "edit is a plain reconstruction")
    names = [change.partition("=")[0] for change in changes]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"--set gives {', '.join(twice)} more than once: give each attribute one value")


def edit_attributes(cfg: Config, image: str, changes: list, has: str) -> tuple[np.ndarray, np.ndarray]:
    """`edit`'s attribute vectors (A,) before and after: the face's own when the data set lists
    it, else the training set's base (`attribute_levels`) with --has switched on; then each --set
    NAME=0|1 applied (on MNIST, `--set D=1` asks for digit D alone). ValueError for a bad --set."""
    train_set = load_split(cfg, "train", verbose=False)
    names = train_set.names["attributes"]
    base, _, on = attribute_levels(cfg, train_set.labels["attributes"])
    listed = own_attributes(cfg, image)
    y_orig = base.copy() if listed is None else listed.astype(np.float32)
    if listed is not None:
        print(f"{os.path.basename(image)}'s own attributes from the data set: "
              + ", ".join(n for n, v in zip(names, listed) if v))
    for name in (n for n in has.split(",") if n):
        y_orig[attribute_index(cfg, names, name.strip())] = on[attribute_index(cfg, names, name.strip())]
    y_new = y_orig.copy()
    check_changes(changes)
    for change in changes:
        name, _, value = change.partition("=")
        if value not in ("0", "1"):
            raise ValueError(f"--set takes NAME=0 or NAME=1, got {change!r}")
        i = attribute_index(cfg, names, name)
        if cfg.dataset == "mnist":  # one class at a time
            y_new[:] = 0.0
        y_new[i] = on[i] if value == "1" else (0.0 if cfg.dataset != "lfw" else base[i] - (on[i] - base[i]))
    return y_orig, y_new


def edit_user_image(runs: list, cfg: Config, image: str, changes: list, has: str, device) -> str:
    """`edit`: crop and resize the user's aligned face like the training data, set attributes
    (`edit_attributes`), and write [input, reconstruction, edited] side by side for each model."""
    if image and os.path.isdir(image):
        raise ValueError(f"--image {image!r} is a folder: pass one aligned face photo (CelebA-style) in it")
    if not image or not os.path.isfile(image):
        raise FileNotFoundError(f"--image {image!r} not found: pass an aligned face photo (CelebA-style)")
    y_orig, y_new = edit_attributes(cfg, image, changes, has)
    try:
        with Image.open(image) as im:
            crop = crop_for(cfg) if im.size == (178, 218) else None
    except FileNotFoundError:
        raise FileNotFoundError(f"--image {image}: no such file") from None
    except (OSError, SyntaxError) as e:  # PIL's UnidentifiedImageError is an OSError
        raise ValueError(f"--image {image}: cannot decode it as an image ({type(e).__name__}); give a JPEG or PNG "
                         f"face") from None
    x = torch.from_numpy(data.decode_image(image, crop, cfg.image_size)).permute(2, 0, 1)[None].float().div(255)
    x = (x.mean(1, keepdim=True) if cfg.channels == 1 else x).to(device)
    yo, yn = (torch.tensor(v, device=device)[None] for v in (y_orig, y_new))
    rows = [torch.cat([x, m.edit(x, yo, yo), m.edit(x, yo, yn)]) for c, m in runs if c.model != "cgan"]
    path = os.path.join(cfg.out, "figures", f"edit_{os.path.splitext(os.path.basename(image))[0]}.png")
    common.save_grid(torch.cat(rows), path, 3, value_range=(0.0, 1.0))
    print(f"wrote {common.shown(path)} (columns: input, reconstruction, edited; a row per model)")
    return path


# ----------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------
def main(argv: list | None = None) -> None:
    parser = argparse.ArgumentParser(prog="cmma.py", description=__doc__.split("\n")[0],
                                     epilog="With no subcommand, cmma.py trains; SUBCOMMAND --help lists its flags.")
    sub = parser.add_subparsers(dest="command", title="subcommands")
    common.add_fields(sub.add_parser("train", help="train a model (the default subcommand)"), Config)
    read = common.CHECKPOINT_FLAGS  # the model's settings come from its checkpoint(s), comma-separated
    common.add_fields(sub.add_parser("sample", help="draw faces from attribute vectors of held-out faces"), Config, read)
    common.add_fields(sub.add_parser("figures", help="draw Fig. 4, 6 and 7 (side by side for several checkpoints)"),
                      Config, read)
    common.add_fields(sub.add_parser("eval", help="Table 2 (ELBO, Parzen log-likelihood), Table 3 (attribute error) "
                                                  "into OUT/eval.json, one table for several checkpoints"), Config,
                      read | {"eval_images", "valid_images", "parzen_samples", "parzen_grid", "is_samples"})
    edit = common.add_fields(sub.add_parser("edit", help="Fig. 6 on your own face: switch attributes on or off"),
                             Config, read)
    edit.add_argument("--image", default="", help="the face to edit (any image; aligned CelebA-like faces work best)")
    edit.add_argument("--set", action="append", default=[], metavar="NAME=0|1",
                      help="an attribute to switch on (1) or off (0); repeat for several")
    edit.add_argument("--has", default="", metavar="NAME,NAME", help="attributes the face already has")
    mode, cfg, explicit, own = common.parse(parser, Config, argv)
    with common.user_errors():
        if mode == "train":
            return train(resolve_defaults(cfg), explicit)
        device = common.pick_device(cfg.device)
        runs = load_models(cfg, explicit, device)
        out = cfg.out or runs[0][0].out
        if mode == "edit":
            edit_user_image(runs, dataclasses.replace(runs[0][0], out=out), own["image"], own["set"], own["has"],
                            device)
        else:
            {"sample": sample, "figures": draw_figures, "eval": evaluate}[mode](runs, out, device)


if __name__ == "__main__":
    main()
