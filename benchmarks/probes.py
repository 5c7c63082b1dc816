"""Probes, effect scores and the biased-MMD floor: numbers read off a trained run that the papers
do not report, so they live here and not in the scripts (which never import this module). The
claims (benchmarks/claims/) read them; a user can too:

    python benchmarks/probes.py vlae --checkpoint runs/vlae-mnist                  # RUN/probes.json
    python benchmarks/probes.py disentangled_vae --checkpoint runs/dvae-mnist-lr-livae

vlae: per latent layer, a linear probe's held-out accuracy of each label (MNIST's class, CelebA's
PROBE_ATTRIBUTES) on mu_l, the effect score (Fig. 3 in one number) and, beside the last training
MMD, the value the biased estimator gives when q = p. disentangled_vae: linear and MLP probes'
held-out accuracy of the class on mu_u, the label that z_u should not carry.
"""
from __future__ import annotations

import argparse
import importlib
import math
import os
import sys
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import common  # noqa: E402
import data  # noqa: E402
import disentangled_vae  # noqa: E402
import vlae  # noqa: E402

PROBE_ATTRIBUTES = ("Smiling", "Male", "Eyeglasses", "Blond_Hair", "Wearing_Hat")  # vlae's probed CelebA labels


# ----------------------------------------------------------------------------------------------
# probes: how much of a label a code carries
# ----------------------------------------------------------------------------------------------
def fit_linear_probe(codes: torch.Tensor, labels: torch.Tensor, n_classes: int, steps: int = 500):
    """A linear softmax classifier fitted on `codes` (N, D) and `labels` (N,) int64 in
    0..n_classes-1: full-batch Adam (lr 1e-2, weight decay 1e-4, `steps` steps) on codes
    standardised with their own mean and std. Returns predict(codes (M, D)) -> (M,) int64 classes."""
    return fit_linear_probes([codes], labels, n_classes, steps)[0]

def fit_linear_probes(code_sets: Sequence[torch.Tensor], labels: torch.Tensor, n_classes: int, steps: int = 500):
    """`fit_linear_probe` on each of several code sets (each (N, D_i)) for the same labels, fitted
    together for speed: the probes share no parameter and their losses add, so each one's Adam
    steps are those of a fit on its own. Returns one predict function per code set."""
    stats = [(c.float().mean(0), c.float().std(0) + 1e-6) for c in code_sets]
    inputs = [(c.float() - m) / s for c, (m, s) in zip(code_sets, stats)]
    probes = nn.ModuleList(nn.Linear(a.shape[1], n_classes) for a in inputs).to(labels.device)
    opt = torch.optim.Adam(probes.parameters(), lr=1e-2, weight_decay=1e-4)
    progress = common.Progress(f"linear probes ({len(inputs)} x {len(labels)} codes)", steps, "steps")
    with torch.enable_grad():
        for _ in range(steps):
            opt.zero_grad()
            sum(F.cross_entropy(p(a), labels) for p, a in zip(probes, inputs)).backward()
            opt.step()
            progress.update()

    def predictor(probe: nn.Module, mean: torch.Tensor, std: torch.Tensor):
        @torch.no_grad()
        def predict(x: torch.Tensor) -> torch.Tensor:
            return probe((x.float() - mean) / std).argmax(1)
        return predict
    return [predictor(p, m, s) for p, (m, s) in zip(probes, stats)]

def probe_accuracy(train_codes, train_labels: torch.Tensor, test_codes, test_labels: torch.Tensor,
                   n_classes: int, steps: int = 500):
    """Held-out accuracy in [0, 1] of a linear probe (`fit_linear_probe`) fitted on the training
    codes: how much of a label a code carries, read linearly. Codes (N, D), labels (N,) int64.
    Given lists of code sets (e.g. one per latent layer), one independent probe each, fitted
    together (`fit_linear_probes`), and a list of accuracies."""
    if isinstance(train_codes, torch.Tensor):
        return probe_accuracy([train_codes], train_labels, [test_codes], test_labels, n_classes, steps)[0]
    predicts = fit_linear_probes(train_codes, train_labels, n_classes, steps)
    return [(predict(b) == test_labels).float().mean().item() for predict, b in zip(predicts, test_codes)]

