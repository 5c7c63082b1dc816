"""MMD Variational Ladder Autoencoder: faces with a hierarchy of latent codes.

Haoji Xu, "Generate Faces Using Ladder Variational Autoencoder with Maximum Mean Discrepancy
(MMD)", Intelligent Information Management 10, 2018 - the variational ladder autoencoder (VLAE,
Zhao, Song & Ermon 2017, arXiv:1702.08396) trained with the MMD objective of InfoVAE (Zhao et
al. 2017, arXiv:1706.02262) on every latent layer. Settings follow the reference code the paper
used (ermongroup/Variational-Ladder-Autoencoder at 00d517d, --reg=mmd).

The model. Latent layers l = 0..L-1 (l = 0 nearest the pixels; L = 4 x 10 dims for 64x64
CelebA, L = 3 x 2 dims for 28x28 MNIST), all with the flat prior p(z) = prod_l N(z_l; 0, I).
    inference   h_0 = x,  h_{l+1} = g_l(h_l)                       (a deterministic trunk)
                q(z_l|x) = N(mu_l(h_l), diag sigma_l(h_l)^2)        (a separate branch e_l per layer)
                sigma_l = sigmoid(.) + 0.001
    generation  t_{L-1} = f_{L-1}(z_{L-1})
                t_l = f_l([t_{l+1}, v_l(z_l)])   l = L-2..0          (each z_l enters at its own depth)
                x_hat = 2 sigmoid(t_0) - 1                          (pixels in [-1, 1], no pixel noise)
Deep layers see x through a deep network, so they hold high-level features (pose, identity);
shallow ones hold low-level ones (lighting, colour).

The objective (paper sec. 2.3-2.4, written out as the reference computes it):
    (eq. 1) MMD(q, p) = E_{q,q}[k(z, z')] + E_{p,p}[k(z, z')] - 2 E_{q,p}[k(z, z')]
    (eq. 2) k(z, z') = exp(-||z - z'||^2 / sigma^2),   sigma^2 = D^2 (the reference's dim scaling)
    (eq. 3) L_MMD-VLAE = E_q[log p(x|z)] - sum_l MMD(q(z_l), p(z_l))     (maximised)
With the reference's choices, the loss minimised is
        loss = 100 * ( mean_{pixels} |x_hat - x|  +  lambda * sum_l MMD_l ),   lambda = 1,
i.e. an L1 "log-likelihood" (a Laplace p(x|z) up to scale), MMD estimated on each batch of
reparameterised codes z_l against 100 fresh prior draws, biased estimator. The paper's ELBO
writes log p(z|x); it is log p(x|z) (a misprint: the ELBO's first term is the likelihood).
`--reg kl` trains the plain VLAE baseline (Zhao et al. 2017, eq. 4 with the reference's weights):
        loss = r * C*H*W * mean_{pixels} |x_hat - x|  +  w_t * sum_l KL(q(z_l|x) || N(0, I)),
with the KL warm-up w_t = 1 - exp(-t / 2000) and the reference's loss_ratio r (--kl-recon-weight).

MNIST pixels are in [-1, 1] here like CelebA's; the reference reads MNIST in [0, 1], where every
pixel error is half as large. The MNIST defaults restore the reference's balance in our units:
--mmd-weight 2 (its lambda = 1 on [0, 1] pixels) and --kl-recon-weight 4 (its loss_ratio 8.0).

Deviations and reference quirks (flags; the default is stated):
    --relu-top-heads   off. The reference's top (z3) heads fall back to TF's default ReLU, so mu >= 0.
    --recon mse        off (l1). The reference before 2017-09-20 used mean squared error.
    --denoise          off. The reference readme trains every tested configuration with
                       --denoise_train (salt and pepper plus N(0, 0.1^2) on the input, clean
                       target); the paper does not mention it.
    --bn-images 2000   BatchNorm keeps the reference's momentum 0.001 (TF's decay 0.999) while
                       training; before eval, figures and sample its statistics are recomputed
                       as population averages over 2,000 training images (the reference evaluates
                       with the running averages, which lag ~1,000 steps behind the weights).
    Init               N(0, 0.02) on every conv, transposed conv and linear layer of the blocks and
                       ladders, Glorot-uniform on the mu / sigma heads (the reference uses TF's
                       Glorot default on the heads only; its block helpers set N(0, 0.02)).
    Split              CelebA's official partition (the reference takes the first 80% of an
                       unsorted glob); MNIST's official train / test files (t10k alone: a seeded
                       80/20 split).
    Fig. 4             Face arithmetic uses encoder means mu_l(x), not samples, so it is
                       deterministic. The paper's "dark skin" is Pale_Skin = 0: about 96% of
                       CelebA faces are not labelled pale, so "dark" reads "not pale".

Usage:
    python vlae.py --dataset celeba --data-dir data/celeba        # train (CPU, or one GPU)
    torchrun --nproc_per_node 8 vlae.py --dataset celeba ...        # many GPUs (DDP)
    python vlae.py sample  --checkpoint runs/vlae-celeba/checkpoint.pt
    python vlae.py figures --checkpoint runs/vlae-celeba/checkpoint.pt   # Figs 2-4, recon, samples
    python vlae.py eval    --checkpoint runs/vlae-celeba/checkpoint.pt   # eval.json
    python benchmarks/fidelity.py vlae --checkpoint runs/vlae-celeba --fid --kid      # FID / KID (metrics extra)
The same command resumes an interrupted run. The paper trained about 8 h (CelebA) and 1 h
(MNIST) on one GTX 1080 Ti; the default budget is 100k steps of batch 100 (~62 epochs of CelebA's
162,770 training faces on one process; under torchrun --batch-size is per process, and the run
prints its global batch and epochs when it starts). benchmarks/claims.py vlae measures the
paper's claims on MNIST and faces (docs/claims/vlae.md).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

import common
import data

SCRIPT = "vlae"
LOSS_SCALE = 100.0  # the reference's global rescale of the MMD loss (vladder.py)
CELEBA_CROP = (55, 35, 108, 108)  # top, left, height, width: the reference's centre crop 108
# Fig. 4 triplets (a, b, c) -> decode(z_a - z_b + z_c), picked by CelebA attribute values
ARITHMETIC = {
    "pale": ({"Male": 1, "Pale_Skin": 1}, {"Male": 1, "Pale_Skin": 0}, {"Male": 0, "Pale_Skin": 0}),
    "smile": ({"Male": 1, "Smiling": 1}, {"Male": 1, "Smiling": 0}, {"Male": 0, "Smiling": 0}),
}
BN_CHUNK = 250  # images per forward when recomputing the BatchNorm statistics
# ----------------------------------------------------------------------------------------------
# config
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Config(common.RunConfig):
    dataset: str = common.arg("celeba", "celeba, mnist, lfw or folder (one sub-folder per class)",
                              choices=("celeba", "mnist", "lfw", "folder"))
    steps: int = common.arg(100_000, "optimizer steps; the paper gives none (100k at a global batch of 100: "
                                      "~62 CelebA epochs; 0: no training, evaluate the initial or resumed network)")
    batch_size: int = common.arg(100, "images per step per process (reference: 100; at least 2, as BatchNorm "
                                      "needs)", at_least=2)
    lr: float = common.arg(2e-4, "Adam learning rate (reference: 2e-4, betas 0.9/0.999)")
    image_size: int = common.arg(0, "image side in pixels (0: 64 for faces, 28 for MNIST)")
    crop: str = common.arg("", "crop box top,left,height,width (default: 55,35,108,108 for CelebA, "
                               "centred square for folder)")
    reg: str = common.arg("mmd", "regulariser per layer: mmd (the paper) or kl (plain VLAE baseline)",
                          choices=("mmd", "kl"))
    recon: str = common.arg("l1", "reconstruction loss: l1 (reference HEAD) or mse", choices=("l1", "mse"))
    latent_dim: int = common.arg(0, "dims per latent layer (0: 10 for faces, 2 for MNIST)")
    mmd_weight: float = common.arg(0.0, "lambda per layer against the per-pixel mean L1 on [-1, 1] pixels (0: "
                                        "the reference's balance, 1 for faces, 2 for MNIST = its 1 on [0, 1])")
    kl_recon_weight: float = common.arg(0.0, "--reg kl: loss_ratio r of the reconstruction r * C*H*W * mean L1 on "
                                             "[-1, 1] pixels (0: the reference's, 0.5 for faces, 4 for MNIST "
                                             "= its 8.0 on [0, 1] pixels)")
    denoise: bool = common.arg(False, "reference --denoise_train: salt and pepper (keep 0.9, set 0.1) plus "
                                      "N(0, 0.1^2) noise on the input, clean target")
    prior_samples: int = common.arg(100, "N(0, I) draws per layer per step for the MMD")
    kl_warmup: float = common.arg(2000.0, "--reg kl: KL weight 1 - exp(-step / this)", above=0.0)
    relu_top_heads: bool = common.arg(False, "reference quirk: ReLU on the top layer's mu and sigma heads")
    bn_momentum: float = common.arg(0.001, "BatchNorm running-stat momentum while training (TF's decay 0.999)",
                                    above=0.0, at_most=1.0)
    bn_images: int = common.arg(2000, "training images whose population BatchNorm statistics replace the "
                                      "running ones before eval, figures and sample (0: keep the running ones)")
    eval_images: int = common.arg(1000, "held-out images for eval (reconstruction, MMD, active units; at least 2, "
                                        "as the unbiased MMD needs)", at_least=2)


# the flags that may differ from the checkpoint a run resumes or evaluates
RUN_FIELDS = common.RUN_FIELDS | {"eval_images", "bn_images"}
# ----------------------------------------------------------------------------------------------
# --- paper: model ---
# ----------------------------------------------------------------------------------------------
class VLAE(nn.Module):
    """The ladder. Built by `celeba_ladder` / `mnist_ladder` from four lists of blocks:
    trunk g_0..g_{L-2}, heads e_0..e_{L-1}, ladders v_0..v_{L-2} with their combine, and
    decoder blocks f_0..f_{L-1} (f_{L-1} takes z_{L-1} alone)."""

    def __init__(self, trunk, heads, ladders, combines, decoders):
        super().__init__()
        self.trunk, self.heads = nn.ModuleList(trunk), nn.ModuleList(heads)
        self.ladders, self.combines = nn.ModuleList(ladders), nn.ModuleList(combines)
        self.decoders = nn.ModuleList(decoders)
        self.latent_dims = [h.mu.out_features for h in heads]

    def encode(self, x: torch.Tensor) -> tuple[list, list]:
        """x (B, C, H, W) in [-1, 1] -> lists over layers of mu_l, logvar_l, each (B, D_l)."""
        mus, logvars, h = [], [], x
        for l, head in enumerate(self.heads):
            mu, logvar = head(h)
            mus.append(mu)
            logvars.append(logvar)
            if l < len(self.trunk):
                h = self.trunk[l](h)  # h_{l+1} = g_l(h_l)
        return mus, logvars

    def decode(self, zs: list) -> torch.Tensor:
        """Codes z_0..z_{L-1}, each (B, D_l) -> x_hat (B, C, H, W) in [-1, 1]."""
        t = self.decoders[-1](zs[-1])  # t_{L-1} = f_{L-1}(z_{L-1})
        for l in reversed(range(len(self.ladders))):
            t = self.decoders[l](self.combines[l](t, self.ladders[l](zs[l])))
        return 2.0 * torch.sigmoid(t) - 1.0

    def forward(self, x: torch.Tensor) -> dict:
        mus, logvars = self.encode(x)
        zs = [common.reparameterize(mu, lv) for mu, lv in zip(mus, logvars)]
        return {"mu": mus, "logvar": logvars, "z": zs, "x_hat": self.decode(zs)}


class GaussianHead(nn.Module):
    """e_l: features of h_l, then q(z_l|x) = N(mu, sigma^2) with mu linear and
    sigma = sigmoid(linear) + 0.001 (paper sec. 2.2; reference vladder_large.py). Returns (mu, logvar), each (B, D)."""

    def __init__(self, features: nn.Module, in_features: int, dim: int, relu_quirk: bool = False):
        super().__init__()
        self.features, self.relu_quirk = features, relu_quirk
        self.mu, self.sigma = nn.Linear(in_features, dim), nn.Linear(in_features, dim)
        self.init_glorot()

    def init_glorot(self) -> None:
        """The heads keep TF's default init (Glorot-uniform, zero bias), unlike the blocks."""
        for linear in (self.mu, self.sigma):
            nn.init.xavier_uniform_(linear.weight)
            nn.init.zeros_(linear.bias)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.features(h).flatten(1)
        mu, s = self.mu(f), self.sigma(f)
        if self.relu_quirk:  # --relu-top-heads: TF's fully_connected defaults to a ReLU
            mu, sigma = F.relu(mu), F.relu(s) + 1e-3
        else:
            sigma = torch.sigmoid(s) + 1e-3
        return mu, 2.0 * torch.log(sigma)


