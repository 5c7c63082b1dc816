"""Lr-LiVAE: a VAE whose latent space splits into label-relevant and label-irrelevant codes.

Zhilin Zheng & Li Sun, "Disentangling Latent Space for VAE by Label Relevant/Irrelevant
Dimensions", CVPR 2019 (arXiv:1812.09502). Equations are numbered as in the paper; where it is
silent, the official TF code (ZhilZheng/Lr-LiVAE) decides, and the comments say "code".

The model. Data (x, c), c in 1..K. Two encoders and one decoder:
    E_s: x -> z_s               deterministic, label-relevant (q(z_s|x) is a point mass)
    E_u: x -> (mu, logvar)      z_u = mu + exp(logvar / 2) * eps, label-irrelevant
    G:   [z_s, z_u] -> x_hat    tanh output, pixels in [-1, 1]
with priors p(z_u) = N(0, I) and p(z_s) = 1/K sum_k N(z_s; mu_k, diag Sigma_k), one learned
Gaussian per class. The ELBO (eq. 2) gives
    (eq. 3)   L_KL  = KL(q(z_u|x) || N(0, I))                  averaged over dims and batch
              L_rec = ||x - x_hat||^2                          averaged over pixels and batch
    (eq. 6-9) d_k = 1/2 (z_s - mu_k)^T Sigma_k^-1 (z_s - mu_k),  logit_k = -d_k - 1/2 log|Sigma_k|
              L_lkd = d_c + 1/2 log|Sigma_c|                    -log N(z_s; mu_c, Sigma_c) + const
              L_cls = -log softmax(logit)_c                     (margin alpha: (1 + alpha) d_c inside it)
              L_GM  = L_cls + lambda_lkd L_lkd,  lambda_lkd = 0.1
L_GM is a KL term on the joint (z_s, c) plus a lower bound on the mutual information I(z_s; c)
(paper App. A). An adversarial classifier C reads the sampled z_u and E_u learns to fool it:
    (eq. 4)   L_C   = CE(C(z_u), c)                  -> C
    (eq. 5)   L_adv = CE(C(z_u), uniform 1/K)        -> E_u
so z_u carries no label. The GAN extension (eq. 10-11) adds a spectral-norm projection
discriminator Dis(x, c) with the hinge loss on reconstructions x_hat and prior samples
x_tilde = G(z~_s, z~_u), z~_s ~ N(mu_c~, Sigma_c~), z~_u ~ N(0, I), c~ uniform:
              L_Dis = E relu(1 - Dis(x, c)) + E relu(1 + Dis(x_hat, c)) + E relu(1 + Dis(x_tilde, c~))
              L_GD  = -E Dis(x_hat, c) - E Dis(x_tilde, c~)
Each network minimises its own objective (sec. 3.5; the code's weights, means not sums; the
defaults change three of them, see "Measured deviations" below):
    E_u: 10 L_rec + L_KL + L_adv     G: 10 L_rec + L_GD       Dis: L_Dis      C: L_C
    E_s: 10 L_rec + L_lkd            (stage 2; mu_k, Sigma_k fixed there)
Training alternates two stages EVERY iteration (paper sec. 3.5): n_gm = 3 steps of L_GM on
three fresh batches (E_s, mu_k, Sigma_k), then one joint step of all networks on the last batch.

The baseline (`--model cvae-gan`), Bao et al. 2017's CVAE-GAN, the paper's comparison: the same
G, Dis and losses, but z_s is a learned embedding of the label (no E_s, no mixture prior, no
adversarial classifier), so G(embed(c), z_u) is a conditional VAE-GAN, with Bao et al.'s three
pieces: E_u(x, c) (the one-hot label into its last layer), an image classifier trained on real
images, G trained by mean feature matching on Dis' features and, per class, on the classifier's
(in place of L_GD), and E_u and G by pairwise feature matching of x and x_hat. Still ours: the
hinge projection Dis (the same for both models) and Bao's loss weights replaced by means over
features, weight 1.

Choices where the paper is silent: no margin (alpha = 0; `--margin 0.1`: L-GM's), hinge GAN,
Sigma as a log-variance clamped to +-8 (`--sigma-param precision`: the code's s = softplus(v), v
from 0.54; on the toy 49% of points on their curve against 67%, as Adam moves v by about lr per
step, so s stays <= ~6), Sigma's lr cut 10x every 10 epochs (code; `--sigma-lr paper`: 100x
after 2 epochs), BatchNorm in eval mode with population statistics over --bn-images training
images (`--eval-bn batch`: the code's training mode), an epoch counted in outer iterations.

Measured deviations, the defaults for Lr-LiVAE (each undone by a flag; the cVAE-GAN keeps the
code's values). At the paper's settings (MNIST, 300 iterations of batch 64, digits 7-9 unseen;
the toy, 50 epochs; one seed each) its samples were read as their class 0.67 (cVAE-GAN 0.96) and
67% of its toy points fell on their curve (cVAE-GAN 97%). Three causes, each measured:
- `--z-s-posterior gaussian` (paper: point). With a point-mass q(z_s|x), L_lkd = d_c + 1/2
  log|Sigma_c| has no floor when the codes and Sigma shrink together (toy: codes' sd 0.011,
  Sigma's 0.075). A Gaussian q(z_s|x) = N(m(x), diag s(x)) makes L_lkd the exact KL to N(mu_c,
  Sigma_c); G is trained on its draws. Toy: 67% -> 89%.
- `--kl-weight 10 --adv-weight 10` (code: 1, 1). On MNIST the label stayed in z_u (a linear probe
  read it from mu_u at 0.95) and G read it there: swaps read as the z_s image's class 0.59 ->
  0.93. Toy: 89% -> 93% (the KL weight alone 93%, the adversary's alone 80%).
- `--sigma-lr-scale 20` on MNIST and faces (code: 1). Adam moves log Sigma by about lr per step,
  0.45 in 900 stage-1 steps, so the class Gaussians stayed 22x wider than the codes: samples
  0.75 -> 0.93. The toy (11,250 stage-1 steps) keeps 1 (x20: 93% -> 90%).
Measured, not a default: `--c-steps 5` (four more adversary steps per iteration) reads samples
as their class 0.957 against 0.871 / 0.914 (two runs of one step) but swaps 0.757 against 0.833 /
0.877. `benchmarks/claims disentangled` (docs/claims/disentangled.md) gives the current defaults'
numbers and reruns the toy's ablation: over seeds 0-2, 87-94% of the toy's points lie within 3
noise sd of their curve, with radial offsets 1.4-2.5x as spread as the data's. Other flags
measured on the toy at the paper's reading: `--z-s-posterior detached` (L_rec does not reach E_s)
79%, `--lkd-weight 0` 71%, `--sigma-lr paper` 44%, `--n-gm 1` 53%.

Usage:
    python disentangled_vae.py --dataset mnist --data-dir data/mnist
    python disentangled_vae.py --dataset celeba --data-dir data/celeba        # identities as classes
    python disentangled_vae.py --dataset folder --data-dir data/facescrub     # one folder per class
    python disentangled_vae.py --dataset toy                                  # Fig. 2, 2-D
    python disentangled_vae.py --dataset mnist --model cvae-gan               # the baseline
    python disentangled_vae.py eval --checkpoint runs/dvae-mnist-lr-livae/checkpoint.pt,runs/dvae-mnist-cvae-gan/checkpoint.pt
    python benchmarks/fidelity.py disentangled_vae --checkpoint RUN --fid --kid --isc   # FID / KID / IS (metrics extra)
    python disentangled_vae.py figures --checkpoint runs/dvae-mnist-lr-livae/checkpoint.pt
    python disentangled_vae.py --dataset mnist --out runs/unseen --unseen-classes 7,8,9   # no labels of 7, 8, 9
    python disentangled_vae.py finetune --checkpoint runs/unseen/checkpoint.pt              # sec. 3.6 on them

Fig. 6 (`figures`) swaps codes of held-out images of the classes seen in training; sec. 3.6's
experiment on classes never seen with labels is `finetune` (its figures: OUT/finetune/figures).
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import math
import os

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch.nn.utils.parametrizations import spectral_norm

import common
import data

SCRIPT = "disentangled_vae"
CELEBA_CROP = (50, 25, 128, 128)  # top, left, height, width: a face-centred crop of aligned CelebA
LOGVAR_RANGE = 8.0  # --sigma-param logvar: |log Sigma_k| is clamped (our former choice, not the code's)
PRECISION_INIT = 0.54  # the code's raw precision parameter: softplus(0.54) = 1.0, Sigma_k = I at the start
# Fig. 7's masks, (top, bottom, left, right): the halves as fractions of the image; the face parts
# in pixels of the aligned 178x218 CelebA source, mapped through the crop in use (`mask_for`)
FACE_MASKS = {"right_half": (0.0, 1.0, 0.5, 1.0), "eyes": (96, 124, 40, 138),
              "nose_mouth": (124, 165, 57, 121), "bottom_half": (0.5, 1.0, 0.0, 1.0)}
FACE_PARTS = ("eyes", "nose_mouth")


# ----------------------------------------------------------------------------------------------
# config
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Config(common.RunConfig):
    dataset: str = common.arg("celeba", "celeba (identities as classes), mnist, folder (one sub-folder per "
                                        "class) or toy (Fig. 2)", choices=("celeba", "mnist", "folder", "toy"))
    model: str = common.arg("lr-livae", "lr-livae (the paper) or cvae-gan (its baseline, Bao et al. 2017's "
                                        "CVAE-GAN: E_u sees the label, an auxiliary image classifier, feature matching)",
                            choices=("lr-livae", "cvae-gan"))
    steps: int = common.arg(-1, "outer iterations (-1: 52,000, the code's released checkpoint; toy: 50 epochs; "
                                "0: no training, evaluate the initial or resumed network)")
    batch_size: int = common.arg(96, "images per step per process (code: 96; at least 2, as BatchNorm needs)",
                                 at_least=2)
    lr: float = common.arg(5e-4, "Adam learning rate of every network (code: 5e-4, betas 0 / 0.9)")
    n_gm: int = common.arg(3, "stage-1 L_GM steps per iteration, each on a fresh batch (paper sec. 3.5)")
    lambda_lkd: float = common.arg(0.1, "weight of L_lkd inside L_GM (paper, code)", at_least=0.0)
    margin: float = common.arg(0.0, "L-GM margin alpha on the true class's distance (code: 0; L-GM: 0.1)", at_least=0.0)
    rec_weight: float = common.arg(10.0, "weight of L_rec in E_s', E_u's and G's objectives (code: 10)", at_least=0.0)
    kl_weight: float = common.arg(-1.0, "weight of L_KL in E_u's objective (-1: 10 for lr-livae, measured, see "
                                         "the docstring; 1 for cvae-gan, the code's)", at_least=0.0)
    adv_weight: float = common.arg(-1.0, "weight of L_adv in E_u's objective (-1: 10, measured, see the "
                                          "docstring; the code: 1)", at_least=0.0)
    c_steps: int = common.arg(1, "Adam steps of the adversary C per iteration (code: 1); the extra ones on fresh "
                                 "draws of z_u after the joint step (5: see the docstring)", at_least=1)
    lkd_weight: float = common.arg(1.0, "weight of L_lkd in E_s' stage-2 objective (code: 10 x 0.1)", at_least=0.0)
    gan: bool = common.arg(True, "the GAN extension (projection discriminator, hinge); --no-gan: the plain VAE")
    sigma_lr: str = common.arg("", "Sigma's learning rate: code (x0.1 every 10 epochs), paper (x0.01 after "
                                   "2 epochs, B.4) or fixed (default: fixed for toy as the code, else code)",
                               choices=("", "code", "paper", "fixed"))
    sigma_param: str = common.arg("logvar", "Sigma_k's parameter: logvar, log Sigma from 0, clamped to +-8; or "
                                            "precision, the code's s = softplus(v), v from 0.54, Sigma = 1 / s, no "
                                            "clamp (measured worse on the toy: see the docstring)",
                                  choices=("logvar", "precision"))
    sigma_lr_scale: float = common.arg(-1.0, "Sigma's learning rate as a multiple of --lr before --sigma-lr's rule "
                                             "(-1: 20 for lr-livae on MNIST and faces, measured, see the docstring; "
                                             "1 on the toy and for cvae-gan, the code)", above=0.0)
    z_s_posterior: str = common.arg("", "q(z_s|x): gaussian (E_s gives a mean and a log-variance; L_lkd becomes "
                                        "the KL to p(z_s|c); the default for lr-livae, measured, see the docstring), "
                                        "point (the paper: z_s = E_s(x), L_rec reaches E_s) or detached (a point, "
                                        "but L_rec does not reach E_s)", choices=("", "point", "detached", "gaussian"))
    image_size: int = common.arg(0, "image side (0: 28 for MNIST, 64 for faces)")
    crop: str = common.arg("", "crop box top,left,height,width (default: 50,25,128,128 for CelebA, "
                               "the centred square for folder)")
    filters: int = common.arg(64, "face networks: the VGG16-BN base width (paper: 64, so 64, 128, 256, 512, 512 "
                                  "channels; smaller for a quick run)", at_least=1)
    z_s_dim: int = common.arg(0, "size of z_s (0: 32 MNIST, 512 faces, 2 toy)")
    z_u_dim: int = common.arg(0, "size of z_u (0: 100 MNIST, 512 faces, 2 toy)")
    min_class_images: int = common.arg(30, "--dataset celeba: keep identities with at least this many images")
    flip: bool = common.arg(True, "random horizontal flips of faces (code)")
    bn_momentum: float = common.arg(0.001, "BatchNorm running-stat momentum while training (TF's decay 0.999)",
                                    above=0.0, at_most=1.0)
    bn_images: int = common.arg(2000, "training images whose population BatchNorm statistics replace the "
                                      "running ones before eval, figures and sample (0: keep the running ones)")
    eval_bn: str = common.arg("population", "BatchNorm at eval, figures and sample: population (statistics of "
                                            "--bn-images training images) or batch (the code: training mode; only "
                                            "with batches as large and mixed as training ones)",
                              choices=("population", "batch"))
    toy_points: int = common.arg(3000, "--dataset toy: points per class (80 percent train)")
    eval_images: int = common.arg(2000, "held-out images for eval")
    diversity_classes: int = common.arg(20, "classes sampled for the intra-class diversity (MS-SSIM)")
    diversity_samples: int = common.arg(20, "generated images per class for the diversity (all pairs)")
    unseen_classes: str = common.arg("", "class names held out of labelled training, comma-separated (e.g. 7,8,9 "
                                         "on MNIST, identity ids, folder names): train, eval and figures never see "
                                         "them; `finetune` learns them from unlabelled images (sec. 3.6)")
    finetune_steps: int = common.arg(500, "finetune: steps on the unseen classes' unlabelled training images")


RUN_FIELDS = common.RUN_FIELDS | {"eval_images", "bn_images", "eval_bn", "diversity_classes", "diversity_samples",
                                   "finetune_steps"}
# ----------------------------------------------------------------------------------------------
# --- paper: networks (sec. 4.1 and the supplement; VGG16-BN encoders as the code) ---
# ----------------------------------------------------------------------------------------------
class DisentangledVAE(nn.Module):
    """Lr-LiVAE (E_s, E_u, G, the mixture prior, C, Dis) or the cVAE-GAN baseline (a label
    embedding in place of E_s and the prior; no C; E_u(x, c) and an image classifier)."""

    def __init__(self, cfg: Config, n_classes: int):
        super().__init__()
        channels = 1 if cfg.dataset == "mnist" else 3
        self.n_classes, self.z_s_dim, self.z_u_dim, self.kind = n_classes, cfg.z_s_dim, cfg.z_u_dim, cfg.model
        self.bao, self.z_s_posterior = cfg.model == "cvae-gan", cfg.z_s_posterior  # Bao et al.'s pieces
        trunk_u, width = networks(cfg).trunk(cfg, channels)
        self.encoder_u = (LabelAwareEncoder(trunk_u, width, n_classes, cfg.z_u_dim) if self.bao else
                          nn.Sequential(trunk_u, nn.Linear(width, 2 * cfg.z_u_dim)))
        if self.bao:
            self.image_classifier = ImageClassifier(*networks(cfg).trunk(cfg, channels), n_classes)
        self.decoder = networks(cfg).decoder(cfg, channels)
        if cfg.model == "lr-livae":
            trunk_s, width = networks(cfg).trunk(cfg, channels)
            self.encoder_s = nn.Sequential(trunk_s, nn.Linear(width, cfg.z_s_dim * (2 if cfg.z_s_posterior == "gaussian" else 1)))
            self.prior = GaussianMixturePrior(n_classes, cfg.z_s_dim, cfg.sigma_param)
            self.classifier = LatentClassifier(cfg.z_u_dim, n_classes, 64 if cfg.dataset == "toy" else 256)
        else:
            self.label_embedding = nn.Embedding(n_classes, cfg.z_s_dim)
        self.discriminator = ProjectionDiscriminator(cfg, channels, n_classes) if cfg.gan else None

    def encode_u(self, x: torch.Tensor, c: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z_u|x) as (mu, logvar), each (B, z_u_dim); for the cvae-gan q(z_u|x, c), and c (B,) is required."""
        if not self.bao:
            return self.encoder_u(x).chunk(2, dim=1)
        if c is None:
            raise ValueError("the cvae-gan encoder reads the label: pass c to encode_u")
        return self.encoder_u(x, c).chunk(2, dim=1)

    def encode_s(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """q(z_s|x): (E_s(x), None) for a point mass; (mean, logvar) with --z-s-posterior gaussian."""
        h = self.encoder_s(x)
        return tuple(h.chunk(2, dim=1)) if self.z_s_posterior == "gaussian" else (h, None)

    def code_s(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """z_s of images x: E_s(x) (its mean); the baseline has none and embeds the label c instead."""
        return self.encode_s(x)[0] if self.kind == "lr-livae" else self.label_embedding(c)

    def sample_s(self, c: torch.Tensor, eps: torch.Tensor | None = None) -> torch.Tensor:
        """z~_s ~ p(z_s|c) (the baseline: its label embedding, deterministic), (B, z_s_dim)."""
        return self.prior.sample(c, eps) if self.kind == "lr-livae" else self.label_embedding(c)

    def decode(self, z_s: torch.Tensor, z_u: torch.Tensor) -> torch.Tensor:
        return self.decoder(torch.cat([z_s, z_u], dim=1))

    def groups(self) -> dict:
        """The parameter groups that each take their own objective and Adam (sec. 3.5, as the code)."""
        g = {"encoder_u": list(self.encoder_u.parameters()), "decoder": list(self.decoder.parameters())}
        if self.kind == "lr-livae":
            g["encoder_s"] = list(self.encoder_s.parameters())
            g["classifier"] = list(self.classifier.parameters())
        else:
            g["decoder"] += list(self.label_embedding.parameters())  # learned with G
        if self.discriminator is not None:
            g["discriminator"] = list(self.discriminator.parameters())
        if self.bao:
            g["image_classifier"] = list(self.image_classifier.parameters())
        return g


def bn_relu(layer: nn.Module, channels: int, m: float, dims: int = 2) -> nn.Sequential:
    """layer -> BatchNorm (TF's eps 1e-3, momentum m) -> ReLU; dims 2 for conv, 1 for linear layers."""
    bn = (nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d)(channels, eps=1e-3, momentum=m)
    return nn.Sequential(layer, bn, nn.ReLU())


def lrelu() -> nn.Module:
    return nn.LeakyReLU(0.1)


def deconv(cin: int, cout: int, k: int, stride: int) -> nn.ConvTranspose2d:
    """TF 'SAME' transposed convolution: out = in * stride for odd k."""
    return nn.ConvTranspose2d(cin, cout, k, stride, k // 2, output_padding=stride - 1)


# One network family per kind of data, chosen in one place (`networks`). Each gives the shared
# body of E_s and E_u (x -> features (B, F); each encoder builds its own copy), G ([z_s, z_u] ->
# x_hat in [-1, 1]) and the discriminator's body (spectral norm on every weight, lrelu 0.1, no
# BatchNorm), in the order the model builds them.
class ToyNetworks:
    """Sec. 4.1's toy: every network an MLP 32-64-64, lrelu 0.1; points (B, 2)."""

    @staticmethod
    def trunk(cfg: Config, channels: int) -> tuple[nn.Module, int]:
        return nn.Sequential(nn.Linear(2, 32), lrelu(), nn.Linear(32, 64), lrelu(), nn.Linear(64, 64), lrelu()), 64

    @staticmethod
    def decoder(cfg: Config, channels: int) -> nn.Module:
        return nn.Sequential(nn.Linear(cfg.z_s_dim + cfg.z_u_dim, 32), lrelu(), nn.Linear(32, 64), lrelu(),
                             nn.Linear(64, 64), lrelu(), nn.Linear(64, 2))

    @staticmethod
    def discriminator(cfg: Config, channels: int) -> tuple[list, int]:
        sn = spectral_norm
        return [sn(nn.Linear(2, 32)), lrelu(), sn(nn.Linear(32, 64)), lrelu(), sn(nn.Linear(64, 64)), lrelu()], 64


class MnistNetworks:
    """The code's MNIST networks, 28x28: E conv5 s2 64, 128, 256 (28 -> 14 -> 7 -> 4) -> fc1024;
    G fc1024 = 256x2x2 -> 7 -> 14 -> 28; Dis conv5 32 s1, 128 s2, 256 s2, 256 s2 (4x4) -> fc512."""

    @staticmethod
    def trunk(cfg: Config, channels: int) -> tuple[nn.Module, int]:
        m = cfg.bn_momentum
        convs = [bn_relu(nn.Conv2d(a, b, 5, 2, 2), b, m) for a, b in ((1, 64), (64, 128), (128, 256))]
        return nn.Sequential(*convs, nn.Flatten(), bn_relu(nn.Linear(256 * 16, 1024), 1024, m, 1)), 1024

    @staticmethod
    def decoder(cfg: Config, channels: int) -> nn.Module:
        m = cfg.bn_momentum
        return nn.Sequential(bn_relu(nn.Linear(cfg.z_s_dim + cfg.z_u_dim, 1024), 1024, m, 1), common.Reshape(256, 2, 2),
                             bn_relu(nn.ConvTranspose2d(256, 256, 5, 2, 0), 256, m),
                             bn_relu(nn.ConvTranspose2d(256, 128, 5, 2, 2, output_padding=1), 128, m),
                             bn_relu(nn.ConvTranspose2d(128, 32, 5, 2, 2, output_padding=1), 32, m),
                             nn.ConvTranspose2d(32, channels, 5, 1, 2), nn.Tanh())

    @staticmethod
    def discriminator(cfg: Config, channels: int) -> tuple[list, int]:
        layers, c = [], channels
        for width, stride in ((32, 1), (128, 2), (256, 2), (256, 2)):
            layers += [spectral_norm(nn.Conv2d(c, width, 5, stride, 2)), lrelu()]
            c = width
        return layers + [nn.Flatten(), spectral_norm(nn.Linear(256 * 16, 512)), lrelu()], 512


class VggNetworks:
    """The paper's face networks (App. B.2, Tab. 4), sides a multiple of 32: E a VGG16-BN conv
    stack (the 5th max-pool a 2x2 average pool) -> fc1024; G fc1024 -> fc 2x2x512 -> thirteen 3x3
    deconvolutions; Dis seven 3x3 convolutions -> global average pool -> fc1024. Channels are
    given for --filters 64 (the paper's) and scale with it."""

    @staticmethod
    def trunk(cfg: Config, channels: int) -> tuple[nn.Module, int]:
        layers, c, m, f = [], channels, cfg.bn_momentum, cfg.filters
        for block, (width, repeat) in enumerate(((f, 2), (2 * f, 2), (4 * f, 3), (8 * f, 3), (8 * f, 3))):
            for _ in range(repeat):
                layers.append(bn_relu(nn.Conv2d(c, width, 3, 1, 1), width, m))
                c = width
            layers.append(nn.MaxPool2d(2) if block < 4 else nn.AvgPool2d(2))
        return nn.Sequential(*layers, nn.Flatten(),
                             bn_relu(nn.Linear(c * (cfg.image_size // 32) ** 2, 1024), 1024, m, 1)), 1024

    @staticmethod
    def decoder(cfg: Config, channels: int) -> nn.Module:
        m, s0, z, f = cfg.bn_momentum, cfg.image_size // 32, cfg.z_s_dim + cfg.z_u_dim, cfg.filters
        layers = [bn_relu(nn.Linear(z, 1024), 1024, m, 1), bn_relu(nn.Linear(1024, 8 * f * s0 * s0), 8 * f * s0 * s0, m, 1),
                  common.Reshape(8 * f, s0, s0)]
        c = 8 * f
        for k, stride in ((8, 2), (8, 1), (8, 1), (8, 2), (8, 1), (4, 1), (4, 2), (4, 1), (2, 1), (2, 2), (1, 1), (1, 2)):
            layers.append(bn_relu(deconv(c, k * f, 3, stride), k * f, m))
            c = k * f
        return nn.Sequential(*layers, deconv(c, channels, 3, 1), nn.Tanh())

    @staticmethod
    def discriminator(cfg: Config, channels: int) -> tuple[list, int]:
        layers, c = [], channels
        for k, stride in ((1, 2), (2, 2), (4, 1), (4, 2), (8, 1), (8, 2), (8, 2)):
            layers += [spectral_norm(nn.Conv2d(c, k * cfg.filters, 3, stride, 1)), lrelu()]
            c = k * cfg.filters
        return layers + [nn.AdaptiveAvgPool2d(1), nn.Flatten(), spectral_norm(nn.Linear(c, 1024)), lrelu()], 1024


def networks(cfg: Config) -> type:
    """The network family for the data: the toy's MLPs, MNIST's, or the faces' VGG16-BN."""
    return {"toy": ToyNetworks, "mnist": MnistNetworks}.get(cfg.dataset, VggNetworks)


class ProjectionDiscriminator(nn.Module):
    """Dis(x, c) = w^T h + <embed(c), h>, h = phi(x) (Miyato & Koyama 2018); every weight
    spectrally normalised (one power iteration per forward), lrelu 0.1, no BatchNorm.
    x (B, C, H, W) in [-1, 1] (toy: (B, 2)), c (B,) int64 -> scores (B,), unbounded."""

    def __init__(self, cfg: Config, channels: int, n_classes: int):
        super().__init__()
        layers, width = networks(cfg).discriminator(cfg, channels)
        self.features = nn.Sequential(*layers)
        self.linear = spectral_norm(nn.Linear(width, 1))
        self.embed = spectral_norm(nn.Embedding(n_classes, width))

    def forward(self, x: torch.Tensor, c: torch.Tensor | None, with_features: bool = False):
        """Scores (B,); c None drops the projection term (unlabelled images, sec. 3.6). With
        with_features, also h (B, width), the features Bao et al.'s feature matching reads."""
        h = self.features(x)
        score = self.linear(h).squeeze(1)
        score = score if c is None else score + (self.embed(c) * h).sum(1)
        return (score, h) if with_features else score


class GaussianMixturePrior(nn.Module):
    """p(z_s) = 1/K sum_k N(z_s; mu_k, diag Sigma_k), one component per class (eq. 6).

    mu (K, D) Xavier-uniform as the code. Sigma_k through `raw` (K, D), by `param`:
    'logvar' (the default): log Sigma = raw from 0, clamped to +-LOGVAR_RANGE; 'precision' (the
    code): s = softplus(raw), raw from 0.54 (s = 1), Sigma = 1 / s, unclamped. Either way
    `params` returns (mu, log Sigma), each (K, D), and sampling is mu + Sigma^(1/2) eps, the
    code's mu + eps / sqrt(s)."""

    def __init__(self, n_classes: int, dim: int, param: str = "logvar"):
        super().__init__()
        self.mu = nn.Parameter(nn.init.xavier_uniform_(torch.empty(n_classes, dim)))
        self.param = param
        self.raw = nn.Parameter(torch.full((n_classes, dim), PRECISION_INIT if param == "precision" else 0.0))

    def params(self, detach: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        logvar = (-F.softplus(self.raw).log() if self.param == "precision"
                  else self.raw.clamp(-LOGVAR_RANGE, LOGVAR_RANGE))
        return (self.mu.detach(), logvar.detach()) if detach else (self.mu, logvar)

    def _load_from_state_dict(self, state, prefix, *args, **kwargs):
        if prefix + "logvar" in state:  # a checkpoint from before --sigma-param: its logvar is raw (logvar mode)
            state[prefix + "raw"] = state.pop(prefix + "logvar")
        super()._load_from_state_dict(state, prefix, *args, **kwargs)

    @torch.no_grad()
    def set_logvar(self, logvar: torch.Tensor) -> None:
        """Set log Sigma (K, D) (tests): raw = softplus^-1(exp(-logvar)), or logvar itself."""
        s = torch.exp(-logvar)
        self.raw.copy_(s + torch.log(-torch.expm1(-s)) if self.param == "precision" else logvar)

    def sample(self, c: torch.Tensor, eps: torch.Tensor | None = None, detach: bool = True) -> torch.Tensor:
        """z~_s = mu_c + Sigma_c^(1/2) eps for labels c (B,), eps (B, D) ~ N(0, I) unless given."""
        mu, logvar = self.params(detach)
        eps = torch.randn_like(mu[c]) if eps is None else eps
        return mu[c] + torch.exp(0.5 * logvar[c]) * eps


class LatentClassifier(nn.Module):
    """C: z_u (B, z_u_dim) -> class logits (B, K); fc256 ReLU -> fc K (toy: fc64)."""

    def __init__(self, dim: int, n_classes: int, hidden: int = 256):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, n_classes))

    def forward(self, z_u: torch.Tensor) -> torch.Tensor:
        return self.net(z_u)


class LabelAwareEncoder(nn.Module):
    """Bao et al. 2017's encoder E(x, c): the trunk's features (B, F) and the one-hot label
    (B, K) into the (mu, logvar) head (B, 2 z_u_dim). The label enters at the last layer (our
    choice, cheap for many classes)."""

    def __init__(self, trunk: nn.Module, width: int, n_classes: int, z_dim: int):
        super().__init__()
        self.trunk, self.n_classes = trunk, n_classes
        self.head = nn.Linear(width + n_classes, 2 * z_dim)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        h = self.trunk(x)
        return self.head(torch.cat([h, F.one_hot(c, self.n_classes).to(h.dtype)], dim=1))


class ImageClassifier(nn.Module):
    """Bao et al.'s auxiliary classifier C(x) -> class logits (B, K), the encoders' trunk plus a
    linear layer; `features` (B, F) is the last hidden layer its feature matching reads."""

    def __init__(self, trunk: nn.Module, width: int, n_classes: int):
        super().__init__()
        self.trunk, self.linear = trunk, nn.Linear(width, n_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits (B, K), features (B, F))."""
        h = self.trunk(x)
        return self.linear(h), h


# ----------------------------------------------------------------------------------------------
# --- paper: losses ---
# ----------------------------------------------------------------------------------------------
def mixture_logits(z_s: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 6-7 for z_s (B, D) against K components mu, logvar (K, D): returns
    d (B, K) = 1/2 (z_s - mu_k)^T Sigma_k^-1 (z_s - mu_k) and log|Sigma_k| (K,) in nats."""
    d = 0.5 * ((z_s[:, None, :] - mu[None]) ** 2 * torch.exp(-logvar)[None]).sum(-1)
    return d, logvar.sum(-1)


def lgm_loss(z_s: torch.Tensor, c: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
             margin: float = 0.0, lambda_lkd: float = 0.1) -> dict:
    """The L-GM loss (Wan et al. 2018; paper eq. 8-9), batch means, nats.

    logit_k = -d_k - 1/2 log|Sigma_k| (+ log 1/K, which cancels); the true class's d_c is scaled
    by (1 + margin) inside the softmax only. L_cls = -log softmax(logit)_c via logsumexp,
    L_lkd = d_c + 1/2 log|Sigma_c| (-log N(z_s; mu_c, Sigma_c) without (D/2) log 2 pi),
    L_GM = L_cls + lambda_lkd L_lkd. Also returns 'accuracy', the share with argmax logit = c."""
    d, logdet = mixture_logits(z_s.float(), mu.float(), logvar.float())
    logits = -d - 0.5 * logdet
    # the true class by comparison and gather: F.one_hot checks its input's range and a boolean
    # mask counts its True entries, each a host-device sync on the GPU (four per outer iteration)
    true = torch.arange(d.shape[1], device=c.device)[None] == c[:, None]
    margined = torch.where(true, logits - margin * d, logits)
    l_cls = F.cross_entropy(margined, c)
    l_lkd = (d.gather(1, c[:, None])[:, 0] + 0.5 * logdet[c]).mean()
    return {"L_GM": l_cls + lambda_lkd * l_lkd, "L_cls": l_cls, "L_lkd": l_lkd,
            "accuracy": (logits.argmax(1) == c).float().mean()}


def uniform_cross_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Eq. 5: CE(softmax(logits), 1/K) = -1/K sum_k log softmax_k, batch mean (nats);
    minimal (log K) when C cannot tell the classes apart."""
    return -F.log_softmax(logits.float(), dim=1).mean(1).mean()


def hinge_losses(d_real: torch.Tensor, d_rec: torch.Tensor, d_gen: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 10-11 in the code's hinge form: (L_Dis, L_GD) from the scores (B,) of real images,
    reconstructions and prior samples."""
    l_dis = F.relu(1 - d_real).mean() + F.relu(1 + d_rec).mean() + F.relu(1 + d_gen).mean()
    return l_dis, -d_rec.mean() - d_gen.mean()


def reconstruction_terms(model: DisentangledVAE, x: torch.Tensor, c: torch.Tensor | None, cfg: Config):
    """z_s, z_u ~ q(z_u|x), x_hat = G(z_s, z_u) and {L_rec (eq. 2), L_KL (eq. 3)}, batch means."""
    mu_u, logvar_u = model.encode_u(x, c)
    z_u = common.reparameterize(mu_u, logvar_u)
    if model.kind == "lr-livae":
        mean_s, logvar_s = model.encode_s(x)
        z_s = mean_s if logvar_s is None else common.reparameterize(mean_s, logvar_s)
    else:
        z_s, logvar_s = model.code_s(x, c), None
    x_hat = model.decode(z_s.detach() if model.z_s_posterior == "detached" else z_s, z_u)
    t = {"q_z_s": (mean_s, logvar_s)} if logvar_s is not None else {}
    return z_s, z_u, x_hat, {**t, "L_rec": (x_hat.float() - x.float()).pow(2).mean(),                        # eq. 2
                             "L_KL": common.kl_normal_std(mu_u.float(), logvar_u.float()).mean() / cfg.z_u_dim}  # eq. 3


def feature_matching(f_real: torch.Tensor, f_fake: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
    """Bao et al. 2017's mean feature matching (per class when labels c (B,) are given): the
    squared distance between the batch means of features (B, F) of real and generated
    images, averaged over the F features (Bao: summed) and over the classes present."""
    if c is None:
        return (f_real.float().mean(0) - f_fake.float().mean(0)).pow(2).mean()
    return torch.stack([feature_matching(f_real[c == k], f_fake[c == k]) for k in c.unique()]).mean()


def bao_terms(model: DisentangledVAE, x: torch.Tensor, x_hat: torch.Tensor, c: torch.Tensor, z_u: torch.Tensor) -> dict:
    """The cvae-gan: Bao et al. 2017's losses (sec. 3) on real images x, reconstructions x_hat and samples
    x_tilde of the batch's own classes c (so the per-class matching compares like with like).
    L_Dis stays our hinge (eq. 10-11, the same Dis for both models); L_GD becomes G's mean feature
    matching on Dis' features and, per class, on the classifier's; L_pair is the pairwise feature
    matching of x and x_hat (E_u and G); L_aux the classifier's cross-entropy on real images. The
    classifier sees real and generated images in separate forwards (its BatchNorm statistics)."""
    x_tilde = model.decode(model.sample_s(c), torch.randn_like(z_u))
    scores, f_d = model.discriminator(torch.cat([x, x_hat, x_tilde]), torch.cat([c, c, c]), with_features=True)
    logits, f_c_x = model.image_classifier(x)
    f_c_rec, f_c_gen = model.image_classifier(torch.cat([x_hat, x_tilde]))[1].float().chunk(2)
    f_d_x, f_d_rec, f_d_gen = f_d.float().chunk(3)
    f_c_x = f_c_x.float()
    l_dis, _ = hinge_losses(*scores.float().chunk(3))
    return {"L_Dis": l_dis, "L_GD": feature_matching(f_d_x, f_d_gen) + feature_matching(f_c_x, f_c_gen, c),
            "L_pair": (f_d_x - f_d_rec).pow(2).mean() + (f_c_x - f_c_rec).pow(2).mean(),
            "L_aux": F.cross_entropy(logits.float(), c)}


def stage2_losses(model: DisentangledVAE, x: torch.Tensor, c: torch.Tensor, cfg: Config) -> dict:
    """One forward of the joint step and every loss (scalars). The mixture prior is held fixed
    (detached) here; `train_step` routes each objective to its own networks."""
    z_s, z_u, x_hat, t = reconstruction_terms(model, x, c, cfg)
    zero = torch.zeros((), device=x.device)
    t["L_lkd"] = t["L_adv"] = t["L_C"] = t["L_Dis"] = t["L_GD"] = t["L_pair"] = t["L_aux"] = zero
    if model.kind == "lr-livae":
        mu, logvar = model.prior.params(detach=True)
        if "q_z_s" in t:  # --z-s-posterior gaussian: KL(N(m, s) || N(mu_c, Sigma_c))
            t["L_lkd"] = common.kl_normal(*t.pop("q_z_s"), mu[c], logvar[c]).mean()
        else:
            t["L_lkd"] = lgm_loss(z_s, c, mu, logvar)["L_lkd"]                                   # eq. 7
        t["L_adv"] = uniform_cross_entropy(model.classifier(z_u))                             # eq. 5
        t["L_C"] = F.cross_entropy(model.classifier(z_u.detach()).float(), c)                 # eq. 4
    if model.bao:
        t.update(bao_terms(model, x, x_hat, c, z_u))
    elif model.discriminator is not None:                                                     # eq. 10-11
        c_tilde = torch.randint(model.n_classes, c.shape, device=c.device)
        x_tilde = model.decode(model.sample_s(c_tilde), torch.randn_like(z_u))
        scores = model.discriminator(torch.cat([x, x_hat, x_tilde]), torch.cat([c, c, c_tilde])).float()
        t["L_Dis"], t["L_GD"] = hinge_losses(*scores.chunk(3))
    # the objectives, each minimised w.r.t. its own networks only (sec. 3.5, as the code)
    t["encoders_and_decoder"] = (cfg.rec_weight * t["L_rec"] + cfg.kl_weight * t["L_KL"]
                                 + cfg.adv_weight * t["L_adv"] + cfg.lkd_weight * t["L_lkd"] + t["L_pair"])
    return t


# ----------------------------------------------------------------------------------------------
# --- paper: training step (two stages, sec. 3.5) ---
# ----------------------------------------------------------------------------------------------
def set_grads(loss: torch.Tensor, params: list, add: bool = False) -> None:
    """p.grad (+)= d loss / d p for exactly these parameters (no gradient reaches any other)."""
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    for p, g in zip(params, grads):
        if not add:
            p.grad = None
        common.accumulate_grad(p, torch.zeros_like(p) if g is None else g)


def stage1_step(model: DisentangledVAE, optimizers: dict, batches: list, cfg: Config, device,
                scaler: torch.amp.GradScaler | None = None) -> dict:
    """Stage 1: one Adam step of L_GM on E_s and the mixture's mu (optimizer 'gm') and
    Sigma (optimizer 'sigma', its own learning rate). `batches` holds the (x, c) micro-batches
    of the step (one unless --grad-accum); their gradients are averaged. `scaler`: fp16's loss
    scaling (a step whose gradients hold an inf is skipped)."""
    scaler = scaler or common.make_grad_scaler(torch.device(device), False)
    params = list(model.encoder_s.parameters()) + [model.prior.mu, model.prior.raw]
    for p in params:
        p.grad = None
    totals: dict = {}
    for x, c in batches:
        with common.autocast(device, cfg.amp):
            z_s, logvar_s = model.encode_s(x)
            z_s = z_s if logvar_s is None else common.reparameterize(z_s, logvar_s)
        t = lgm_loss(z_s, c, *model.prior.params(), cfg.margin, cfg.lambda_lkd)              # eq. 8-9
        set_grads(scaler.scale(t["L_GM"] / len(batches)), params, add=True)
        totals = {k: totals.get(k, 0.0) + v.detach() / len(batches) for k, v in t.items()}
    common.average_gradients(params)  # scaled: an inf on any rank reaches all, and all skip alike
    scaler.step(optimizers["gm"])
    scaler.step(optimizers["sigma"])
    scaler.update()
    return totals


def stage2_step(model: DisentangledVAE, optimizers: dict, batches: list, cfg: Config, device,
                forward=None, scaler: torch.amp.GradScaler | None = None) -> dict:
    """Stage 2: per micro-batch one forward, each objective's gradient w.r.t. its own networks;
    then simultaneous Adam steps. E_u, E_s and G share 10 L_rec (+ L_KL + L_adv for E_u, L_lkd
    for E_s: each term reaches only its own encoder); G alone takes L_GD, Dis alone L_Dis, C
    alone L_C. `scaler` as in `stage1_step`."""
    scaler, groups = scaler or common.make_grad_scaler(torch.device(device), False), model.groups()
    every = [p for ps in groups.values() for p in ps]
    for p in every:
        p.grad = None
    shared = groups["encoder_u"] + groups["decoder"] + groups.get("encoder_s", [])
    totals: dict = {}
    for x, c in batches:
        with common.autocast(device, cfg.amp):
            t = (forward or stage2_losses)(model, x, c, cfg)
        scaled = lambda name: scaler.scale(t[name] / len(batches))
        set_grads(scaled("encoders_and_decoder"), shared, add=True)
        if "discriminator" in groups:
            set_grads(scaled("L_GD"), groups["decoder"], add=True)
            set_grads(scaled("L_Dis"), groups["discriminator"], add=True)
        if "classifier" in groups and "L_C" in t:   # finetune's objectives have no L_C (no label)
            set_grads(scaled("L_C"), groups["classifier"], add=True)
        if "image_classifier" in groups:
            set_grads(scaled("L_aux"), groups["image_classifier"], add=True)
        n = len(batches)
        totals = {k: totals.get(k, 0.0) + v.detach() / n for k, v in t.items()}
    common.average_gradients(every)
    for name in groups:
        scaler.step(optimizers[name])
    scaler.update()
    return totals


def train_step(model: DisentangledVAE, optimizers: dict, batch_at, step: int, cfg: Config, device,
               forward=None, scaler: torch.amp.GradScaler | None = None) -> dict:
    """One outer iteration: n_gm stage-1 steps on fresh batches, then the joint stage-2 step on
    the last of them (the baseline has no stage 1). `batch_at(i)` is batch i of the run; a step
    takes --grad-accum consecutive ones."""
    k = cfg.grad_accum
    micro = lambda i: [batch_at(i * k + j) for j in range(k)]
    if model.kind == "lr-livae":
        for i in range(cfg.n_gm):
            batches = micro(step * cfg.n_gm + i)
            gm = stage1_step(model, optimizers, batches, cfg, device, scaler)
    else:
        batches = micro(step)
        gm = {"L_GM": torch.zeros((), device=device), "accuracy": torch.zeros((), device=device)}
    t = stage2_step(model, optimizers, batches, cfg, device, forward, scaler)
    if model.kind == "lr-livae" and cfg.c_steps > 1:
        adversary_steps(model, optimizers["classifier"], batches, cfg)
    keep = ("L_rec", "L_KL", "L_lkd", "L_adv", "L_C", "L_Dis", "L_GD") + (("L_pair", "L_aux") if model.bao else ())
    loss = t["encoders_and_decoder"] + t["L_GD"] + t["L_Dis"] + t["L_C"] + t.get("L_aux", 0.0) + gm["L_GM"]
    return {"loss": loss, "L_GM": gm["L_GM"], "acc_z_s": gm["accuracy"], **{k_: t[k_] for k_ in keep}}


def adversary_steps(model: DisentangledVAE, optimizer, batches: list, cfg: Config) -> None:
    """--c-steps: cfg.c_steps - 1 more steps of L_C (eq. 4) for C alone, each on a fresh draw of
    z_u ~ q(z_u|x) of the iteration's images (E_u as the joint step left it, no gradient)."""
    params = list(model.classifier.parameters())
    with torch.no_grad():
        codes = [(model.encode_u(x), c) for x, c in batches]
    for _ in range(cfg.c_steps - 1):
        for p in params:
            p.grad = None
        for (mu, logvar), c in codes:
            loss = F.cross_entropy(model.classifier(common.reparameterize(mu, logvar)).float(), c)
            set_grads(loss / len(codes), params, add=True)
        common.average_gradients(params)
        optimizer.step()


# ----------------------------------------------------------------------------------------------
# --- paper: sec. 3.6, generation for classes never seen with labels ---
# ----------------------------------------------------------------------------------------------
def mixture_moments(prior: GaussianMixturePrior) -> tuple[torch.Tensor, torch.Tensor]:
    """The mixture's total Gaussian, the prior of an image whose class is unknown (sec. 3.6):
    mu_bar = mean_k mu_k, sigma_bar^2 = mean_k (sigma_k^2 + mu_k^2) - mu_bar^2, each (D,), detached."""
    mu, logvar = prior.params(detach=True)
    mu_bar = mu.mean(0)
    return mu_bar, (logvar.exp() + mu ** 2).mean(0) - mu_bar ** 2


def finetune_losses(model: DisentangledVAE, x: torch.Tensor, cfg: Config, mu_bar: torch.Tensor,
                    var_bar: torch.Tensor) -> dict:
    """Stage 2 on unlabelled images (sec. 3.6): L_rec and L_KL as before, L_lkd against the total
    Gaussian (mu_bar, var_bar) instead of the class's component, no L_cls, L_C or L_adv (no label),
    and Dis without its projection term; prior samples z~_s ~ N(mu_bar, var_bar)."""
    z_s, z_u, x_hat, t = reconstruction_terms(model, x, None, cfg)
    if "q_z_s" in t:  # --z-s-posterior gaussian: KL(N(m, s) || N(mu_bar, var_bar)), as stage 2's L_lkd
        mean_s, logvar_s = t.pop("q_z_s")
        t["L_lkd"] = common.kl_normal(mean_s.float(), logvar_s.float(), mu_bar, var_bar.log()).mean()
    else:  # a point code: -log N(z_s; mu_bar, var_bar) + const
        t["L_lkd"] = (0.5 * (z_s.float() - mu_bar) ** 2 / var_bar).sum(1).mean() + 0.5 * var_bar.log().sum()
    t["L_Dis"] = t["L_GD"] = torch.zeros((), device=x.device)
    if model.discriminator is not None:
        x_tilde = model.decode(mu_bar + var_bar.sqrt() * torch.randn_like(z_s), torch.randn_like(z_u))
        t["L_Dis"], t["L_GD"] = hinge_losses(*model.discriminator(torch.cat([x, x_hat, x_tilde]), None).float().chunk(3))
    t["encoders_and_decoder"] = cfg.rec_weight * t["L_rec"] + cfg.kl_weight * t["L_KL"] + cfg.lkd_weight * t["L_lkd"]
    return t


def sigma_learning_rate(cfg: Config, step: int, steps_per_epoch: int) -> float:
    """Sigma's own rule: code, lr * 0.1^floor(step / (10 epochs)); paper B.4, lr * 0.01 after
    2 epochs; fixed (the code's toy runs), lr. An epoch is steps_per_epoch outer iterations, as
    the code counts it."""
    epoch, lr = step // max(steps_per_epoch, 1), cfg.lr * cfg.sigma_lr_scale
    if cfg.sigma_lr == "fixed":
        return lr
    if cfg.sigma_lr == "paper":
        return lr * (0.01 if epoch >= 2 else 1.0)
    return lr * 0.1 ** (epoch // 10)


def make_optimizers(model: DisentangledVAE, cfg: Config, device) -> dict:
    """Adam (betas 0, 0.9) per parameter group, plus stage 1's 'gm' (E_s and mu, an Adam of its
    own as in the code) and 'sigma'."""
    adam = lambda params: torch.optim.Adam(params, lr=cfg.lr, betas=(0.0, 0.9), fused=device.type == "cuda")
    optimizers = {name: adam(params) for name, params in model.groups().items()}
    if model.kind == "lr-livae":
        optimizers["gm"] = adam(list(model.encoder_s.parameters()) + [model.prior.mu])
        optimizers["sigma"] = adam([model.prior.raw])
    return optimizers


# ----------------------------------------------------------------------------------------------
# --- paper: figures (return images; the caller saves them) ---
# ----------------------------------------------------------------------------------------------
def noise(n: int, dim: int, g: torch.Generator, device) -> torch.Tensor:
    return torch.randn(n, dim, generator=g).to(device)


@torch.no_grad()
def class_samples(model: DisentangledVAE, classes: list, n: int, g: torch.Generator, device) -> torch.Tensor:
    """Fig. 3/8: n samples per class, z~_s ~ p(z_s|c), z~_u ~ N(0, I). (len(classes) * n, ...)."""
    c = torch.tensor(classes, device=device).repeat_interleave(n)
    z_s = model.sample_s(c, noise(len(c), model.z_s_dim, g, device))
    return model.decode(z_s, noise(len(c), model.z_u_dim, g, device))


@torch.no_grad()
def swap_grid(model: DisentangledVAE, rows: tuple, cols: tuple) -> torch.Tensor:
    """Fig. 6: cell (i, j) = G(z_s of row image i, z_u = mu_u of column image j). rows/cols are
    (images (R, C, H, W), labels (R,)). Returns ((R + 1) * (C + 1), ...): the first row shows
    the column images, the first column the row images, the corner is white."""
    (xr, cr), (xc, cc) = rows, cols
    z_s, z_u = model.code_s(xr, cr), model.encode_u(xc, cc)[0]
    cells = model.decode(z_s.repeat_interleave(len(xc), 0), z_u.repeat(len(xr), 1)).view(len(xr), len(xc), *xr.shape[1:])
    top = torch.cat([torch.ones_like(xr[:1]), xc])[None]
    body = torch.cat([xr[:, None], cells], dim=1)
    return torch.cat([top, body]).flatten(0, 1)


@torch.no_grad()
def interpolate_z_s(model: DisentangledVAE, classes: list, steps: int, g: torch.Generator, device) -> torch.Tensor:
    """Fig. 4a: z_u fixed; eps_t = t eps_1 + (1 - t) eps_2, z_s = mu_c + Sigma_c^(1/2) eps_t;
    rows = classes, columns share eps_t. (len(classes) * steps, ...)."""
    e1, e2, z_u = noise(1, model.z_s_dim, g, device), noise(1, model.z_s_dim, g, device), noise(1, model.z_u_dim, g, device)
    t = torch.linspace(0, 1, steps, device=device)[:, None]
    eps = (t * e1 + (1 - t) * e2).repeat(len(classes), 1)
    c = torch.tensor(classes, device=device).repeat_interleave(steps)
    return model.decode(model.sample_s(c, eps), z_u.expand(len(c), -1))


@torch.no_grad()
def interpolate_z_u(model: DisentangledVAE, classes: list, steps: int, g: torch.Generator, device) -> torch.Tensor:
    """Fig. 4b: z_s ~ p(z_s|c) fixed per row; z_u moves linearly between two N(0, I) draws."""
    c = torch.tensor(classes, device=device)
    z_s = model.sample_s(c, noise(len(c), model.z_s_dim, g, device)).repeat_interleave(steps, 0)
    u1, u2 = noise(1, model.z_u_dim, g, device), noise(1, model.z_u_dim, g, device)
    t = torch.linspace(0, 1, steps, device=device)[:, None]
    return model.decode(z_s, (t * u1 + (1 - t) * u2).repeat(len(classes), 1))


@torch.no_grad()
def z_u_effects(model: DisentangledVAE, x: torch.Tensor, c: torch.Tensor, span: float = 2.0) -> torch.Tensor:
    """Sec. 4.3: how much each z_u dimension changes the image, (z_u_dim,): the mean absolute pixel
    change ([-1, 1] units) between setting that dimension of mu_u(x) to -span and to +span, the
    others and z_s kept, over the images x (B, ...)."""
    z_s, mu_u = model.code_s(x, c), model.encode_u(x, c)[0]
    effects = []
    for d in range(model.z_u_dim):
        lo, hi = mu_u.clone(), mu_u.clone()
        lo[:, d], hi[:, d] = -span, span
        effects.append((model.decode(z_s, hi) - model.decode(z_s, lo)).abs().mean())
    return torch.stack(effects)


@torch.no_grad()
def traverse_z_u(model: DisentangledVAE, x: torch.Tensor, c: torch.Tensor, top: int = 6, steps: int = 9,
                 span: float = 2.0) -> tuple[torch.Tensor, list]:
    """Sec. 4.3's traversal: the `top` z_u dimensions by `z_u_effects` (over x), each swept from
    -span to +span on the first image of x, a row per dimension. Returns the images
    (top * steps, C, H, W) and the dimensions, strongest first."""
    dims = z_u_effects(model, x, c, span).argsort(descending=True)[:top].tolist()
    z_s, mu_u = model.code_s(x[:1], c[:1]), model.encode_u(x[:1], c[:1])[0]
    values = torch.linspace(-span, span, steps, device=x.device)
    rows = []
    for d in dims:
        z_u = mu_u.repeat(steps, 1)
        z_u[:, d] = values
        rows.append(model.decode(z_s.expand(steps, -1), z_u))
    return torch.cat(rows), dims


def mask_box(name: str, crop: tuple[int, int, int, int] | None) -> tuple[float, float, float, float]:
    """The FACE_MASKS box `name` as (top, bottom, left, right) fractions of the model's image. A
    face part is mapped from source pixels through `crop` (top, left, height, width); without a
    crop (images not from aligned CelebA) it is placed as in the default CelebA crop."""
    top, bottom, left, right = FACE_MASKS[name]
    if name not in FACE_PARTS:
        return top, bottom, left, right
    ct, cl, ch, cw = crop or CELEBA_CROP
    clip = lambda v: min(max(v, 0.0), 1.0)
    return clip((top - ct) / ch), clip((bottom - ct) / ch), clip((left - cl) / cw), clip((right - cl) / cw)


def mask_for(name: str, shape: tuple, device, crop: tuple[int, int, int, int] | None = None) -> torch.Tensor:
    """M (1, 1, H, W): 1 on kept pixels, 0 inside the box `name` (`mask_box`)."""
    h, w = shape[-2:]
    top, bottom, left, right = mask_box(name, crop)
    m = torch.ones(1, 1, h, w, device=device)
    m[..., round(top * h):round(bottom * h), round(left * w):round(right * w)] = 0
    return m


@torch.no_grad()
def inpaint(model: DisentangledVAE, x: torch.Tensor, c: torch.Tensor, masks: list,
            crop: tuple[int, int, int, int] | None = None) -> torch.Tensor:
    """Fig. 7: x_m = M x (hidden pixels 0, mid-grey), x_out = M x + (1 - M) G(E_s(x_m), mu_u(x_m)).
    Lr-LiVAE needs no label; the baseline uses c. Rows per image: x, then (x_m, x_out) per mask."""
    columns = [x]
    for name in masks:
        m = mask_for(name, x.shape, x.device, crop)
        x_m = x * m
        x_hat = model.decode(model.code_s(x_m, c), model.encode_u(x_m, c)[0])
        columns += [x_m, m * x + (1 - m) * x_hat]
    return torch.stack(columns, dim=1).flatten(0, 1)


TOY_COLOURS = ((40, 160, 40), (200, 40, 40), (40, 70, 200))  # green, red, blue as the paper


def scatter_panel(points: np.ndarray, labels: np.ndarray, title: str, size: int = 240) -> np.ndarray:
    """Points (N, 2) in [-3.6, 3.6] x [-2.2, 1.4], coloured by label, as an RGB array."""
    img = Image.new("RGB", (size, size + 16), "white")
    draw = ImageDraw.Draw(img)
    draw.text((4, 2), title, fill=(0, 0, 0))
    for (px, py), k in zip(points, labels):
        u, v = (px + 3.6) / 7.2 * size, 16 + (1.4 - py) / 3.6 * size
        draw.ellipse((u - 1, v - 1, u + 1, v + 1), fill=TOY_COLOURS[int(k) % 3])
    return np.asarray(img)


# ----------------------------------------------------------------------------------------------
# --- plumbing: data ---
# ----------------------------------------------------------------------------------------------
def resolve_defaults(cfg: Config) -> Config:
    """Fill the dataset-dependent defaults (0 / '' fields) and check the values."""
    faces = cfg.dataset in ("celeba", "folder")
    dims = {"mnist": (32, 100), "toy": (2, 2)}.get(cfg.dataset, (512, 512))
    toy_epoch = len(data.toy_split(cfg.toy_points, "train")) // max(cfg.batch_size, 1)  # checked below
    steps = cfg.steps if cfg.steps >= 0 else 50 * toy_epoch if cfg.dataset == "toy" else 52_000
    cfg = dataclasses.replace(
        cfg, data_dir=os.path.abspath(cfg.data_dir or os.path.join("data", cfg.dataset)),
        out=cfg.out or os.path.join("runs", f"dvae-{cfg.dataset}-{cfg.model}"), steps=steps,
        sigma_lr=cfg.sigma_lr or ("fixed" if cfg.dataset == "toy" else "code"),
        # Lr-LiVAE's measured deviations (docstring); the cVAE-GAN keeps the code's values
        sigma_lr_scale=(cfg.sigma_lr_scale if cfg.sigma_lr_scale >= 0 else
                        20.0 if cfg.model == "lr-livae" and cfg.dataset != "toy" else 1.0),
        kl_weight=cfg.kl_weight if cfg.kl_weight >= 0 else 10.0 if cfg.model == "lr-livae" else 1.0,
        adv_weight=cfg.adv_weight if cfg.adv_weight >= 0 else 10.0 if cfg.model == "lr-livae" else 1.0,
        z_s_posterior=cfg.z_s_posterior or ("gaussian" if cfg.model == "lr-livae" else "point"),
        image_size=cfg.image_size or (64 if faces else 28 if cfg.dataset == "mnist" else 0),
        z_s_dim=cfg.z_s_dim or dims[0], z_u_dim=cfg.z_u_dim or dims[1])
    common.check_run_config(cfg)
    checks = [(cfg.dataset != "mnist" or cfg.image_size == 28, "the MNIST networks need --image-size 28"),
              (not faces or cfg.image_size % 32 == 0,
               f"the VGG16-BN face networks need --image-size a multiple of 32, got {cfg.image_size}"),
              (cfg.n_gm >= 1, "--n-gm must be >= 1"),
              (cfg.z_s_dim >= 1 and cfg.z_u_dim >= 1, "--z-s-dim and --z-u-dim must be >= 1"),
              (cfg.diversity_samples >= 2, "--diversity-samples must be >= 2"),
              (cfg.model != "cvae-gan" or cfg.gan, "--model cvae-gan's feature matching needs the discriminator: "
                                                   "drop --no-gan")]
    common.require(checks)
    parse_crop(cfg)
    return cfg


def parse_crop(cfg: Config) -> tuple[int, int, int, int] | None:
    return common.parse_crop(cfg.crop, CELEBA_CROP if cfg.dataset == "celeba" else None)


def load_split(cfg: Config, split: str, verbose: bool = True, which: str = "seen") -> data.ImageSet:
    """The ImageSet of `split` with a 'class' label (toy: the points, 80/20 cut per class),
    restricted to the seen classes (or with which='unseen' to --unseen-classes)."""
    return select_classes(load_all_classes(cfg, split, verbose), cfg.unseen_classes, which)


def select_classes(dataset: data.ImageSet, unseen: str, which: str) -> data.ImageSet:
    """Only the classes not in `unseen` (which='seen') or only those in it (which='unseen'),
    labels renumbered 0..K'-1 in the data set's class order. Raises ValueError naming any
    unseen class the data set does not have."""
    wanted = [u.strip() for u in unseen.split(",") if u.strip()]
    if not wanted:
        return dataset
    names = list(dataset.names["class"])
    missing = [u for u in wanted if u not in names]
    if missing:
        raise ValueError(f"--unseen-classes {', '.join(missing)}: not classes of this data set "
                         f"(it has {len(names)}: {', '.join(names[:12])}{', ...' if len(names) > 12 else ''})")
    kept = [n for n in names if (n in wanted) == (which == "unseen")]
    if not kept and which == "seen":
        raise ValueError(f"--unseen-classes holds every class of this data set ({len(names)}): no seen class is "
                         f"left to train on; hold out fewer")
    renumber = np.full(len(names), -1)
    renumber[[names.index(n) for n in kept]] = np.arange(len(kept))
    labels = renumber[dataset.labels["class"]]
    keep = np.flatnonzero(labels >= 0)
    files = [dataset.files[i] for i in keep] if dataset.files else []
    return data.ImageSet(dataset.images[keep], {"class": labels[keep]}, {"class": kept}, files,
                         f"{dataset.description}; {which} classes only: {len(kept)} classes, {len(keep)} images")


def load_all_classes(cfg: Config, split: str, verbose: bool = True) -> data.ImageSet:
    if cfg.dataset == "toy":
        points, labels = data.toy_data(cfg.toy_points, cfg.seed)
        keep = data.toy_split(cfg.toy_points, split)
        return data.ImageSet(points[keep], {"class": labels[keep]}, {"class": ["left", "middle", "right"]}, [],
                             f"toy {split}: {len(keep)} points on three half circles")
    if cfg.dataset == "celeba":
        return data.load_celeba_identities(cfg.data_dir, split, cfg.image_size, parse_crop(cfg), cfg.cache_dir or None,
                                           cfg.min_class_images, verbose)
    dataset = data.load_dataset(cfg.dataset, cfg.data_dir, split, cfg.image_size, parse_crop(cfg),
                                cfg.cache_dir or None, verbose)
    if len(dataset.names["class"]) < 2:  # e.g. a CelebA folder given as --dataset folder
        raise ValueError(f"{cfg.data_dir} holds {len(dataset.names['class'])} class folder(s) "
                         f"({', '.join(dataset.names['class'])}); a label-conditioned model needs at least 2, one "
                         f"sub-folder of images per class (CelebA's own layout is --dataset celeba)")
    return dataset


def make_batches(cfg: Config, train_set: data.ImageSet, device, rank: int, world: int) -> data.Batches:
    kind = data.ToyBatches if cfg.dataset == "toy" else data.Batches
    return kind(train_set, cfg.batch_size, cfg.seed, device, rank, world, label_keys=("class",),
                on_device=False if cfg.dataset == "toy" else None, channels_last=device.type == "cuda")


def batch_reader(cfg: Config, batches: data.Batches):
    """batch_at(i) -> (x, c): batch i of the run, flipped left-right at random for faces; the
    flips are seeded by i, so a resumed run sees the same batches."""
    flip = cfg.flip and cfg.dataset in ("celeba", "folder")

    def batch_at(i: int):
        x, labels = batches.get(i)
        if flip:
            coin = torch.rand(len(x), generator=torch.Generator().manual_seed(cfg.seed * 7_919 + i)) < 0.5
            # non_blocking: a blocking host-to-device copy would wait for the GPU every batch
            x = torch.where(coin.to(x.device, non_blocking=True)[:, None, None, None], x.flip(3), x)
        return x, labels["class"]
    return batch_at


def heldout(cfg: Config, device, n: int | None = None,
            which: str = "seen") -> tuple[torch.Tensor, torch.Tensor, data.ImageSet]:
    """n (default --eval-images) held-out images (or toy points) of the seen (or unseen) classes
    with labels: a seeded subset stratified by class (the splits are stored class by class, so the
    first n would hold only the first few classes)."""
    held = load_split(cfg, "test", verbose=False, which=which)
    index = stratified_subset(held.labels["class"], n or cfg.eval_images, cfg.seed)
    return model_inputs(cfg, held.images[index], device), torch.from_numpy(held.labels["class"][index]).to(device), held


def model_inputs(cfg: Config, images: np.ndarray, device) -> torch.Tensor:
    """uint8 images (N, H, W, C) -> (N, C, H, W) in [-1, 1] on device; toy points pass as they are."""
    if cfg.dataset == "toy":
        return torch.from_numpy(np.array(images)).to(device)
    return data.to_float_images(torch.from_numpy(np.array(images)).to(device))


def refresh_batchnorm(cfg: Config, model: DisentangledVAE, device) -> int:
    """Population BatchNorm statistics over --bn-images training images (a seeded subset), each
    reconstructed through (E_s, E_u, G) in train mode; sets and returns model.bn_stats_images.
    Skipped with --eval-bn batch, which uses each batch's own statistics instead."""
    if cfg.bn_images > 0 and cfg.eval_bn == "population":
        train_set = load_split(cfg, "train", verbose=False)
        pick = np.sort(np.random.default_rng(cfg.seed).permutation(len(train_set))[:cfg.bn_images])
        x = model_inputs(cfg, train_set.images[pick], device)
        c = torch.from_numpy(train_set.labels["class"][pick]).to(device)

        def reconstruct(xb: torch.Tensor, cb: torch.Tensor) -> torch.Tensor:
            mu_u, logvar_u = model.encode_u(xb, cb)
            return model.decode(model.code_s(xb, cb), common.reparameterize(mu_u, logvar_u))

        # z_u's draws seeded: the same statistics, hence the same eval numbers, whatever ran before
        with torch.random.fork_rng(devices=[device] if torch.device(device).type == "cuda" else []):
            torch.manual_seed(cfg.seed)
            model.bn_stats_images = common.recompute_batchnorm(
                model, zip(x.split(cfg.batch_size), c.split(cfg.batch_size)), reconstruct, total=len(x))
    return getattr(model, "bn_stats_images", 0)


def evaluation_mode(cfg: Config, model: DisentangledVAE) -> DisentangledVAE:
    """model.eval(); with --eval-bn batch, BatchNorm layers stay in training mode (batch
    statistics, as the official code evaluates) with momentum 0, so their running statistics
    are left as they are."""
    model.eval()
    if cfg.eval_bn == "batch":
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.train()
                m.momentum = 0.0
    return model


def curve_keys(cfg: Config) -> list:
    keys = ["L_rec", "L_KL"]
    keys += ["L_GM", "acc_z_s", "L_lkd", "L_adv", "L_C"] if cfg.model == "lr-livae" else []
    return keys + (["L_Dis", "L_GD"] if cfg.gan else []) + (["L_pair", "L_aux"] if cfg.model == "cvae-gan" else []) + ["images_per_s"]


# ----------------------------------------------------------------------------------------------
# --- plumbing: training loop ---
# ----------------------------------------------------------------------------------------------
def train(cfg: Config, explicit: set) -> None:
    """Train into cfg.out or resume it there exactly, then figures and eval.json (toy: Fig. 2's points)."""
    rank, world, local_rank = common.init_distributed()
    device = common.pick_device(cfg.device, local_rank)
    cfg, state = common.checkpoint_to_resume(cfg, explicit, SCRIPT, RUN_FIELDS, resolve_defaults)  # locks cfg.out
    train_set, names = training_classes(cfg, state)  # first: the classes size the model
    common.seed_everything(cfg.seed)  # the same initial weights on every rank
    model = DisentangledVAE(cfg, len(names)).to(device, memory_format=common.memory_format(device, cfg.dataset != "toy"))
    optimizers, scaler = make_optimizers(model, cfg, device), common.make_grad_scaler(device, cfg.amp)
    start = common.restore_training_state(state, {"model": model}, optimizers, scaler, cfg.seed)  # 0 for a fresh run
    batches = make_batches(cfg, train_set, device, rank, world)
    batch_at, epoch_steps = batch_reader(cfg, batches), batches.steps_per_epoch
    meter = common.start_run_folder(cfg, train_set, model, start, device, cfg.batch_size * cfg.grad_accum * world
                                    * (cfg.n_gm if cfg.model == "lr-livae" else 1), f"{cfg.model}, {len(names)} classes: ")
    forward = torch.compile(stage2_losses) if cfg.compile else stage2_losses
    bad = torch.zeros((), dtype=torch.bool, device=device)  # a NaN or inf loss so far; read only at log and save steps
    with common.StopSignal() as stop:
        for step in range(start + 1, cfg.steps + 1):  # `step` outer iterations done after this one
            for group in optimizers["sigma"].param_groups if "sigma" in optimizers else ():
                group["lr"] = sigma_learning_rate(cfg, step - 1, epoch_steps)
            if cfg.dataset == "toy" and (step - 1) % (10 * epoch_steps) == 0 and common.is_main():
                save_toy_snapshot(cfg, model, (step - 1) // epoch_steps, device)
            terms = train_step(model, optimizers, batch_at, step - 1, cfg, device, forward, scaler)
            bad |= ~torch.isfinite(terms["loss"])
            if step % cfg.log_every == 0 or step == cfg.steps:
                common.check_finite(bad, step, cfg.out)
                meter.log(step, terms)
            stopping = stop.poll(step, device)
            if step % cfg.ckpt_every == 0 or step == cfg.steps or stopping:
                common.check_finite(bad, step, cfg.out)  # a NaN never overwrites the last good checkpoint
                with meter.paused():
                    common.save_training_state(cfg, SCRIPT, step, {"model": model}, optimizers, scaler, curve_keys(cfg),
                                               extra={"n_classes": len(names), "class_names": names})
            if stopping:
                stop.exit(step)
    if cfg.dataset == "toy" and common.is_main():
        save_toy_snapshot(cfg, model, cfg.steps // epoch_steps, device)
    common.cleanup_distributed()  # the figures and eval below run on rank 0 alone
    if rank == 0:
        finish(cfg, model, names, device)


def finish(cfg: Config, model: DisentangledVAE, names: list, device) -> None:
    """After training (rank 0), after the last checkpoint, so a resumed run still continues
    exactly: population BatchNorm statistics, the figures and eval.json."""
    refresh_batchnorm(cfg, model, device)
    draw_figures(cfg, evaluation_mode(cfg, model), names, device)
    evaluate([(cfg, model, names)], device)


def training_classes(cfg: Config, state: dict | None) -> tuple[data.ImageSet, list]:
    """The training split and its class names; the held-out split is decoded now, so a broken
    held-out image stops the run before training. ValueError when the checkpoint being resumed
    has another number of classes than the data now, or was trained with removed networks."""
    refuse_removed_networks(state)
    train_set = load_split(cfg, "train", verbose=common.is_main())
    load_split(cfg, "test", verbose=False)
    names = train_set.names["class"]
    if state is not None and state["extra"]["n_classes"] != len(names):
        raise ValueError(f"{cfg.out}/checkpoint.pt has {state['extra']['n_classes']} classes but the data now has "
                         f"{len(names)}; pass --fresh or another --out")
    return train_set, names


def finetune(cfg: Config, explicit: set) -> str:
    """Sec. 3.6: train a run made with --unseen-classes --finetune-steps steps on the unseen classes'
    images without labels (`finetune_losses` through `stage2_step`) into OUT/finetune, then draw
    `draw_unseen_figures`; returns that folder. ValueError for a baseline or no unseen classes."""
    device = common.pick_device(cfg.device)
    run_cfg, model, names = load_models(cfg, explicit, device)[0]
    if not run_cfg.unseen_classes or model.kind != "lr-livae":
        raise ValueError("finetune needs an lr-livae run trained with --unseen-classes (e.g. --dataset mnist "
                         "--unseen-classes 7,8,9), so that some classes were never seen with labels")
    unseen = load_split(run_cfg, "train", verbose=False, which="unseen")
    out = os.path.join(run_cfg.out, "finetune")
    common.lock_run_folder(out)
    common.seed_everything(run_cfg.seed)
    batch_at = batch_reader(run_cfg, make_batches(run_cfg, unseen, device, 0, 1))
    optimizers, moments = make_optimizers(model, run_cfg, device), mixture_moments(model.prior)
    scaler = common.make_grad_scaler(device, run_cfg.amp)
    start = resume_finetune(cfg, out, model, optimizers, scaler)
    model.train()
    print(f"finetune: {unseen.description}; {cfg.finetune_steps} steps, labels unused"
          + (f"; resumed at step {start}" if start else ""))
    save = lambda step: common.save_training_state(
        dataclasses.replace(run_cfg, out=out), SCRIPT, step, {"model": model}, optimizers, scaler, (), extra={
            "n_classes": model.n_classes, "class_names": names, "finetuned_on": unseen.names["class"],
            "finetune_steps": cfg.finetune_steps})
    # stage 2's step and routing, with the unlabelled objectives (E_s, E_u, G, Dis learn; C and the mixture do not)
    forward = lambda model_, x, c, cfg_: finetune_losses(model_, x, cfg_, *moments)
    with common.StopSignal() as stop:
        for step in range(start, cfg.finetune_steps):
            t = stage2_step(model, optimizers, [batch_at(step)], run_cfg, device, forward, scaler)
            if (step + 1) % run_cfg.log_every == 0 or step + 1 == cfg.finetune_steps:
                print(f"finetune step {step + 1}/{cfg.finetune_steps} | "
                      + " ".join(f"{k} {t[k].item():.4g}" for k in ("L_rec", "L_KL", "L_lkd", "L_Dis", "L_GD")))
            if stop.raised and step + 1 < cfg.finetune_steps:
                save(step + 1)
                stop.exit(step + 1, "finetune step")
    refresh_batchnorm(run_cfg, model, device)
    evaluation_mode(run_cfg, model)
    save(cfg.finetune_steps)
    draw_unseen_figures(dataclasses.replace(run_cfg, out=out), model, device)
    return out


def resume_finetune(cfg: Config, out: str, model: DisentangledVAE, optimizers: dict, scaler) -> int:
    """The finetune step to start from: 0 for a first finetune or --fresh; an interrupted one's
    step, restored exactly (weights, Adam moments, RNG). A finished one (or one saved before
    finetune could resume) is refused without --fresh, so a rerun never replaces it silently."""
    path = os.path.join(out, "checkpoint.pt")
    if cfg.fresh or not os.path.exists(path):
        return 0
    state = common.load_checkpoint(path, SCRIPT, common.RUN_ENTRIES)
    done = state["step"]
    if "optimizers" not in state or done >= cfg.finetune_steps:
        raise ValueError(f"{path} already holds a finetune of {done} steps: pass --fresh to finetune again from "
                         f"the run's own checkpoint (it is replaced), or a larger --finetune-steps to go on from it"
                         if "optimizers" in state else f"{path} holds an earlier finetune (saved without its "
                         f"optimizer state, so it cannot be resumed): pass --fresh to finetune again")
    return common.restore_training_state(state, {"model": model}, optimizers, scaler, 0)


@torch.no_grad()
def draw_unseen_figures(cfg: Config, model: DisentangledVAE, device) -> list:
    """Sec. 3.6's figure on held-out images of the unseen classes: the swap grid (z_s from the
    rows, z_u from the columns) and z_s interpolated between two of them (z_u of the first)."""
    if cfg.dataset == "toy":  # points, not images
        return []
    x, c, _ = heldout(cfg, device, 400, which="unseen")
    rows, cols = distinct_classes(c, 8), distinct_classes(c, 8, skip=1)
    fig_dir = os.path.join(cfg.out, "figures")
    written = [os.path.join(fig_dir, "unseen_swap.png"), os.path.join(fig_dir, "unseen_interpolate_z_s.png")]
    common.save_grid(swap_grid(model, (x[rows], c[rows]), (x[cols], c[cols])), written[0], len(cols) + 1)
    a, b = x[rows], x[cols]
    z_a, z_b, z_u = model.code_s(a), model.code_s(b), model.encode_u(a)[0]
    steps = torch.linspace(0, 1, 8, device=device)
    z_s = torch.stack([(1 - w) * z_a + w * z_b for w in steps], 1).flatten(0, 1)
    common.save_grid(model.decode(z_s, z_u.repeat_interleave(len(steps), 0)), written[1], len(steps))
    print("figures: " + ", ".join(written))
    return written


# ----------------------------------------------------------------------------------------------
# --- plumbing: figures, eval, sample ---
# ----------------------------------------------------------------------------------------------
def save_toy_snapshot(cfg: Config, model: DisentangledVAE, epoch: int, device, n: int = 300) -> None:
    """Generated toy points, n per class, at `epoch` -> OUT/toy/epoch_EEE.npz (Fig. 2's panels)."""
    was_training = model.training
    model.eval()
    g = torch.Generator().manual_seed(cfg.seed + 5)
    points = class_samples(model, list(range(model.n_classes)), n, g, device).cpu().numpy()
    model.train(was_training)
    with common.atomic_write(os.path.join(cfg.out, "toy", f"epoch_{epoch:03d}.npz"), "wb") as f:
        np.savez(f, points=points, labels=np.repeat(np.arange(model.n_classes), n))


def draw_figures(cfg: Config, model: DisentangledVAE, names: list, device) -> list:
    """Every figure of the paper this data allows, into OUT/figures; returns the paths."""
    fig_dir, g, written = os.path.join(cfg.out, "figures"), torch.Generator().manual_seed(cfg.seed), []
    progress = common.Progress("figures", (6 if model.kind == "lr-livae" else 5) + common.logged(cfg.out), "figures",
                               announce=cfg.dataset != "toy")

    def save(name: str, images: torch.Tensor, nrow: int) -> None:
        written.append(os.path.join(fig_dir, name))
        common.save_grid(images, written[-1], nrow)
        progress.update()

    if cfg.dataset == "toy":
        return draw_toy_figure(cfg, fig_dir)
    classes = list(range(min(10, model.n_classes)))
    save("samples_per_class.png", class_samples(model, classes, 10, g, device), 10)
    if model.kind == "lr-livae":
        save("fig4a_interpolate_z_s.png", interpolate_z_s(model, classes, 10, g, device), 10)
    save("fig4b_interpolate_z_u.png", interpolate_z_u(model, classes, 10, g, device), 10)
    x, c, _ = heldout(cfg, device, 4000)
    rows, cols = distinct_classes(c, 8), distinct_classes(c, 8, skip=1)
    # held-out images of seen classes; classes never seen with labels: `finetune` (sec. 3.6)
    save("fig6_swap.png", swap_grid(model, (x[rows], c[rows]), (x[cols], c[cols])), len(cols) + 1)
    traversal, dims = traverse_z_u(model, x[rows], c[rows])
    save("sec4_3_traverse_z_u.png", traversal, 9)   # rows: the z_u dimensions that change the image most
    common.print0(f"sec. 4.3 traversal: z_u dimensions {dims}, strongest first")
    masks = list(FACE_MASKS) if cfg.dataset != "mnist" else ["right_half", "bottom_half"]
    save("fig7_inpainting.png", inpaint(model, x[rows], c[rows], masks, parse_crop(cfg)), 1 + 2 * len(masks))
    written += common.draw_curves(cfg.out, curve_keys(cfg))
    progress.update(common.logged(cfg.out))
    common.print0("figures: " + ", ".join(os.path.relpath(p, cfg.out) for p in written))
    return written


def distinct_classes(c: torch.Tensor, n: int, skip: int = 0) -> torch.Tensor:
    """Indices of up to n images of different classes (the (skip + 1)-th image of each)."""
    seen, picks = {}, []
    for i, k in enumerate(c.tolist()):
        seen[k] = seen.get(k, -1) + 1
        if seen[k] == skip and len(picks) < n:
            picks.append(i)
    return torch.tensor(picks if picks else list(range(min(n, len(c)))), device=c.device)


def draw_toy_figure(cfg: Config, fig_dir: str) -> list:
    """Fig. 2: the real points, then the generated ones at each saved epoch, side by side."""
    points, labels = data.toy_data(cfg.toy_points, cfg.seed)
    panels = [scatter_panel(points, labels, "real")]
    toy_dir = os.path.join(cfg.out, "toy")
    for name in sorted(os.listdir(toy_dir)) if os.path.isdir(toy_dir) else []:
        snap = np.load(os.path.join(toy_dir, name))
        panels.append(scatter_panel(snap["points"], snap["labels"], f"{cfg.model} epoch {int(name[6:9])}"))
    path = os.path.join(fig_dir, "fig2_toy.png")
    common.save_png(common.hstack_panels(panels), path)
    common.print0(f"figures: {os.path.relpath(path, cfg.out)}")
    return [path]


@torch.no_grad()
def encode_all(model: DisentangledVAE, x: torch.Tensor, c: torch.Tensor, chunk: int = 250):
    """(z_s, mu_u, logvar_u) of every image, in chunks."""
    progress, out = common.Progress("encoding", len(x), "images"), []
    for xb, cb in zip(x.split(chunk), c.split(chunk)):
        out.append((model.code_s(xb, cb), *model.encode_u(xb, cb)))
        progress.update(len(xb))
    return [torch.cat(parts).float() for parts in zip(*out)]


@torch.no_grad()
def stratified_subset(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Indices of n items (all if fewer) drawn at random with every class as evenly represented
    as its size allows: seeded, in increasing order. For class-sorted splits, where the first n
    would cover only the first few classes."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    rank = np.empty(len(labels), np.int64)   # position of each item within its class, in `order`
    for k in np.unique(labels):
        members = order[labels[order] == k]
        rank[members] = np.arange(len(members))
    chosen = order[np.argsort(rank[order], kind="stable")][:n]
    return np.sort(chosen)


# Wang, Simoncelli & Bovik 2003's five scale weights. Within-class MS-SSIM as a diversity measure
# is Odena et al. 2017 (AC-GAN, sec. 4.2), used by Bao et al. 2017 and by Zheng & Sun 2019's
# Tables 2 and 6. A scale is used while the image at that scale still holds the 11x11 window, and the weights
# of the scales used are renormalised: 64 px uses 3 scales (64, 32, 16), weights 0.0711, 0.4530,
# 0.4760; 32 px uses 2 (0.1356, 0.8644); 28 px (MNIST) 2; 128 px 4.
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def gaussian_filter(x: torch.Tensor, size: int, sigma: float) -> torch.Tensor:
    """Separable 'valid' Gaussian blur of x (B, C, H, W)."""
    t = torch.arange(size, dtype=x.dtype, device=x.device) - (size - 1) / 2
    w = torch.exp(-t ** 2 / (2 * sigma ** 2))
    w = (w / w.sum()).repeat(x.shape[1], 1)
    x = F.conv2d(x, w[:, None, None, :], groups=x.shape[1])
    return F.conv2d(x, w[:, None, :, None], groups=x.shape[1])


def ssim_terms(a: torch.Tensor, b: torch.Tensor, data_range: float, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image and channel (B, C): mean SSIM map and mean contrast-structure map, 11x11 window
    of sd 1.5 (shrunk with the image below 11 pixels), K1 = 0.01, K2 = 0.03."""
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    sigma = 1.5 * window / 11
    mu_a, mu_b = gaussian_filter(a, window, sigma), gaussian_filter(b, window, sigma)
    var_a = gaussian_filter(a * a, window, sigma) - mu_a ** 2
    var_b = gaussian_filter(b * b, window, sigma) - mu_b ** 2
    cov = gaussian_filter(a * b, window, sigma) - mu_a * mu_b
    cs = (2 * cov + c2) / (var_a + var_b + c2)
    luminance = (2 * mu_a * mu_b + c1) / (mu_a ** 2 + mu_b ** 2 + c1)
    return (luminance * cs).flatten(2).mean(2), cs.flatten(2).mean(2)


def ms_ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Multi-scale SSIM (Wang, Simoncelli & Bovik 2003) of image pairs a, b (B, C, H, W) with
    pixels in [0, data_range] -> (B,) in [0, 1] (1: identical). SSIM's luminance term assumes
    non-negative intensities, so [-1, 1] images must be mapped to [0, 1] first. Per channel, as
    tf.image.ssim_multiscale and pytorch-msssim: the contrast-structure terms of the finer
    scales and the SSIM of the coarsest are clipped at 0, raised to their weights and
    multiplied; then the channels are averaged. Scales: see MS_SSIM_WEIGHTS. Raises ValueError
    on shape mismatch."""
    if a.shape != b.shape or a.dim() != 4:
        raise ValueError(f"ms_ssim needs two (B, C, H, W) batches of one shape, got {tuple(a.shape)}, {tuple(b.shape)}")
    a, b = a.double(), b.double()
    side = min(a.shape[-2:])
    levels = max(1, min(5, 1 + int(math.floor(math.log2(side / 11))) if side >= 11 else 1))
    weights = torch.tensor(MS_SSIM_WEIGHTS[:levels], dtype=a.dtype, device=a.device)
    weights = weights / weights.sum()
    factors = []
    for level in range(levels):
        ssim, cs = ssim_terms(a, b, data_range, min(11, side >> level))
        factors.append(F.relu(ssim if level == levels - 1 else cs))
        if level < levels - 1:
            a, b = F.avg_pool2d(a, 2), F.avg_pool2d(b, 2)
    per_channel = torch.prod(torch.stack(factors, -1) ** weights, dim=-1)     # (B, C)
    return per_channel.mean(1).float()


def pairwise_ms_ssim(images: torch.Tensor) -> torch.Tensor:
    """Mean MS-SSIM over all unordered pairs of images (N, C, H, W) in [0, 1], N >= 2 -> scalar."""
    i, j = zip(*itertools.combinations(range(len(images)), 2))
    return ms_ssim(images[list(i)], images[list(j)]).mean()


def diversity(model: DisentangledVAE, cfg: Config, device) -> float:
    """Tables 2 and 6: mean MS-SSIM over all pairs of --diversity-samples generated images of a
    class, averaged over the first --diversity-classes classes (lower = more diverse)."""
    g, classes = torch.Generator().manual_seed(cfg.seed + 2), min(cfg.diversity_classes, model.n_classes)
    progress, scores = common.Progress("MS-SSIM diversity", classes, "classes"), []
    for k in range(classes):
        scores.append(pairwise_ms_ssim((class_samples(model, [k], cfg.diversity_samples, g, device) + 1) / 2).item())
        progress.update()
    return float(np.mean(scores))


@torch.no_grad()
def evaluate_run(cfg: Config, model: DisentangledVAE, device) -> dict:
    """One run's held-out numbers, written to its OUT/eval.json: accuracies of z_s (nearest
    mixture component) and of the adversary C on mu_u, reconstruction, z_u's KL and active units,
    and the intra-class diversity (Table 2). Seeded: a checkpoint gives one eval.json."""
    common.seed_everything(cfg.seed)
    x, c, held = heldout(cfg, device)
    z_s, mu_u, logvar_u = encode_all(model, x, c)
    x_hat = torch.cat([model.decode(a, b) for a, b in zip(z_s.split(250), mu_u.split(250))])
    kl_dims = (0.5 * (mu_u ** 2 + logvar_u.exp() - 1 - logvar_u)).mean(0)
    r = {"model": cfg.model, "heldout": len(x), "classes": model.n_classes,
         "split": held.description, "classes_present": int(len(c.unique())), "chance_accuracy": 1.0 / len(c.unique()),
         "majority_accuracy": float(np.bincount(c.cpu().numpy()).max() / len(c)),
         "recon_mse_per_element": (x_hat - x).pow(2).mean().item(), "kl_z_u_nats": kl_dims.sum().item(),
         "active_units_z_u": common.active_units(mu_u),
         "bn_stats_images": getattr(model, "bn_stats_images", 0), "z_u_dim": model.z_u_dim}
    if model.kind == "lr-livae":
        d, logdet = mixture_logits(z_s, *model.prior.params())
        r["acc_z_s_nearest_component"] = ((-d - 0.5 * logdet).argmax(1) == c).float().mean().item()
        r["acc_z_u_adversary"] = (model.classifier(mu_u).argmax(1) == c).float().mean().item()
        # eq. 4-5's game is played on draws z_u ~ q(z_u|x), not on mu_u: C's accuracy there, 5 seeded draws
        g = torch.Generator(device).manual_seed(cfg.seed)
        draws = [mu_u + (0.5 * logvar_u).exp() * torch.randn(mu_u.shape, generator=g, device=device) for _ in range(5)]
        r["acc_z_u_adversary_sampled"] = float(np.mean([(model.classifier(z).argmax(1) == c).float().mean().item()
                                                         for z in draws]))
    if cfg.dataset != "toy":
        r["ms_ssim_within_class"] = diversity(model, cfg, device)
        r["diversity_1_minus_ms_ssim"] = 1.0 - r["ms_ssim_within_class"]
    r["units"] = ("accuracies in [0, 1] on held-out images: z_s by the nearest mixture component (argmax of "
                  "eq. 7's logits), z_u by the trained adversary C on mu_u and on 5 draws of q(z_u|x) (probes: benchmarks/probes.py); "
                  "held-out images are a seeded subset stratified by class; chance = 1 / the classes present; "
                  "pixels in [-1, 1], recon decodes (z_s, mu_u); KL in nats per image; active unit: "
                  "Var_x(mu_u) > 0.01; MS-SSIM over pairs of generated images of one class")
    common.save_json(os.path.join(cfg.out, "eval.json"), r)
    return r


def evaluate(runs: list, device) -> list:
    """`evaluate_run` for each (config, model, class names); with several runs (e.g. lr-livae and
    cvae-gan), a side-by-side table on stdout."""
    results = [evaluate_run(cfg, model, device) for cfg, model, _ in runs]
    skip = ("split", "units")  # one column per run, one row per number
    keys = [k for k in results[0] if k not in skip]
    keys += [k for r in results[1:] for k in r if k not in keys and k not in skip]
    print(f"{'':28s}" + "".join(f"{r['model']:>14s}" for r in results))
    for k in keys:
        cells = [r.get(k, "-") for r in results]
        print(f"{k:28s}" + "".join(f"{v:>14.4f}" if isinstance(v, float) else f"{str(v):>14s}" for v in cells))
    print("all numbers: " + ", ".join(common.shown(os.path.join(cfg.out, "eval.json")) for cfg, _, _ in runs))
    return results


def refuse_removed_networks(state: dict | None) -> None:
    """ValueError for a checkpoint of the removed `--arch dcgan` face networks (their weights would
    not fit the VGG16-BN ones this script builds); None (a fresh run) passes."""
    if state is not None and state["config"].get("arch") == "dcgan":
        raise ValueError(f"{state['path']} was trained with --arch dcgan, a face network family this script no longer "
                         f"has: use disentangled_vae.py from before 2026-12-07 for it, or train again")


def load_run(cfg: Config, explicit: set, device) -> tuple[Config, DisentangledVAE, list]:
    """The config, the trained model (eval mode, on device, population BatchNorm statistics) and
    its class names, from --checkpoint (a run folder or its file; default OUT/checkpoint.pt). Its
    outputs go to the run folder unless --out is given."""
    saved, state = common.checkpoint_to_evaluate(cfg, explicit, SCRIPT, RUN_FIELDS, resolve_defaults,
                                                 os.path.join("runs", f"dvae-{cfg.dataset}-{cfg.model}"))
    refuse_removed_networks(state)
    model = DisentangledVAE(saved, state["extra"]["n_classes"])
    common.load_weights(model, state, "model")
    model.to(device)
    refresh_batchnorm(saved, model, device)
    return saved, evaluation_mode(saved, model), state["extra"]["class_names"]


def load_models(cfg: Config, explicit: set, device) -> list:
    """[(config, model in eval mode on device, class names)] for each comma-separated --checkpoint."""
    paths = [p for p in cfg.checkpoint.split(",") if p] or [""]
    explicit = explicit - {"out"} if len(paths) > 1 else explicit
    return [load_run(dataclasses.replace(cfg, checkpoint=p), explicit, device) for p in paths]


def main(argv: list | None = None) -> None:
    parser = argparse.ArgumentParser(prog="disentangled_vae.py", description=__doc__.split("\n")[0],
                                     epilog="With no subcommand, it trains; SUBCOMMAND --help lists its flags.")
    sub = parser.add_subparsers(dest="command", title="subcommands")
    common.add_fields(sub.add_parser("train", help="train a model (the default subcommand)"), Config)
    read = common.CHECKPOINT_FLAGS | {"bn_images", "eval_bn"}  # the model's settings come from its checkpoint
    common.add_fields(sub.add_parser("sample", help="draw OUT/figures/samples_per_class.png"), Config, read)
    common.add_fields(sub.add_parser("figures", help="draw the paper's figures (Fig. 2-7 for the data set)"), Config,
                      read)
    common.add_fields(sub.add_parser("eval", help="accuracies, diversity, reconstruction into OUT/eval.json; several "
                                                  "checkpoints, comma-separated, are compared in one table"), Config,
                      read | {"eval_images", "diversity_classes", "diversity_samples"})
    common.add_fields(sub.add_parser("finetune", help="sec. 3.6: train a run made with --unseen-classes on its unseen "
                                                      "classes' unlabelled images, into OUT/finetune"), Config,
                      read | {"finetune_steps", "fresh"})
    mode, cfg, explicit, _ = common.parse(parser, Config, argv)
    with common.user_errors():
        if mode == "train":
            return train(resolve_defaults(cfg), explicit)
        if mode == "finetune":
            finetune(cfg, explicit)
            return
        device = common.pick_device(cfg.device)
        runs = load_models(cfg, explicit, device)
        if mode == "eval":
            evaluate(runs, device)
            return
        for run_cfg, model, names in runs:
            if mode == "figures":
                draw_figures(run_cfg, model, names, device)
            else:
                images = class_samples(model, list(range(min(10, model.n_classes))), 10,
                                       torch.Generator().manual_seed(run_cfg.seed), device)
                path = os.path.join(run_cfg.out, "figures", "samples_per_class.png")
                replaced = os.path.exists(path)
                if run_cfg.dataset == "toy":
                    common.save_png(scatter_panel(images.cpu().numpy(), np.repeat(np.arange(min(10, model.n_classes)), 10), run_cfg.model), path)
                else:
                    common.save_grid(images, path, 10)
                common.wrote(path, replaced)


if __name__ == "__main__":
    main()
