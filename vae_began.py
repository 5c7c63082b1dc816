"""VAE-BEGAN: a VAE generator against a BEGAN auto-encoder discriminator, balanced by a PID controller.

Salman Khan, Munawar Hayat & Nick Barnes, "Adversarial Training of Variational Auto-encoders
for High Fidelity Image Generation", WACV 2018 (arXiv:1804.10323). No public code; the gaps are
filled from BEGAN (Berthelot et al. 2017) and named below. Symbols: the paper's eta is BEGAN's
gamma, its gamma only weights L_e.

The model. A VAE (encoder E -> mu, logvar; decoder G) generates x_v = G(z_v), z_v ~ q(z|x), and
x_g = G(z_g), z_g ~ N(0, I). The discriminator D is an auto-encoder (Enc_D, Dec_D, BEGAN's):
it reconstructs real images well and fakes badly. All losses are mean absolute errors
(pixels in [-1, 1]):
    (eq. 2)  L_e = |x - x_v|                       (eq. 3)  L_n = KL(q(z|x) || N(0, I))
    (eq. 7)  L_d = |x - D(x)|,  L_g = |x_g - D(x_g)|,  L_v = |x_v - D(x_v)|
             (printed |x - D(x_g)| for L_g, a misprint: it is BEGAN's |x_g - D(x_g)|)
    (eq. 9)  L_s = |Enc_D(x) - Enc_D(x_v)|         the learned similarity metric, D's bottleneck
    (eq. 13) L_dis = L_d - k_{t-1} (L_g + alpha L_v)            -> D's parameters only
    (eq. 14) L_gen = L_g + alpha L_v + beta L_s + gamma L_e      -> G's parameters only
    (eq. 15) L_enc = L_n + beta L_s + gamma L_e                  -> E's parameters only
The equilibrium controller (eq. 10-12) keeps eta L_d = L_g + alpha L_v:
    (eq. 11) e_t = eta L_d - (L_g + alpha L_v)        (printed with +alpha L_v, a misprint)
    (eq. 12) k_t = clip(k_{t-1} + l1 e_t + l2 (e_t - e_{t-1}) + l3 (e_t - 2 e_{t-1} + e_{t-2}), 0, 1)
With l2 = l3 = 0 this is BEGAN's k update. Convergence: M_global = L_d + |eta L_d - L_g - alpha L_v|.
alpha, beta, gamma, eta = 0.3, 0.1, 0.1, 0.5; gains 1e-3, 1e-5, 1e-5; Adam 5e-5; 300k steps.

Ablations: --no-vae (BEGAN* + LSM: G from z_g only, L_s matches batch-mean bottleneck codes of real
and generated images), --no-lsm (beta = 0), --controller p (BEGAN's proportional k update);
all three together give plain BEGAN.

Filled gaps (sec. 4 leaves them out; BEGAN's values where it has them): Adam betas (0.5, 0.999), batch 16, n = 128 filters, N = 64 latent
dims, lr halved every 100k steps down to 2e-5, k_0 = 0, KL averaged over dims and batch
(--kl-weight), CelebA crop 128 at (top 50, left 25). Gradients are routed by hand (one forward,
three gradient computations), so multi-GPU averages them with one all-reduce per step instead
of DDP's hooks.

Usage:
    python vae_began.py --dataset celeba --data-dir data/celeba                    # 64x64
    python vae_began.py --dataset celeba --data-dir data/celeba --image-size 128
    python vae_began.py --dataset cifar10 --data-dir data/cifar10 --image-size 32
    python vae_began.py eval --checkpoint runs/vae_began-celeba-64/checkpoint.pt
    python vae_began.py figures --checkpoint runs/vae_began-celeba-64/checkpoint.pt
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import sys

import numpy as np
import torch
import torch.nn as nn

import common
import data

SCRIPT = "vae_began"
MODES = ("train", "sample", "figures", "eval")
CELEBA_CROP = (50, 25, 128, 128)  # top, left, height, width: BEGAN's crop of the aligned faces
FIG8_ATTRIBUTES = ("Bald", "Black_Hair", "Pale_Skin")


# ----------------------------------------------------------------------------------------------
# config
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Config(common.RunConfig):
    dataset: str = common.arg("celeba", "celeba, cifar10 or folder", choices=("celeba", "cifar10", "folder"))
    steps: int = common.arg(300_000, "training steps (paper: 300k)")
    batch_size: int = common.arg(16, "images per step per process (not stated; BEGAN: 16)")
    lr: float = common.arg(5e-5, "Adam learning rate of E, G and D (paper: 5e-5)")
    lr_halve_every: int = common.arg(100_000, "halve the learning rate every this many steps (BEGAN port)")
    lr_min: float = common.arg(2e-5, "learning-rate floor of the halving")
    image_size: int = common.arg(64, "32 (CIFAR), 64 or 128 (CelebA)")
    filters: int = common.arg(128, "n, the backbone's base number of filters (BEGAN: 128)")
    latent_dim: int = common.arg(64, "N, size of z and of D's bottleneck (BEGAN: 64)")
    alpha: float = common.arg(0.3, "weight of L_v (paper: 0.3)")
    beta: float = common.arg(0.1, "weight of L_s, the learned similarity metric (paper: 0.1)")
    gamma: float = common.arg(0.1, "weight of L_e, the VAE's reconstruction (paper: 0.1)")
    eta: float = common.arg(0.5, "diversity ratio, BEGAN's gamma (paper: 0.5)")
    kl_weight: float = common.arg(1.0, "weight of L_n, the KL averaged over dims and batch")
    gains: str = common.arg("1e-3,1e-5,1e-5", "controller gains l1,l2,l3 of eq. 12 (paper)")
    controller: str = common.arg("pid", "pid (eq. 12) or p (BEGAN's update: l2 = l3 = 0)", choices=("pid", "p"))
    vae: bool = common.arg(True, "the VAE generator; --no-vae is BEGAN* (G from noise only)")
    lsm: bool = common.arg(True, "the learned similarity metric L_s; --no-lsm sets beta = 0")
    eval_images: int = common.arg(1000, "held-out images (and as many samples) for eval")


# the flags that may differ from the checkpoint a run resumes or evaluates
RUN_FIELDS = common.RUN_FIELDS | {"eval_images"}


def resolve_defaults(cfg: Config) -> Config:
    cfg = dataclasses.replace(cfg, data_dir=cfg.data_dir or os.path.join("data", cfg.dataset),
                              out=cfg.out or os.path.join("runs", f"vae_began-{cfg.dataset}-{cfg.image_size}"))
    common.check_run_config(cfg)
    checks = [(cfg.image_size in (32, 64, 128), f"--image-size must be 32, 64 or 128, got {cfg.image_size}"),
              (cfg.dataset != "cifar10" or cfg.image_size == 32, "CIFAR-10 images are 32x32: pass --image-size 32"),
              (cfg.filters >= 1 and cfg.latent_dim >= 1, "--filters and --latent-dim must be >= 1")]
    common.require(checks)
    gains(cfg)
    return cfg


def gains(cfg: Config) -> tuple[float, float, float]:
    """(l1, l2, l3) of eq. 12; --controller p zeroes l2 and l3 (BEGAN)."""
    try:
        l1, l2, l3 = (float(v) for v in cfg.gains.split(","))
    except ValueError:
        raise ValueError(f"--gains must be three numbers l1,l2,l3, got {cfg.gains!r}") from None
    return (l1, 0.0, 0.0) if cfg.controller == "p" else (l1, l2, l3)


# ----------------------------------------------------------------------------------------------
# --- paper: the BEGAN backbone (sec. 4; Berthelot et al. 2017) ---
# ----------------------------------------------------------------------------------------------
def conv_elu(cin: int, cout: int, stride: int = 1) -> nn.Module:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.ELU())


class Encoder(nn.Module):
    """x (B, 3, S, S) in [-1, 1] -> (B, heads * N): conv + ELU pairs at R = log2(S) - 2 scales
    with n, 2n, .. Rn filters, stride-2 convs between scales, an 8x8 bottleneck, linear FC."""

    def __init__(self, size: int, n: int, latent_dim: int, heads: int = 1):
        super().__init__()
        scales = int(math.log2(size)) - 2
        layers, c = [conv_elu(3, n)], n
        for s in range(1, scales + 1):
            layers += [conv_elu(c, s * n), conv_elu(s * n, s * n)]
            c = s * n
            if s < scales:
                layers.append(conv_elu(c, c, stride=2))
        self.body = nn.Sequential(*layers, nn.Flatten())
        self.fc = nn.Linear(8 * 8 * c, heads * latent_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x))


class Decoder(nn.Module):
    """h (B, N) -> image (B, 3, S, S): linear FC to 8x8xn, conv + ELU pairs with nearest x2
    upsampling between the R scales, a linear 3x3 conv to RGB (no squashing, as BEGAN)."""

    def __init__(self, size: int, n: int, latent_dim: int):
        super().__init__()
        scales = int(math.log2(size)) - 2
        self.fc = nn.Linear(latent_dim, 8 * 8 * n)
        layers = []
        for s in range(1, scales + 1):
            layers += [conv_elu(n, n), conv_elu(n, n)]
            if s < scales:
                layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
        self.body = nn.Sequential(*layers, nn.Conv2d(n, 3, 3, 1, 1))
        self.n = n

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.body(self.fc(h).view(-1, self.n, 8, 8))


class AutoEncoder(nn.Module):
    """BEGAN's discriminator D = Dec_D(Enc_D(.)); `forward` returns (bottleneck, reconstruction)."""

    def __init__(self, size: int, n: int, latent_dim: int):
        super().__init__()
        self.encoder, self.decoder = Encoder(size, n, latent_dim), Decoder(size, n, latent_dim)

    def forward(self, x: torch.Tensor):
        h = self.encoder(x)
        return h, self.decoder(h)