def mlp_probe_accuracy(train_codes: torch.Tensor, train_labels: torch.Tensor, test_codes: torch.Tensor,
                       test_labels: torch.Tensor, n_classes: int, hidden: int = 256, steps: int = 500) -> float:
    """Held-out accuracy in [0, 1] of a one-hidden-layer MLP probe (`hidden` ReLU units; full-batch
    Adam, lr 1e-2, weight decay 1e-4, `steps` steps, codes standardised as the linear probe's):
    label information that a linear probe can miss, as an MLP adversary would find it.
    Codes (N, D), labels (N,) int64."""
    mean, std = train_codes.float().mean(0), train_codes.float().std(0) + 1e-6
    probe = nn.Sequential(nn.Linear(train_codes.shape[1], hidden), nn.ReLU(),
                          nn.Linear(hidden, n_classes)).to(train_labels.device)
    opt = torch.optim.Adam(probe.parameters(), lr=1e-2, weight_decay=1e-4)
    inputs = (train_codes.float() - mean) / std
    progress = common.Progress(f"MLP probe ({len(inputs)} codes)", steps, "steps")
    with torch.enable_grad():
        for _ in range(steps):
            opt.zero_grad()
            F.cross_entropy(probe(inputs), train_labels).backward()
            opt.step()
            progress.update()
    with torch.no_grad():
        predicted = probe((test_codes.float() - mean) / std).argmax(1)
    return (predicted == test_labels).float().mean().item()

def biased_mmd_floor(n: int, m: int, dim: int, sigma2: float | None = None) -> float:
    """The expected value of the biased (V-statistic) `mmd` when q = p = N(0, I_dim), from n and
    m samples: (1/n + 1/m) * (1 - E_pp[k]), the kernel's diagonal (k = 1) counted in the means.

    For z, z' ~ N(0, I_D), ||z - z'||^2 is 2 chi^2_D, so E exp(-||z - z'||^2 / sigma2) =
    (1 + 4 / sigma2)^(-D/2). With the default sigma2 = D^2 and n = m = 100: 0.0036 at D = 10,
    0.0100 at D = 2. A training MMD near this value is as small as that estimator can go.
    """
    sigma2 = float(dim) ** 2 if sigma2 is None else sigma2
    return (1.0 / n + 1.0 / m) * (1.0 - (1.0 + 4.0 / sigma2) ** (-dim / 2.0))


# ----------------------------------------------------------------------------------------------
# vlae: per-layer probes and effect scores
# ----------------------------------------------------------------------------------------------
def vlae_probe_targets(dataset: data.ImageSet, index) -> dict:
    """The labels a probe can read off the codes: name -> ((N,) int64 labels, classes). MNIST and
    folder data give 'class'; CelebA gives the binary PROBE_ATTRIBUTES it has."""
    targets = {}
    if "class" in dataset.labels:
        targets["class"] = (dataset.labels["class"][index], len(dataset.names["class"]))
    names = dataset.names.get("attributes", [])
    if "attributes" in dataset.labels and dataset.labels["attributes"].dtype == np.uint8:
        for name in (n for n in PROBE_ATTRIBUTES if n in names):
            targets[name] = (dataset.labels["attributes"][index, names.index(name)].astype(np.int64), 2)
    return targets

def vlae_layer_probes(cfg, model, held: data.ImageSet, held_mus: list, device, probe_images: int) -> dict:
    """Held-out accuracy of a linear probe on each layer's mu_l, per label (`probe_accuracy`),
    fitted on the codes of `probe_images` training images (a seeded subset); with the
    majority-class share. held_mus: the held-out images' mu_l, each (N, D_l)."""
    train_set = vlae.load_split(cfg, "train", verbose=False)
    pick = np.sort(np.random.default_rng(cfg.seed).permutation(len(train_set))[:probe_images])
    train_mus, _ = vlae.encode_means(model, vlae.as_inputs(train_set.images[pick], device))
    train_targets, held_targets = vlae_probe_targets(train_set, pick), vlae_probe_targets(held, np.arange(len(held_mus[0])))
    accuracy, majority = {}, {}
    for name, (y_train, classes) in train_targets.items():
        y_held = held_targets[name][0]
        y_train_t, y_held_t = torch.from_numpy(y_train).to(device), torch.from_numpy(y_held).to(device)
        accuracy[name] = probe_accuracy(train_mus, y_train_t, held_mus, y_held_t, classes)  # one probe per layer
        majority[name] = float(np.bincount(y_held, minlength=classes).max() / len(y_held))
    return {"probe_accuracy": accuracy, "probe_majority_accuracy": majority, "probe_train_images": len(pick)}

@torch.no_grad()
def vlae_effect_scores(model, g: torch.Generator, device, bases: int = 8, resamples: int = 64) -> list:
    """Per-layer effect score (Fig. 3 in one number; the paper reports none): the per-pixel std over `resamples` redraws of
    layer l with the others fixed, averaged over pixels and `bases` draws of the others.
    [-1, 1] pixel units; a layer the decoder ignores scores 0."""
    scores = []
    base_draws = [vlae.prior_draw(model, 1, g, device) for _ in range(bases)]
    progress = common.Progress("effect scores", len(model.latent_dims) * bases, "bases")
    for layer in range(len(model.latent_dims)):
        total = 0.0
        for base in base_draws:
            images = vlae.fig_resample_layer(model, layer, base, g, device, n=int(math.sqrt(resamples)))
            total += images.float().std(dim=0).mean().item()
            progress.update()
        scores.append(total / bases)
    return scores