class ConcatCombine(nn.Module):
    """CelebA: [t_{l+1}, v_l(z_l)] joined along channels."""

    def forward(self, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return torch.cat([t, v], dim=1)


class GatedAdd(nn.Module):
    """MNIST: t_{l+1} + g * v_l(z_l), with a learned per-unit gate g initialised to 0.1."""

    def __init__(self, features: int):
        super().__init__()
        self.gate = nn.Parameter(torch.full((features,), 0.1))

    def forward(self, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return t + self.gate * v


def celeba_ladder(size: int, dim: int, m: float, relu_quirk: bool) -> VLAE:
    """The reference's LargeLayers (vladder_large.py; paper sec. 2.2): cs = 3, 64, 128, 256, 512, 1024; L = 4."""
    s2, s8, s16 = size // 2, size // 8, size // 16

    def trunk_blocks():  # g_0..g_2; each head e_l is a second copy with its own weights
        return [nn.Sequential(conv_block(3, 64, 2, m), conv_block(64, 64, 1, m)),               # -> 64 x s/2
                nn.Sequential(conv_block(64, 128, 2, m), conv_block(128, 128, 1, m),
                              conv_block(128, 256, 2, m)),                                      # -> 256 x s/8
                nn.Sequential(conv_block(256, 256, 1, m), conv_block(256, 512, 2, m),
                              conv_block(512, 512, 1, m))]                                      # -> 512 x s/16

    trunk = trunk_blocks()
    head_features = trunk_blocks() + [nn.Sequential(nn.Flatten(), fc_block(512 * s16 * s16, 1024, m, "lrelu"),
                                                    fc_block(1024, 1024, m, "lrelu"))]
    widths = [64 * s2 * s2, 256 * s8 * s8, 512 * s16 * s16, 1024]
    heads = [GaussianHead(f, w, dim, relu_quirk and l == 3) for l, (f, w) in enumerate(zip(head_features, widths))]
    ladders = [nn.Sequential(fc_block(dim, c * s * s, m), common.Reshape(c, s, s))
               for c, s in ((64, s2), (256, s8), (512, s16))]
    decoders = [nn.Sequential(deconv_block(128, 64, 2, m), conv_transpose_same(64, 3, 1)),   # -> 3 x s
                nn.Sequential(deconv_block(512, 128, 2, m), deconv_block(128, 128, 1, m),
                              deconv_block(128, 64, 2, m)),                                         # -> 64 x s/2
                nn.Sequential(deconv_block(1024, 512, 1, m), deconv_block(512, 256, 2, m),
                              deconv_block(256, 256, 1, m)),                                        # -> 256 x s/8
                nn.Sequential(fc_block(dim, 1024, m), fc_block(1024, 1024, m),
                              fc_block(1024, 512 * s16 * s16, m), common.Reshape(512, s16, s16))]         # -> 512 x s/16
    return VLAE(trunk, heads, ladders, [ConcatCombine() for _ in ladders], decoders)


def mnist_ladder(size: int, dim: int, m: float, relu_quirk: bool) -> VLAE:
    """The reference's SmallLayers: cs = 1, 64, 128, 1024; L = 3; gated-add combination."""
    s4 = size // 4

    def convs():
        return nn.Sequential(conv_block(1, 64, 2, m), conv_block(64, 128, 2, m), nn.Flatten())

    def tower(cin):
        return nn.Sequential(fc_block(cin, 1024, m, "lrelu"), fc_block(1024, 1024, m, "lrelu"))

    trunk = [nn.Sequential(convs(), nn.Linear(128 * s4 * s4, 1024)),
             nn.Sequential(tower(1024), nn.Linear(1024, 1024))]
    heads = [GaussianHead(convs(), 128 * s4 * s4, dim), GaussianHead(tower(1024), 1024, dim),
             GaussianHead(tower(1024), 1024, dim, relu_quirk)]
    ladders = [fc_block(dim, 1024, m, "lrelu"), fc_block(dim, 1024, m)]
    decoders = [nn.Sequential(fc_block(1024, 128 * s4 * s4, m), common.Reshape(128, s4, s4),
                              deconv_block(128, 64, 2, m), conv_transpose_same(64, 1, 2)),
                nn.Sequential(fc_block(1024, 1024, m), fc_block(1024, 1024, m), nn.Linear(1024, 1024)),
                nn.Sequential(fc_block(dim, 1024, m), fc_block(1024, 1024, m), nn.Linear(1024, 1024))]
    return VLAE(trunk, heads, ladders, [GatedAdd(1024), GatedAdd(1024)], decoders)


def build_model(cfg: Config) -> VLAE:
    """The ladder for cfg.dataset, initialised like the reference: N(0, 0.02) blocks, Glorot heads."""
    make = mnist_ladder if cfg.dataset == "mnist" else celeba_ladder
    model = make(cfg.image_size, cfg.latent_dim, cfg.bn_momentum, cfg.relu_top_heads)
    init_normal_(model, 0.02)
    for head in model.heads:
        head.init_glorot()
    return model


# layers in the reference's TensorFlow conventions
def batch_norm(channels: int, momentum: float, dims: int = 2) -> nn.Module:
    """TF's batch_norm defaults: eps 1e-3, no learned scale (gamma fixed at 1), learned shift."""
    bn = (nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d)(channels, eps=1e-3, momentum=momentum)
    bn.weight.requires_grad_(False)
    return bn


def conv_block(cin: int, cout: int, stride: int, m: float) -> nn.Module:
    return nn.Sequential(conv_same(cin, cout, stride), batch_norm(cout, m), nn.LeakyReLU(0.1))


def deconv_block(cin: int, cout: int, stride: int, m: float) -> nn.Module:
    return nn.Sequential(conv_transpose_same(cin, cout, stride), batch_norm(cout, m), nn.LeakyReLU(0.1))


def fc_block(cin: int, cout: int, m: float, act: str = "relu") -> nn.Module:
    return nn.Sequential(nn.Linear(cin, cout), batch_norm(cout, m, dims=1),
                         nn.ReLU() if act == "relu" else nn.LeakyReLU(0.1))


def conv_same(in_ch: int, out_ch: int, stride: int, kernel: int = 4) -> nn.Module:
    """A Conv2d with TensorFlow 'SAME' padding for even kernels: out = in / stride (even sizes).

    Stride 2 with k4 is padding 1; stride 1 with k4 pads (left 1, right 2, top 1, bottom 2),
    the asymmetric padding TF uses. Raises ValueError for other strides.
    """
    if stride == 2 and kernel == 4:
        return nn.Conv2d(in_ch, out_ch, kernel, 2, 1)
    if stride == 1:
        total = kernel - 1
        pad = nn.ZeroPad2d((total // 2, total - total // 2, total // 2, total - total // 2))
        return nn.Sequential(pad, nn.Conv2d(in_ch, out_ch, kernel, 1, 0))
    raise ValueError(f"conv_same supports stride 1, or stride 2 with kernel 4; got {stride}, {kernel}")


def conv_transpose_same(in_ch: int, out_ch: int, stride: int, kernel: int = 4) -> nn.Module:
    """A ConvTranspose2d with TensorFlow 'SAME' sizes: out = in * stride.

    Stride 2 with k4 is padding 1; stride 1 is the exact adjoint of `conv_same`, as TF's
    conv2d_transpose is the gradient of its conv2d (for k4: crop 1 on the left/top and 2 on the
    right/bottom of the full output).
    """
    if stride == 2 and kernel == 4:
        return nn.ConvTranspose2d(in_ch, out_ch, kernel, 2, 1)
    if stride == 1:
        return _CroppedConvTranspose(in_ch, out_ch, kernel)
    raise ValueError(f"conv_transpose_same supports stride 1, or stride 2 with kernel 4; got {stride}, {kernel}")


class _CroppedConvTranspose(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, kernel: int):
        super().__init__()
        self.conv = nn.ConvTranspose2d(in_ch, out_ch, kernel, 1, 0)
        self.lo = (kernel - 1) // 2  # 1 for k4: the adjoint of conv_same's (1, 2) padding
        self.hi = (kernel - 1) - self.lo

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y[..., self.lo:y.shape[-2] - self.hi, self.lo:y.shape[-1] - self.hi]


def init_normal_(module: nn.Module, std: float = 0.02) -> None:
    """DCGAN-style init used by the TF references: conv/linear weights ~ N(0, std), biases 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


# ----------------------------------------------------------------------------------------------
# --- paper: losses ---
# ----------------------------------------------------------------------------------------------
def reconstruction_error(x_hat: torch.Tensor, x: torch.Tensor, kind: str) -> torch.Tensor:
    """Mean over all pixels and images of |x_hat - x| (l1) or (x_hat - x)^2 (mse); [-1, 1] units.
    The -log p(x|z) of eq. 3 for a Laplace (Gaussian) decoder, up to scale and constant."""
    diff = x_hat.float() - x.float()
    return diff.abs().mean() if kind == "l1" else diff.pow(2).mean()


def gaussian_kernel(a: torch.Tensor, b: torch.Tensor, sigma2: float) -> torch.Tensor:
    """k(a, b) = exp(-||a - b||^2 / sigma2) for every pair: (N, D), (M, D) -> (N, M).

    Xu 2018 sec. 2.3. The squared distances are computed in float32 whatever the autocast
    dtype, since bf16 distances of nearby codes round to 0.
    """
    a, b = a.float(), b.float()
    sq_dist = (a.pow(2).sum(1, keepdim=True) + b.pow(2).sum(1).unsqueeze(0) - 2.0 * a @ b.T)
    return torch.exp(-sq_dist.clamp_min(0.0) / sigma2)


def mmd(q: torch.Tensor, p: torch.Tensor, sigma2: float | None = None,
        unbiased: bool = False) -> torch.Tensor:
    """Squared MMD between samples q (N, D) and p (M, D) under the Gaussian kernel; a scalar.

    MMD^2 = E_qq[k] + E_pp[k] - 2 E_qp[k]   (Xu 2018 sec. 2.3; Gretton et al. 2012 eq. 3-5).
    `sigma2` defaults to D^2, the dimension-scaled bandwidth of the InfoVAE/VLAE reference code
    (exp(-mean_d (a_d - b_d)^2 / D)). The biased V-statistic (default, the reference's training
    loss) averages all entries, diagonals included, so it is >= 0; the unbiased U-statistic
    drops the diagonals of K_qq and K_pp and can dip below 0 when q = p.
    Raises ValueError on mismatched dims, or fewer than 2 samples for the unbiased form.
    """
    if q.dim() != 2 or p.dim() != 2 or q.shape[1] != p.shape[1]:
        raise ValueError(f"mmd needs (N, D) and (M, D) samples, got {tuple(q.shape)} and {tuple(p.shape)}")
    if sigma2 is None:
        sigma2 = float(q.shape[1]) ** 2
    k_qq, k_pp, k_qp = gaussian_kernel(q, q, sigma2), gaussian_kernel(p, p, sigma2), gaussian_kernel(q, p, sigma2)
    if not unbiased:
        return k_qq.mean() + k_pp.mean() - 2.0 * k_qp.mean()
    n, m = q.shape[0], p.shape[0]
    if n < 2 or m < 2:
        raise ValueError("the unbiased MMD estimator needs at least 2 samples on each side")
    off_qq = (k_qq.sum() - k_qq.diagonal().sum()) / (n * (n - 1))
    off_pp = (k_pp.sum() - k_pp.diagonal().sum()) / (m * (m - 1))
    return off_qq + off_pp - 2.0 * k_qp.mean()


def mmd_per_layer(zs: list, n_prior: int) -> list:
    """Eq. 1-2 for each layer: biased MMD between the batch of codes z_l ~ q(z_l) (B, D) and
    n_prior fresh draws of N(0, I), kernel bandwidth sigma^2 = D^2. Scalars, >= 0."""
    return [mmd(z.float(), torch.randn(n_prior, z.shape[1], device=z.device)) for z in zs]


def kl_per_layer(mus: list, logvars: list) -> list:
    """KL(q(z_l|x) || N(0, I)) in nats, summed over dims, averaged over the batch, per layer."""
    return [common.kl_normal_std(mu.float(), lv.float()).mean() for mu, lv in zip(mus, logvars)]


def vlae_loss(out: dict, x: torch.Tensor, cfg: Config, step: int) -> dict:
    """The loss minimised, with its terms (scalars) for logging.

    mmd (eq. 3, reference weighting): 100 * (recon + lambda * sum_l MMD_l)
    kl  (VLAE baseline):              r * C*H*W * recon + (1 - exp(-step / 2000)) * sum_l KL_l
    where recon is the per-pixel mean error of `reconstruction_error`, lambda --mmd-weight and
    r --kl-recon-weight (the reference's loss_ratio).
    """
    recon = reconstruction_error(out["x_hat"], x, cfg.recon)
    terms = {"recon": recon}
    if cfg.reg == "mmd":
        regs = mmd_per_layer(out["z"], cfg.prior_samples)
        loss = LOSS_SCALE * (recon + cfg.mmd_weight * sum(regs))
    else:
        regs = kl_per_layer(out["mu"], out["logvar"])
        warmup = 1.0 - math.exp(-step / cfg.kl_warmup)
        loss = cfg.kl_recon_weight * x[0].numel() * recon + warmup * sum(regs)
    return {"loss": loss, **terms, **{f"{cfg.reg}_{l}": r for l, r in enumerate(regs)}}


def corrupt(x: torch.Tensor, dataset: str) -> torch.Tensor:
    """--denoise: the reference's noisy input (trainer.py, get_noisy_input), in its own pixel
    range ([0, 1] for MNIST, [-1, 1] for faces): clip(x * Bernoulli(0.9) + Bernoulli(0.1) +
    N(0, 0.1^2)). x (B, C, H, W) in [-1, 1] -> the same shape and range. The noise comes from the
    global torch RNG, whose state every checkpoint keeps, so a resumed run draws the same noise."""
    lo = 0.0 if dataset == "mnist" else -1.0
    u = (x + 1.0) / 2.0 if lo == 0.0 else x
    keep, salt = torch.rand_like(u) < 0.9, torch.rand_like(u) < 0.1
    noisy = (u * keep + salt + 0.1 * torch.randn_like(u)).clamp(lo, 1.0)
    return noisy * 2.0 - 1.0 if lo == 0.0 else noisy


# ----------------------------------------------------------------------------------------------
# --- paper: training step ---
# ----------------------------------------------------------------------------------------------
def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
               xs: list, cfg: Config, step: int, device: torch.device) -> dict:
    """One Adam step on the micro-batches xs (each (B, C, H, W) in [-1, 1]; one unless
    --grad-accum): their gradients are summed, each loss divided by len(xs), and DDP averages
    over ranks once, on the last. Returns the loss terms averaged over micro-batches, detached.
    The forward runs under autocast; the losses are computed in float32. With --denoise the
    encoder sees a corrupted x and the loss compares x_hat with the clean x."""
    optimizer.zero_grad(set_to_none=True)
    totals: dict = {}
    for i, x in enumerate(xs):
        sync = i == len(xs) - 1 or not hasattr(model, "no_sync")
        with contextlib.nullcontext() if sync else model.no_sync():
            with common.autocast(device, cfg.amp):
                out = model(corrupt(x, cfg.dataset) if cfg.denoise else x)
            terms = vlae_loss(out, x, cfg, step)
            scaler.scale(terms["loss"] / len(xs)).backward()
        for k, v in terms.items():
            totals[k] = totals.get(k, 0.0) + v.detach() / len(xs)
    scaler.step(optimizer)
    scaler.update()
    return totals


# ----------------------------------------------------------------------------------------------
# --- paper: figures (return images; the caller saves them) ---
# ----------------------------------------------------------------------------------------------
def prior_draw(model: VLAE, n: int, g: torch.Generator, device) -> list:
    return [torch.randn(n, d, generator=g).to(device) for d in model.latent_dims]


@torch.no_grad()
def fig_manifold(model: VLAE, layer: int, g: torch.Generator, device, n: int = 15, span: float = 3.0):
    """Fig. 2: layer `layer`'s first two code dims on an n x n grid over [-span, span]^2, the
    other layers (and dims) drawn from N(0, I) for every cell. Returns (n*n, C, H, W)."""
    zs = prior_draw(model, n * n, g, device)
    axis = torch.linspace(-span, span, n)
    rows, cols = torch.meshgrid(axis, axis, indexing="ij")
    zs[layer] = torch.zeros_like(zs[layer])
    zs[layer][:, 0] = cols.flatten().to(device)
    zs[layer][:, 1 % zs[layer].shape[1]] = -rows.flatten().to(device)
    return model.decode(zs)


@torch.no_grad()
def fig_resample_layer(model: VLAE, layer: int, base: list, g: torch.Generator, device, n: int = 10):
    """Fig. 3, one panel: every layer but `layer` fixed to the shared draw `base` (a list of
    (1, D_l) codes, one N(0, I) draw for all panels, as the reference), layer `layer` redrawn
    from N(0, I) in each of n*n cells. Returns (n*n, C, H, W) in [-1, 1]."""
    zs = [z.expand(n * n, -1).clone() for z in base]
    zs[layer] = torch.randn(n * n, model.latent_dims[layer], generator=g).to(device)
    return model.decode(zs)


@torch.no_grad()
def fig_arithmetic(model: VLAE, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor):
    """Fig. 4: rows [a, b, c, decode(mu(a) - mu(b) + mu(c))] on every layer; a, b, c (R, C, H, W)
    in [-1, 1]. Returns (R*4, C, H, W)."""
    (mu_a, _), (mu_b, _), (mu_c, _) = model.encode(a), model.encode(b), model.encode(c)
    result = model.decode([za - zb + zc for za, zb, zc in zip(mu_a, mu_b, mu_c)])
    return torch.stack([a, b, c, result], dim=1).flatten(0, 1)


def pick_by_attributes(dataset: data.ImageSet, wanted: dict, n: int) -> np.ndarray | None:
    """Indices of up to n images whose attributes match `wanted` (name -> 0/1); None if none."""
    names = dataset.names.get("attributes", [])
    if "attributes" not in dataset.labels or any(k not in names for k in wanted):
        return None
    attrs = dataset.labels["attributes"]
    mask = np.ones(len(attrs), bool)
    for name, value in wanted.items():
        mask &= attrs[:, names.index(name)] == value
    found = np.flatnonzero(mask)[:n]
    return found if len(found) else None


# ----------------------------------------------------------------------------------------------
# --- plumbing: run folder, checkpoints ---
# ----------------------------------------------------------------------------------------------
def resolve_defaults(cfg: Config) -> Config:
    """Fill the dataset-dependent defaults (0 / '' fields) and check the values."""
    faces = cfg.dataset != "mnist"
    cfg = dataclasses.replace(
        cfg,
        data_dir=os.path.abspath(cfg.data_dir or os.path.join("data", cfg.dataset)),
        out=cfg.out or os.path.join("runs", f"vlae-{cfg.dataset}"),
        image_size=cfg.image_size or (64 if faces else 28),
        latent_dim=cfg.latent_dim or (10 if faces else 2),
        mmd_weight=cfg.mmd_weight or (1.0 if faces else 2.0),
        kl_recon_weight=cfg.kl_recon_weight or (0.5 if faces else 4.0))
    common.check_run_config(cfg)
    checks = [(cfg.prior_samples >= 2, "--prior-samples must be >= 2"),
              (cfg.mmd_weight > 0 and cfg.kl_recon_weight > 0, "--mmd-weight and --kl-recon-weight must be > 0"),
              (cfg.bn_images >= 0, "--bn-images must be >= 0"),
              (cfg.latent_dim >= 1, f"--latent-dim must be >= 1, got {cfg.latent_dim}"),
              (4 <= cfg.image_size <= 1024, f"--image-size must be between 4 and 1024 pixels, got {cfg.image_size}"),
              (cfg.image_size % (16 if faces else 4) == 0,
               f"--image-size must be a multiple of {16 if faces else 4} for {cfg.dataset}, got {cfg.image_size}")]
    common.require(checks)
    parse_crop(cfg)
    return cfg


def parse_crop(cfg: Config) -> tuple[int, int, int, int] | None:
    return common.parse_crop(cfg.crop, CELEBA_CROP if cfg.dataset == "celeba" else None)



def load_split(cfg: Config, split: str, verbose: bool = True) -> data.ImageSet:
    """`split` of --dataset at --image-size and --crop, through the decoded-image cache."""
    return data.load_dataset(cfg.dataset, cfg.data_dir, split, cfg.image_size, parse_crop(cfg), cfg.cache_dir or None,
                             verbose)


def check_heldout(cfg: Config) -> None:
    """Before training: the held-out split must give eval at least 2 images (the unbiased MMD's
    minimum), or the run would fail only after training. ValueError naming the split and the fix."""
    n = len(load_split(cfg, "test", verbose=False))
    if n < 2:
        raise ValueError(f"the held-out split of {cfg.data_dir} has {n} image(s) and eval needs at least 2: add "
                         f"images (--dataset folder holds out the last 20% of each class folder's sorted files)")


def heldout_images(cfg: Config, n: int, device, split: str = "test") -> tuple[torch.Tensor, data.ImageSet]:
    """The first n held-out images (B, C, H, W) in [-1, 1] and their ImageSet."""
    held = load_split(cfg, split)
    return as_inputs(held.images[:n], device), held


def as_inputs(images: np.ndarray, device) -> torch.Tensor:
    """uint8 images (N, H, W, C) -> float (N, C, H, W) in [-1, 1] on device."""
    return data.to_float_images(torch.from_numpy(np.array(images)).to(device))


def refresh_batchnorm(cfg: Config, model: VLAE, device, train_set: data.ImageSet | None = None) -> int:
    """Population BatchNorm statistics over --bn-images training images (a seeded subset), in
    batches of BN_CHUNK (common.recompute_batchnorm: the mean of the batches' means and unbiased
    variances, whose expectations do not depend on the batch size); sets and returns
    model.bn_stats_images."""
    if cfg.bn_images > 0:
        if train_set is None:
            train_set = load_split(cfg, "train", verbose=False)
        pick = np.sort(np.random.default_rng(cfg.seed).permutation(len(train_set))[:cfg.bn_images])
        x = as_inputs(train_set.images[pick], device)
        common.seed_everything(cfg.seed)  # the reparameterised codes the decoder's BatchNorm sees
        model.bn_stats_images = common.recompute_batchnorm(model, x.split(BN_CHUNK), total=len(x))
    return getattr(model, "bn_stats_images", 0)


def load_run(cfg: Config, explicit: set, device) -> tuple[Config, VLAE, dict]:
    """The config, the trained model (eval mode, on device, population BatchNorm statistics over
    --bn-images) and the checkpoint's state, from --checkpoint (a run folder or its file; default
    OUT/checkpoint.pt)."""
    saved, state = common.checkpoint_to_evaluate(cfg, explicit, SCRIPT, RUN_FIELDS, resolve_defaults,
                                                 os.path.join("runs", f"vlae-{cfg.dataset}"))
    model = build_model(saved)
    common.load_weights(model, state, "model")
    model.to(device)
    refresh_batchnorm(saved, model, device)
    return saved, model.eval(), state


def curve_keys(cfg: Config) -> list:
    n_layers = 3 if cfg.dataset == "mnist" else 4
    return ["loss", "recon"] + [f"{cfg.reg}_{l}" for l in range(n_layers)] + ["images_per_s"]


# ----------------------------------------------------------------------------------------------
# --- plumbing: training loop ---
# ----------------------------------------------------------------------------------------------
def train(cfg: Config, explicit: set) -> None:
    """Train into cfg.out, or resume the checkpoint there exactly, then draw the figures and write
    eval.json: one flat loop (nanoGPT's shape) with the log, checkpoint and stop-signal cadence
    inline. Under torchrun every rank runs it; rank 0 logs, saves and evaluates."""
    rank, world, local_rank = common.init_distributed()
    device = common.pick_device(cfg.device, local_rank)
    cfg, state = common.checkpoint_to_resume(cfg, explicit, SCRIPT, RUN_FIELDS, resolve_defaults)  # locks cfg.out
    common.seed_everything(cfg.seed)  # the same initial weights on every rank
    model = build_model(cfg).to(device, memory_format=common.memory_format(device))
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, betas=(0.9, 0.999),
                                 fused=device.type == "cuda")
    scaler = common.make_grad_scaler(device, cfg.amp)
    models, optimizers = {"model": model}, {"optimizer": optimizer}
    start = common.restore_training_state(state, models, optimizers, scaler, cfg.seed)  # 0 for a fresh run
    train_set = load_split(cfg, "train", verbose=common.is_main())
    check_heldout(cfg)
    batches = data.Batches(train_set, cfg.batch_size, cfg.seed, device, rank, world, channels_last=device.type == "cuda")
    meter = common.start_run_folder(cfg, train_set, model, start, device, cfg.batch_size * cfg.grad_accum * world)
    net = DDP(model, device_ids=[device.index] if device.type == "cuda" else None) if world > 1 else model
    net = torch.compile(net) if cfg.compile else net  # outside DDP (torch's advice): the all-reduce overlaps the backward
    bad = torch.zeros((), dtype=torch.bool, device=device)  # a NaN or inf loss so far; read only at log and save steps
    with common.StopSignal() as stop:
        for step in range(start + 1, cfg.steps + 1):  # `step` optimizer steps done after this one
            xs = [batches.get((step - 1) * cfg.grad_accum + i)[0] for i in range(cfg.grad_accum)]
            terms = train_step(net, optimizer, scaler, xs, cfg, step - 1, device)
            bad |= ~torch.isfinite(terms["loss"])
            if step % cfg.log_every == 0 or step == cfg.steps:
                common.check_finite(bad, step, cfg.out)
                meter.log(step, terms)
            stopping = stop.poll(step, device)
            if step % cfg.ckpt_every == 0 or step == cfg.steps or stopping:
                common.check_finite(bad, step, cfg.out)  # a NaN never overwrites the last good checkpoint
                with meter.paused():
                    common.save_training_state(cfg, SCRIPT, step, models, optimizers, scaler, curve_keys(cfg))
            if stopping:
                stop.exit(step)
    common.cleanup_distributed()  # the figures and eval below run on rank 0 alone
    if rank == 0:
        finish(cfg, model, device, train_set)


# ----------------------------------------------------------------------------------------------
# --- plumbing: sample / figures / eval ---
# ----------------------------------------------------------------------------------------------
def finish(cfg: Config, model: VLAE, device, train_set: data.ImageSet) -> None:
    """After training (rank 0): population BatchNorm statistics, every figure and eval.json. The
    last checkpoint was written before, so a longer run resumes from the training statistics."""
    refresh_batchnorm(cfg, model, device, train_set)
    model.eval()
    draw_figures(cfg, model, device)
    evaluate(cfg, model, device)
    model.train()


def draw_figures(cfg: Config, model: VLAE, device) -> list:
    """Figs. 2-4, reconstructions and prior samples into OUT/figures; returns the paths."""
    fig_dir, g = os.path.join(cfg.out, "figures"), torch.Generator().manual_seed(cfg.seed)
    count = 3 + (cfg.dataset == "mnist") + (len(ARITHMETIC) if cfg.dataset == "celeba" else 0) + common.logged(cfg.out)
    progress = common.Progress("figures", count, "figures", announce=True)
    written = [save(fig_dir, "samples.png", model.decode(prior_draw(model, 100, g, device)), 10)]
    n_layers = len(model.latent_dims)
    if cfg.dataset == "mnist":  # Fig. 2: bottom, middle, top layer left to right
        panels = [common.make_grid(common.to_uint8(fig_manifold(model, l, g, device)), 15) for l in range(n_layers)]
        written.append(save_panels(fig_dir, "fig2_manifold.png", panels))
    progress.update(1 + (cfg.dataset == "mnist"))
    base = prior_draw(model, 1, g, device)  # one base for every panel, so the panels compare
    panels = [common.make_grid(common.to_uint8(fig_resample_layer(model, l, base, g, device)), 10)
              for l in range(n_layers)]
    written.append(save_panels(fig_dir, "fig3_layers.png", panels))
    progress.update()
    x, held = heldout_images(cfg, 32, device)
    with torch.no_grad():
        x_hat = model.decode(model.encode(x)[0])
    written.append(save(fig_dir, "reconstructions.png", torch.stack([x, x_hat], 1).flatten(0, 1), 8))
    progress.update()
    written += fig4_all(cfg, model, device, fig_dir, held, progress)
    written += common.draw_curves(cfg.out, curve_keys(cfg))
    progress.update(common.logged(cfg.out))
    common.print0("figures: " + ", ".join(os.path.relpath(p, cfg.out) for p in written))
    return written


def fig4_all(cfg: Config, model: VLAE, device, fig_dir: str, held: data.ImageSet, progress: common.Progress,
             rows: int = 6) -> list:
    """One Fig. 4 grid per ARITHMETIC triplet, faces picked from the held-out split, or from the
    training split when it has fewer than `rows` matches (the codes are computed the same way)."""
    if cfg.dataset != "celeba":
        return []
    loaded: dict = {"test": held}

    def split(name: str) -> data.ImageSet:  # loaded once, and the train split only if needed
        if name not in loaded:
            loaded[name] = load_split(cfg, name, verbose=False)
        return loaded[name]

    written = []
    for name, wanted in ARITHMETIC.items():
        for faces in map(split, ("test", "train")):
            picks = [pick_by_attributes(faces, w, rows) for w in wanted]
            if all(p is not None and len(p) == rows for p in picks):
                break
        if any(p is None for p in picks):
            common.print0(f"fig4 {name}: no face matches one of {wanted}; skipped")
        else:
            picks = [p[:min(map(len, picks))] for p in picks]
            abc = [as_inputs(faces.images[p], device) for p in picks]
            written.append(save(fig_dir, f"fig4_arithmetic_{name}.png", fig_arithmetic(model, *abc), 4))
        progress.update()
    return written


def save(fig_dir: str, name: str, images: torch.Tensor, nrow: int) -> str:
    path = os.path.join(fig_dir, name)
    common.save_grid(images, path, nrow)
    return path


def save_panels(fig_dir: str, name: str, panels: list) -> str:
    path = os.path.join(fig_dir, name)
    common.save_png(common.hstack_panels(panels), path)
    return path


@torch.no_grad()
def encode_means(model: VLAE, x: torch.Tensor, chunk: int = 250) -> tuple[list, list]:
    """Per layer, mu_l (N, D_l) and logvar_l (N, D_l) of images x (N, C, H, W), in chunks."""
    progress, parts = common.Progress("encoding", len(x), "images"), []
    for xb in x.split(chunk):
        parts.append(model.encode(xb))
        progress.update(len(xb))
    layers = range(len(model.latent_dims))
    return ([torch.cat([p[0][l] for p in parts]).float() for l in layers],
            [torch.cat([p[1][l] for p in parts]).float() for l in layers])


@torch.no_grad()
def evaluate(cfg: Config, model: VLAE, device) -> dict:
    """Held-out numbers, written to OUT/eval.json and printed: reconstruction error, and per layer
    the unbiased MMD (eq. 1-2) and the active units. Every random draw is seeded from --seed, so
    the same checkpoint gives the same eval.json. (Probes and effect scores, which the paper does
    not report: benchmarks/probes.py.)"""
    common.seed_everything(cfg.seed)
    x, held = heldout_images(cfg, cfg.eval_images, device)
    mus, logvars = encode_means(model, x)
    x_hat = torch.cat([model.decode(list(zs)) for zs in zip(*(m.split(250) for m in mus))])
    layers = range(len(model.latent_dims))
    g = torch.Generator().manual_seed(cfg.seed + 1)
    mmd_heldout = heldout_mmd(mus, logvars, prior_draw(model, len(x), g, device))
    diff = (x_hat - x).float()
    result = {
        "heldout_images": len(x), "split": held.description, "bn_stats_images": getattr(model, "bn_stats_images", 0),
        "recon_l1_per_element": diff.abs().mean().item(),
        "recon_mse_per_element": diff.pow(2).mean().item(),
        "recon_sse_per_image_over_hw": (diff.pow(2).flatten(1).sum(1) / (x.shape[2] * x.shape[3])).mean().item(),
        "latent_dims": list(model.latent_dims),
        "active_units": [common.active_units(mus[l]) for l in layers],
        "mmd_heldout_unbiased": mmd_heldout,
    }
    result["units"] = (
        "pixels in [-1, 1]; reconstructions decode the encoder means mu_l(x); active unit: Var_x[mu_d] > 0.01 "
        "over the held-out images; MMD with k = exp(-||a-b||^2 / D^2) on samples z_l ~ q(z_l|x) vs as many "
        "N(0, I) draws (unbiased); BatchNorm statistics recomputed on bn_stats_images training images")
    trained = common.read_jsonl(os.path.join(cfg.out, "metrics.jsonl"))
    if trained:
        result["train_last"] = dict(trained[-1])
    common.write_json(os.path.join(cfg.out, "eval.json"), result, eval_summary(result))
    return result


def heldout_mmd(mus: list, logvars: list, prior: list) -> list:
    """Per layer l, the unbiased MMD (eq. 1-2's kernel) between z_l ~ q(z_l|x), one draw per
    held-out image from mus[l], logvars[l] (N, D_l) (the global RNG), and prior[l], draws of p(z_l)
    (`prior_draw`). A list of floats, one per layer; ~0 when q(z_l) = p(z_l), below 0 by noise."""
    z = [common.reparameterize(mu, logvar) for mu, logvar in zip(mus, logvars)]
    return [mmd(q, p, unbiased=True).item() for q, p in zip(z, prior)]


def eval_summary(r: dict) -> str:
    """The numbers of eval.json that matter, per layer from the bottom (z0) up, in a few lines."""
    per_layer = lambda values, f: " / ".join(f(v) for v in values)
    lines = [f"eval on {r['heldout_images']} held-out images: reconstruction L1 {r['recon_l1_per_element']:.4f} per "
             f"pixel value in [-1, 1]; per layer z0 (bottom) to z{len(r['latent_dims']) - 1} (top):",
             f"  held-out MMD to N(0, I) {per_layer(r['mmd_heldout_unbiased'], '{:.4f}'.format)} (unbiased; 0: q = p)",
             f"  active units {per_layer(r['active_units'], str)} (of {per_layer(r['latent_dims'], str)} dims)"]
    return "\n".join(lines)


def sample(cfg: Config, model: VLAE, device, n: int = 100) -> str:
    g = torch.Generator().manual_seed(cfg.seed)
    replaced = os.path.exists(os.path.join(cfg.out, "figures", "samples.png"))
    with torch.no_grad():
        path = save(os.path.join(cfg.out, "figures"), "samples.png", model.decode(prior_draw(model, n, g, device)), 10)
    common.wrote(path, replaced)
    return path


# ----------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------
def main(argv: list | None = None) -> None:
    parser = argparse.ArgumentParser(prog="vlae.py", description=__doc__.split("\n")[0],
                                     epilog="With no subcommand, vlae.py trains; SUBCOMMAND --help lists its flags.")
    sub = parser.add_subparsers(dest="command", title="subcommands")
    common.add_fields(sub.add_parser("train", help="train a model (the default subcommand)"), Config)
    read = common.CHECKPOINT_FLAGS | {"bn_images"}  # the model's settings come from its checkpoint
    common.add_fields(sub.add_parser("sample", help="draw OUT/figures/samples.png from a checkpoint"), Config, read)
    common.add_fields(sub.add_parser("figures", help="draw the paper's figures (Fig. 2-4, samples, curves)"), Config,
                      read)
    common.add_fields(sub.add_parser("eval", help="held-out MMD per layer, reconstruction, active units into "
                                                  "OUT/eval.json"), Config, read | {"eval_images"})
    command, cfg, explicit, _ = common.parse(parser, Config, argv)
    with common.user_errors():
        if command == "train":
            return train(resolve_defaults(cfg), explicit)
        device = common.pick_device(cfg.device)
        cfg, model, _ = load_run(cfg, explicit, device)
        {"sample": sample, "figures": draw_figures, "eval": evaluate}[command](cfg, model, device)


if __name__ == "__main__":
    main()
