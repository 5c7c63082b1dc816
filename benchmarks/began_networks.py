"""Plain BEGAN on MNIST: which networks train. BEGAN's objective, vae_began.py's own training step,
with BEGAN's networks (the paper's: conv + ELU, no normalisation) or the MNIST BEGAN ports' swapped in.

vae_began.py's plain BEGAN (--no-vae --no-lsm --controller p --noise uniform) draws only "1"s on
MNIST at n = 16 under every setting its docstring lists. This trains the same objective, eq. 7's
L_d and L_g, eq. 13-14 with alpha = beta = gamma = 0, BEGAN's proportional k_t update, through
`vae_began.train_step` and the script's optimizers, lr, batch and eta, and changes only the
networks, one side at a time:
    --generator began       vae_began.Decoder: FC to 8x8xn, conv + ELU pairs, linear output
    --generator port        the ports' DCGAN-style G: FC 1024, FC 128x8x8, deconv 64, deconv 1,
                            BatchNorm and ReLU after each hidden layer, tanh output
    --discriminator began   vae_began.AutoEncoder (BEGAN's D)
    --discriminator port    the ports' D: conv 64 stride 2 + ReLU, FC to N, FC back, BatchNorm1d
                            + ReLU, deconv; real and generated batches go through it apart, so
                            the BatchNorm gives D each batch's statistics
    --discriminator port-no-bn   the same without its BatchNorm
(eriklindernoren/PyTorch-GAN and znxlwm/pytorch-generative-model-collections, BEGAN.py; read,
not copied.) benchmarks/claims' digit judge reads 2,000 samples: Inception-style score, Frechet
distance in its features, class TV from uniform. One result line goes to OUT/began_networks.jsonl.

    python benchmarks/began_networks.py --data-dir ../shared/data --generator port --discriminator port
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for path in (ROOT, os.path.join(ROOT, "benchmarks")):
    if path not in sys.path:
        sys.path.insert(0, path)

import common  # noqa: E402
import data  # noqa: E402
import vae_began  # noqa: E402
from claims.shared import judge_scores  # noqa: E402
from claims.vae_began_claims import digit_reader  # noqa: E402

SIZE = 32  # MNIST at 32 px, as the claims


# --model: vae_began.py's flags for Table 1's plain BEGAN, the paper's model and the VAE alone (as the claims)
MODELS = {"began": dict(vae=False, lsm=False, controller="p", noise="uniform"),
          "vae-began-lsm": {},
          "vae": dict(gan=False, kl_weight=0.003125)}


def build(args) -> tuple[vae_began.Config, vae_began.VAEBEGAN]:
    """--model's config (the script's defaults otherwise) and its model: --generator port is
    vae_began.py's --networks mnist (E from the ports too), whose D --discriminator replaces."""
    cfg = vae_began.resolve_defaults(vae_began.Config(
        dataset="mnist", data_dir=os.path.join(args.data_dir, "mnist"), image_size=SIZE, filters=args.filters,
        latent_dim=args.latent_dim, seed=args.seed, networks="mnist" if args.generator == "port" else "began",
        **MODELS[args.model], **{k: v for k, v in (("batch_size", args.batch_size), ("eta", args.eta)) if v}))
    common.seed_everything(cfg.seed)
    model = vae_began.VAEBEGAN(cfg)  # both the ports' networks: exactly vae_began.py --networks mnist
    if cfg.gan and args.discriminator != ("port" if cfg.networks == "mnist" else "began"):  # the other D
        model.discriminator = (vae_began.AutoEncoder(SIZE, cfg.filters, cfg.latent_dim, channels=1)
                               if args.discriminator == "began" else
                               vae_began.PortAutoEncoder(cfg.latent_dim, batchnorm=args.discriminator == "port"))
    return cfg, model


def train(args) -> dict:
    """--steps of vae_began.train_step; returns k_t over the second half and the judge's scores."""
    device = torch.device("cpu")
    cfg, model = build(args)
    optimizers = vae_began.make_optimizers(model, cfg, device)
    controller = vae_began.Controller.start(vae_began.gains(cfg), device)
    batches = data.Batches(vae_began.load_split(cfg, "train", verbose=False), cfg.batch_size, cfg.seed, device)
    claims_args = argparse.Namespace(data_dir=args.data_dir, work=args.work, scale="small", seed=0)
    judge_, _, real_features = digit_reader(claims_args, {"samples": 2000}, device)  # the claims' judge and digits

    def judged() -> tuple[torch.Tensor, dict]:
        """--samples from the prior (the same z every time), in [0, 1], and the judge's scores."""
        model.eval()
        with torch.no_grad():
            z = vae_began.prior_noise(args.samples, cfg, device, torch.Generator().manual_seed(args.seed))
            samples = torch.cat([model.generator(c) for c in z.split(500)]).add(1).div(2).clamp(0, 1)
        model.train()
        return samples, judge_scores(judge_, samples, real_features)

    t0, k_late, trajectory = time.time(), [], []
    for step in range(args.steps):
        terms = vae_began.train_step(model, optimizers, controller, [batches.get(step)[0]], cfg, device)
        if step >= args.steps // 2:
            k_late.append(terms["k_t"].item())
        if step % 200 == 0:
            print(f"step {step}: L_d {terms['L_d'].item():.4f} L_g {terms['L_g'].item():.4f} "
                  f"k_t {terms['k_t'].item():.4f} ({time.time() - t0:.0f} s)", flush=True)
        if args.judge_every and (step + 1) % args.judge_every == 0 and step + 1 < args.steps:
            trajectory.append({"step": step + 1, "k_t": terms["k_t"].item(),
                               **{k: round(v, 3) for k, v in judged()[1].items() if k in ("is", "fd", "tv")}})
            print(json.dumps(trajectory[-1]), flush=True)
    samples, scores = judged()
    common.save_grid(samples[:64] * 2 - 1, os.path.join(args.out, f"{args.model}-{args.generator}-{args.discriminator}.png"), 8)
    return {"model": args.model, "generator": args.generator, "discriminator": args.discriminator, "steps": args.steps,
            "batch_size": cfg.batch_size, "eta": cfg.eta, "seed": args.seed, "seconds": round(time.time() - t0),
            "k_t_second_half": float(np.mean(k_late)) if k_late else 0.0,
            "classes": torch.bincount(judge_.predict(samples), minlength=10).tolist(), **scores,
            **({"trajectory": trajectory} if trajectory else {})}


def main(argv: list | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", required=True, help="the folder holding mnist/ (t10k IDX files)")
    parser.add_argument("--model", choices=tuple(MODELS), default="began",
                        help="began (Table 1's plain BEGAN), vae-began-lsm (the paper's) or vae (the VAE alone)")
    parser.add_argument("--generator", choices=("began", "port"), default="port", help="G (and E with the VAE)")
    parser.add_argument("--discriminator", choices=("began", "port", "port-no-bn"), default="port")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=0, help="0: vae_began.py's default")
    parser.add_argument("--eta", type=float, default=0.0, help="0: vae_began.py's default")
    parser.add_argument("--filters", type=int, default=16, help="n of BEGAN's networks")
    parser.add_argument("--latent-dim", type=int, default=32)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--judge-every", type=int, default=0, help="also judge the samples every this many steps")
    parser.add_argument("--work", default="runs/claims/small", help="where the claims' judge is cached")
    parser.add_argument("--out", default="runs/began_networks")
    args = parser.parse_args(argv)
    with common.user_errors():
        result = train(args)
    print(json.dumps(result))
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "began_networks.jsonl"), "a") as f:
        f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