class VAEBEGAN(nn.Module):
    """E (mu, logvar heads), G and D, each with its own optimizer."""

    def __init__(self, cfg: Config):
        super().__init__()
        s, n, dim = cfg.image_size, cfg.filters, cfg.latent_dim
        self.encoder = Encoder(s, n, dim, heads=2) if cfg.vae else None
        self.generator = Decoder(s, n, dim)
        self.discriminator = AutoEncoder(s, n, dim)
        self.latent_dim = dim

    def encode(self, x: torch.Tensor):
        """q(z|x) as (mu, logvar), each (B, N)."""
        return self.encoder(x).chunk(2, dim=1)

    def networks(self) -> dict:
        nets = {"generator": self.generator, "discriminator": self.discriminator}
        return {"encoder": self.encoder, **nets} if self.encoder is not None else nets


# ----------------------------------------------------------------------------------------------
# --- paper: losses and the controller ---
# ----------------------------------------------------------------------------------------------
def l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over all elements (the paper's |.|, BEGAN with p = 1)."""
    return (a.float() - b.float()).abs().mean()


def losses(model: VAEBEGAN, x: torch.Tensor, k: torch.Tensor, cfg: Config) -> dict:
    """One forward of Alg. 1 and every loss of eq. 2-15 (scalars) for a batch x in [-1, 1].

    L_dis uses k_{t-1} = k. The three objectives share this graph; `train_step` routes each to
    its own network's parameters."""
    z_g = torch.randn(x.shape[0], cfg.latent_dim, device=x.device)
    x_g = model.generator(z_g)
    z_d, x_d = model.discriminator(x)
    z_gd, x_gd = model.discriminator(x_g)
    t = {"L_d": l1(x, x_d), "L_g": l1(x_g, x_gd)}                                  # eq. 7
    if cfg.vae:
        mu, logvar = model.encode(x)
        x_v = model.generator(common.reparameterize(mu, logvar))
        z_vd, x_vd = model.discriminator(x_v)
        t["L_v"] = l1(x_v, x_vd)                                                    # eq. 7
        t["L_e"] = l1(x, x_v)                                                       # eq. 2
        t["L_n"] = common.kl_normal_std(mu.float(), logvar.float()).mean() / cfg.latent_dim   # eq. 3
        t["L_s"] = l1(z_d.detach(), z_vd)                                           # eq. 9
    else:  # BEGAN* + LSM: match the batch-mean bottleneck codes of real and generated images
        t["L_v"] = t["L_e"] = t["L_n"] = torch.zeros((), device=x.device)
        t["L_s"] = l1(z_d.detach().mean(0), z_gd.mean(0))
    beta = cfg.beta if cfg.lsm else 0.0
    fake = t["L_g"] + cfg.alpha * t["L_v"]
    t["L_dis"] = t["L_d"] - k * fake                                                # eq. 13
    t["L_gen"] = fake + beta * t["L_s"] + cfg.gamma * t["L_e"]                      # eq. 14
    t["L_enc"] = cfg.kl_weight * t["L_n"] + beta * t["L_s"] + cfg.gamma * t["L_e"]  # eq. 15
    t["m_global"] = (t["L_d"] + (cfg.eta * t["L_d"] - fake).abs()).detach()         # convergence
    return t


@dataclasses.dataclass
class Controller:
    """Eq. 10-12: the error-feedback update of k_t, kept as device tensors (no GPU sync).

    k_t = clip(k + l1 e_t + l2 (e_t - e_{t-1}) + l3 (e_t - 2 e_{t-1} + e_{t-2}), 0, 1),
    e_t = eta L_d - (L_g + alpha L_v). k_0 = 0, e_{-1} = e_{-2} = 0 (as BEGAN)."""
    gains: tuple
    k: torch.Tensor
    e1: torch.Tensor
    e2: torch.Tensor

    @classmethod
    def start(cls, gains: tuple, device) -> "Controller":
        zero = torch.zeros((), dtype=torch.float64, device=device)
        return cls(gains, zero.clone(), zero.clone(), zero.clone())

    def update(self, error: torch.Tensor) -> torch.Tensor:
        l1_, l2_, l3_ = self.gains
        e = error.detach().double()
        step = l1_ * e + l2_ * (e - self.e1) + l3_ * (e - 2 * self.e1 + self.e2)
        self.k = (self.k + step).clamp(0.0, 1.0)
        self.e2, self.e1 = self.e1, e
        return self.k

    def state_dict(self) -> dict:
        return {"k": self.k.item(), "e1": self.e1.item(), "e2": self.e2.item()}

    def load_state_dict(self, state: dict) -> None:
        for name in ("k", "e1", "e2"):
            setattr(self, name, torch.tensor(state[name], dtype=torch.float64, device=self.k.device))


# ----------------------------------------------------------------------------------------------
# --- paper: training step (Alg. 1) ---
# ----------------------------------------------------------------------------------------------
OBJECTIVES = {"encoder": "L_enc", "generator": "L_gen", "discriminator": "L_dis"}


def train_step(model: VAEBEGAN, optimizers: dict, controller: Controller, xs: list,
               cfg: Config, device, forward=None, scaler: torch.amp.GradScaler | None = None) -> dict:
    """Alg. 1 on the micro-batches xs (one unless --grad-accum), each in [-1, 1]: per micro-batch
    one forward, each objective's gradient taken w.r.t. its own network only (eq. 13-15; D's
    gradients never reach E or G and vice versa), summed over micro-batches with weight 1/len(xs);
    ranks average the gradients; three Adam steps; then k_t from the mean detached losses.
    `forward` may be a compiled `losses`. `scaler` (fp16 autocast): one GradScaler for the three
    objectives; each network's step is skipped when its gradients hold an inf or NaN."""
    scaler = scaler or torch.amp.GradScaler(device.type, enabled=False)
    nets = model.networks()
    every = [p for net in nets.values() for p in net.parameters()]
    for p in every:
        p.grad = None
    keep = ("L_d", "L_g", "L_v", "L_e", "L_n", "L_s", "m_global", "L_dis", "L_gen")
    totals = dict.fromkeys(keep, 0.0)
    for x in xs:
        with common.autocast(device, cfg.amp):
            t = (forward or losses)(model, x, controller.k.float(), cfg)
        for name, net in nets.items():
            params = list(net.parameters())
            loss = scaler.scale(t[OBJECTIVES[name]] / len(xs))   # fp16: small gradients would underflow to 0
            grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
            for p, g in zip(params, grads):
                if g is not None:
                    p.grad = g if p.grad is None else p.grad + g
        for k_ in keep:
            totals[k_] = totals[k_] + t[k_].detach() / len(xs)
    # the scaled gradients are averaged first, so an inf on any rank reaches every rank and all skip
    # the same steps; scaler.step then unscales each network's gradients and steps it unless they
    # hold an inf (the whole scale is shared, as its update)
    common.average_gradients(every)
    for name in nets:
        scaler.step(optimizers[name])
    scaler.update()
    error = cfg.eta * totals["L_d"] - (totals["L_g"] + cfg.alpha * totals["L_v"])      # eq. 11
    k = controller.update(common.all_reduce_mean(error))                               # eq. 12
    loss = totals.pop("L_dis") + totals.pop("L_gen")
    return {"loss": loss, **totals, "k_t": k.float()}


def learning_rate(cfg: Config, step: int) -> float:
    """5e-5 halved every --lr-halve-every steps, not below --lr-min (carpedm20's BEGAN)."""
    return max(cfg.lr * 0.5 ** (step // cfg.lr_halve_every), min(cfg.lr, cfg.lr_min))


# ----------------------------------------------------------------------------------------------
# --- paper: figures and evaluation ---
# ----------------------------------------------------------------------------------------------
@torch.no_grad()
def fig4_reconstructions(model: VAEBEGAN, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Fig. 4 rows: (a) fakes, (b) their D reconstructions, (c) reals, (d) theirs. (4B, 3, S, S)."""
    fake = model.generator(torch.randn(len(x), model.latent_dim, generator=g).to(x.device))
    return torch.cat([fake, model.discriminator(fake)[1], x, model.discriminator(x)[1]])


@torch.no_grad()
def fig6_interpolation(model: VAEBEGAN, a: torch.Tensor, b: torch.Tensor, steps: int = 8) -> torch.Tensor:
    """Fig. 6: encode two real faces (mu), decode the straight line between them.
    a, b (R, 3, S, S) -> (R * steps, 3, S, S), a row per pair."""
    za, zb = model.encode(a)[0], model.encode(b)[0]
    w = torch.linspace(0, 1, steps, device=a.device)[None, :, None]
    return model.generator(((1 - w) * za[:, None] + w * zb[:, None]).flatten(0, 1))


@torch.no_grad()
def fig8_attribute_vectors(model: VAEBEGAN, x: torch.Tensor, attrs: np.ndarray, names: list,
                           g: torch.Generator, n: int = 6, scales=(0.0, 0.5, 1.0, 1.5, 2.0)) -> dict:
    """Fig. 8: per attribute, v = mean mu(x) of faces with it - mean of faces without; added at
    `scales` to n generated codes. Returns name -> (n * len(scales), 3, S, S)."""
    mu = torch.cat([model.encode(chunk)[0] for chunk in x.split(250)])
    base = torch.randn(n, model.latent_dim, generator=g).to(x.device)
    out = {}
    for name in FIG8_ATTRIBUTES:
        has = torch.from_numpy(attrs[:, names.index(name)] > 0).to(x.device)
        if has.all() or not has.any():
            continue
        v = mu[has].mean(0) - mu[~has].mean(0)
        out[name] = model.generator(torch.cat([base + s * v for s in scales]).view(len(scales), n, -1)
                                    .transpose(0, 1).flatten(0, 1))
    return out


@torch.no_grad()
def evaluate(cfg: Config, model: VAEBEGAN, controller: dict, device) -> dict:
    """Held-out numbers into OUT/eval.json: D's loss on real vs generated faces, the VAE's
    reconstruction error, and a sample-quality score: the unbiased kernel MMD between generated
    and held-out faces in D's bottleneck (k = exp(-||a-b||^2 / N^2)), lower is better."""
    x, _ = heldout(cfg, device)
    g = torch.Generator().manual_seed(cfg.seed)
    z = torch.randn(len(x), cfg.latent_dim, generator=g).to(device)
    fake = torch.cat([model.generator(c) for c in z.split(250)])
    h_real, rec_real = zip(*(model.discriminator(c) for c in x.split(250)))
    h_fake, rec_fake = zip(*(model.discriminator(c) for c in fake.split(250)))
    result = {"heldout_images": len(x), "k_t": controller.get("k", 0.0),
              "L_d_real": l1(x, torch.cat(rec_real)).item(), "L_d_generated": l1(fake, torch.cat(rec_fake)).item(),
              "mmd_d_bottleneck": common.mmd(torch.cat(h_real), torch.cat(h_fake), unbiased=True).item()}
    result["m_global"] = result["L_d_real"] + abs(cfg.eta * result["L_d_real"] - result["L_d_generated"])
    if cfg.vae:
        recon = torch.cat([model.generator(model.encode(c)[0]) for c in x.split(250)])
        result["recon_l1_per_element"] = l1(x, recon).item()
    result["units"] = ("pixels in [-1, 1]; L1 = mean absolute error per element; m_global here has no L_v term; "
                       "MMD: unbiased, Gaussian kernel with sigma^2 = N^2 on D's N-dim bottleneck codes")
    with open(os.path.join(cfg.out, "eval.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))
    return result


# ----------------------------------------------------------------------------------------------
# --- plumbing ---
# ----------------------------------------------------------------------------------------------
def crop_for(cfg: Config):
    return CELEBA_CROP if cfg.dataset == "celeba" else None


def load_split(cfg: Config, split: str, verbose: bool = True) -> data.ImageSet:
    return data.load_dataset(cfg.dataset, cfg.data_dir, split, cfg.image_size, crop_for(cfg),
                             cfg.cache_dir or None, verbose)


def heldout(cfg: Config, device, n: int | None = None) -> tuple[torch.Tensor, data.ImageSet]:
    """The first n (default --eval-images) held-out images in [-1, 1], and their ImageSet."""
    held = load_split(cfg, "test", verbose=False)
    return data.to_float_images(torch.from_numpy(np.array(held.images[:n or cfg.eval_images])).to(device)), held


def make_optimizers(model: VAEBEGAN, cfg: Config, device) -> dict:
    """One Adam per network (betas 0.5, 0.999 as BEGAN), so each objective steps only its own."""
    return {name: torch.optim.Adam(net.parameters(), lr=cfg.lr, betas=(0.5, 0.999), fused=device.type == "cuda")
            for name, net in model.networks().items()}


def curve_keys(cfg: Config) -> list:
    return ["k_t", "m_global", "L_d", "L_g", "L_v", "L_e", "L_n", "L_s", "images_per_s"]


def setup_run(cfg: Config, explicit: set, device, rank: int, world: int):
    cfg, state = common.checkpoint_to_resume(cfg, explicit, SCRIPT, RUN_FIELDS, resolve_defaults)
    common.seed_everything(cfg.seed)
    model = VAEBEGAN(cfg).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizers, scaler = make_optimizers(model, cfg, device), common.make_grad_scaler(device, cfg.amp)
    controller = Controller.start(gains(cfg), device)
    common.seed_everything(cfg.seed, rank)
    start = 0
    if state is not None:
        start = common.restore_training_state(state, {"model": model}, optimizers, scaler, rank, world, cfg.seed)
        controller.load_state_dict(state["extra"]["controller"])
        common.print0(f"resuming {cfg.out}/checkpoint.pt at step {start} (k_t {controller.k.item():.4f})")
    return cfg, model, optimizers, controller, scaler, start


def train(cfg: Config, explicit: set) -> None:
    rank, world, local_rank = common.init_distributed()
    device = common.pick_device(cfg.device, local_rank)
    cfg, model, optimizers, controller, scaler, start = setup_run(cfg, explicit, device, rank, world)
    train_set = load_split(cfg, "train", verbose=common.is_main())
    batches = data.Batches(train_set, cfg.batch_size, cfg.seed, device, rank, world,
                           channels_last=device.type == "cuda")
    earlier = common.start_run_folder(cfg, train_set.description, model, start, device)
    run_loop(cfg, model, optimizers, controller, scaler, batches, start, device, earlier)
    common.cleanup_distributed()
    if rank == 0:
        model.eval()
        draw_figures(cfg, model, device)
        evaluate(cfg, model, controller.state_dict(), device)


def run_loop(cfg: Config, model, optimizers, controller, scaler, batches, start, device, earlier) -> None:
    """Steps start..cfg.steps; the monitor logs, checks for NaN, checkpoints and handles signals.
    (--compile compiles the forward of `losses`; the hand-routed backward stays eager.)"""
    forward = torch.compile(losses) if cfg.compile else losses

    def save(step: int) -> None:
        common.save_training_state(cfg.out, SCRIPT, step, dataclasses.asdict(cfg), {"model": model}, optimizers,
                                   scaler, curve_keys(cfg), extra={"controller": controller.state_dict()})

    with common.TrainingMonitor(cfg.out, cfg.steps, cfg.log_every, cfg.ckpt_every, start,
                                cfg.batch_size * cfg.grad_accum * batches.world_size, device, save, earlier) as monitor:
        for step in range(start, cfg.steps):
            for opt in optimizers.values():
                for group in opt.param_groups:
                    group["lr"] = learning_rate(cfg, step)
            xs = [batches.get(step * cfg.grad_accum + i)[0] for i in range(cfg.grad_accum)]
            terms = train_step(model, optimizers, controller, xs, cfg, device, forward, scaler)
            monitor.after_step(step + 1, terms)


def draw_figures(cfg: Config, model: VAEBEGAN, device) -> list:
    """Samples, Fig. 4, Fig. 6 (VAE), Fig. 8 (VAE on CelebA) and the k_t / M_global curves."""
    fig_dir, g, written = os.path.join(cfg.out, "figures"), torch.Generator().manual_seed(cfg.seed), []

    def save(name, images, nrow):
        written.append(os.path.join(fig_dir, name))
        common.save_grid(images, written[-1], nrow)

    with torch.no_grad():
        save("samples.png", model.generator(torch.randn(64, cfg.latent_dim, generator=g).to(device)), 8)
    images, faces = heldout(cfg, device, 2000)  # Fig. 8 averages codes over up to 2,000 faces
    x = images[:64]
    save("fig4_reconstructions.png", fig4_reconstructions(model, x[:8], g), 8)
    if cfg.vae:
        save("fig6_interpolation.png", fig6_interpolation(model, x[:6], x[6:12]), 8)
        if cfg.dataset == "celeba":
            grids = fig8_attribute_vectors(model, images, faces.labels["attributes"][:len(images)],
                                           faces.names["attributes"], g)
            for name, grid in grids.items():
                save(f"fig8_{name}.png", grid, 5)
    common.plot_curves(os.path.join(cfg.out, "metrics.jsonl"), os.path.join(fig_dir, "curves.png"), curve_keys(cfg))
    common.print0("figures: " + ", ".join(os.path.relpath(p, cfg.out) for p in written) + ", curves.png")
    return written


def load_model(cfg: Config, explicit: set, device):
    path = cfg.checkpoint or os.path.join(cfg.out or os.path.join("runs", f"vae_began-{cfg.dataset}-{cfg.image_size}"),
                                          "checkpoint.pt")
    state = common.load_checkpoint(path, SCRIPT)
    controller = state["extra"]["controller"]
    saved = common.merge_saved_config(cfg, state["config"], explicit, RUN_FIELDS, path)
    if "out" not in explicit:
        saved = dataclasses.replace(saved, out=os.path.dirname(os.path.abspath(path)))
    saved = resolve_defaults(saved)
    model = VAEBEGAN(saved)
    model.load_state_dict(state["models"]["model"])
    return model.to(device).eval(), saved, controller


def main(argv: list | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    mode = argv.pop(0) if argv and argv[0] in MODES else "train"
    usage = (__doc__.split("\n")[0] + "\n\nsubcommands: train (the default), sample, figures, eval; "
             "the last three need only --checkpoint (or --out).")
    cfg, explicit = common.parse_config(Config, argv, usage, prog="vae_began.py")
    with common.user_errors():
        if mode == "train":
            return train(resolve_defaults(cfg), explicit)
        device = common.pick_device(cfg.device)
        model, cfg, controller = load_model(cfg, explicit, device)
        if mode == "eval":
            evaluate(cfg, model, controller, device)
        elif mode == "figures":
            draw_figures(cfg, model, device)
        else:
            with torch.no_grad():
                images = model.generator(torch.randn(64, cfg.latent_dim, generator=torch.Generator().manual_seed(cfg.seed)).to(device))
            common.save_grid(images, os.path.join(cfg.out, "figures", "samples.png"), 8)
            print(f"wrote {os.path.join(cfg.out, 'figures', 'samples.png')}")


if __name__ == "__main__":
    main()