@torch.no_grad()
def vlae_numbers(cfg, model, device, eval_images: int = 1000, probe_images: int = 10_000,
                 effect_bases: int = 8) -> dict:
    """For a loaded vlae run (`vlae.load_run`): per layer the linear probes' held-out accuracies on
    the first `eval_images` held-out images (none with probe_images 0), the effect scores, and
    the last training MMD beside its floor when q = p (`biased_mmd_floor`). Seeded from cfg.seed."""
    common.seed_everything(cfg.seed)
    x, held = vlae.heldout_images(cfg, eval_images, device)
    mus, _ = vlae.encode_means(model, x)
    result = {"heldout_images": len(x)}
    if probe_images:
        result.update(vlae_layer_probes(cfg, model, held, mus, device, probe_images))
    result["effect_score"] = vlae_effect_scores(model, torch.Generator().manual_seed(cfg.seed + 1), device,
                                                effect_bases)
    trained = common.read_jsonl(os.path.join(cfg.out, "metrics.jsonl"))
    if trained and cfg.reg == "mmd":
        result["mmd_train_biased"] = [trained[-1].get(f"mmd_{l}") for l in range(len(model.latent_dims))]
        result["mmd_train_biased_at_q_eq_p"] = [biased_mmd_floor(cfg.batch_size, cfg.prior_samples, d)
                                                for d in model.latent_dims]
    result["units"] = ("probe: held-out accuracy of a linear softmax probe on mu_l fitted on training codes; "
                       "effect_score: mean per-pixel std over 64 redraws of one layer, [-1, 1] pixels; training "
                       "MMD: biased, on a batch vs --prior-samples draws (its expected value when q = p is "
                       "mmd_train_biased_at_q_eq_p, not 0)")
    return result


# ----------------------------------------------------------------------------------------------
# disentangled_vae: does z_u carry the label?
# ----------------------------------------------------------------------------------------------
@torch.no_grad()
def disentangled_z_u_probes(cfg, model, device, train_images: int = 10_000) -> dict:
    """For a loaded disentangled_vae run (`disentangled_vae.load_run`): held-out accuracy of fresh
    linear and MLP probes reading the class from mu_u, fitted on up to `train_images` training
    images (both sets seeded subsets stratified by class), with chance (1 / classes present).
    A z_u free of the label reads at chance."""
    dv = disentangled_vae
    common.seed_everything(cfg.seed)
    x, c, _ = dv.heldout(cfg, device)
    train_set = dv.load_split(cfg, "train", verbose=False)
    index = dv.stratified_subset(train_set.labels["class"], train_images, cfg.seed)
    x_train = dv.model_inputs(cfg, train_set.images[index], device)
    c_train = torch.from_numpy(train_set.labels["class"][index]).to(device)
    _, mu_u, _ = dv.encode_all(model, x, c)
    _, mu_train, _ = dv.encode_all(model, x_train, c_train)
    return {"heldout": len(x), "chance_accuracy": 1.0 / len(c.unique()),
            "acc_z_u_probe": probe_accuracy(mu_train, c_train, mu_u, c, model.n_classes),
            "acc_z_u_mlp_probe": mlp_probe_accuracy(mu_train, c_train, mu_u, c, model.n_classes),
            "units": "accuracies in [0, 1] on held-out images; MLP: 256 ReLU units"}


def main(argv: list | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="benchmarks/probes.py", description=__doc__.split("\n")[0])
    parser.add_argument("script", choices=("vlae", "disentangled_vae"), help="the script that trained the run")
    parser.add_argument("--checkpoint", required=True, help="the run folder or its checkpoint.pt")
    parser.add_argument("--device", default="auto", help="auto (cuda if present), cpu, cuda or cuda:N")
    parser.add_argument("--eval-images", type=int, default=1000, help="vlae: held-out images probed")
    parser.add_argument("--probe-images", type=int, default=10_000, help="vlae: training images the probes fit")
    parser.add_argument("--effect-bases", type=int, default=8, help="vlae: base draws per layer's effect score")
    args = parser.parse_args(argv)
    with common.user_errors():
        device = common.pick_device(args.device)
        script = importlib.import_module(args.script)
        cfg, model, _ = script.load_run(script.Config(checkpoint=args.checkpoint), {"checkpoint"}, device)
        if args.script == "vlae":
            result = vlae_numbers(cfg, model, device, args.eval_images, args.probe_images, args.effect_bases)
        else:
            result = disentangled_z_u_probes(cfg, model, device)
        common.write_json(os.path.join(cfg.out, "probes.json"), result)
        return result


if __name__ == "__main__":
    main()
