"""disentangled: Zheng & Sun 2019, Lr-LiVAE's claims."""
from __future__ import annotations

import os
import shutil
import time

import numpy as np
import torch

import data
import disentangled_vae

from .shared import (
    Judge, Row, Run, data_folder, eval_json, footer, judge, publish, train_run, verdict)


DISENTANGLED_SCALES = {
    "small": {"steps": 150, "batch": 64, "unseen": "7,8,9", "finetune": 60, "eval": 1000, "div_classes": 7,
              "div_samples": 10, "toy_steps": 0, "swaps": 500},
    "paper": {"steps": 52_000, "batch": 96, "unseen": "7,8,9", "finetune": 5000, "eval": 2000, "div_classes": 7,
              "div_samples": 20, "toy_steps": 0, "swaps": 2000},
    "tiny": {"steps": 2, "batch": 8, "unseen": "7,8,9", "finetune": 2, "eval": 50, "div_classes": 2,
             "div_samples": 3, "toy_steps": 10, "swaps": 20},
}


def disentangled_runs(args, scale: dict) -> dict:
    """Lr-LiVAE and the cVAE-GAN baseline (with Bao et al.'s pieces, --bao) on MNIST without labels
    of the unseen digits, the two on the toy data (Fig. 2), and Lr-LiVAE finetuned on the unseen
    digits (sec. 3.6)."""
    mnist = data_folder(args.data_dir, "mnist", "MNIST's gzipped IDX files")
    argv = ["--dataset", "mnist", "--data-dir", mnist, "--steps", str(scale["steps"]), "--batch-size",
            str(scale["batch"]), "--seed", str(args.seed), "--unseen-classes", scale["unseen"], "--eval-images",
            str(scale["eval"]), "--diversity-classes", str(scale["div_classes"]), "--diversity-samples",
            str(scale["div_samples"]), "--log-every", "50" if args.scale != "tiny" else "1"]
    models = {"lr-livae": ["--model", "lr-livae"], "cvae-gan": ["--model", "cvae-gan", "--bao"]}
    name = lambda model: model + ("-bao" if "--bao" in models[model] else "")
    runs = {model: train_run(disentangled_vae, f"mnist-{name(model)}", argv + flags, args.work, args.reuse)
            for model, flags in models.items()}
    toy = ["--dataset", "toy", "--seed", str(args.seed), "--log-every", "200" if args.scale != "tiny" else "1"]
    toy_steps = scale["toy_steps"] or disentangled_vae.resolve_defaults(disentangled_vae.Config(dataset="toy")).steps
    toy += ["--steps", str(toy_steps)] + (["--toy-points", "100"] if args.scale == "tiny" else [])
    for model, flags in models.items():
        runs[f"toy-{model}"] = train_run(disentangled_vae, f"toy-{name(model)}", toy + flags, args.work, args.reuse)
    t0 = time.time()
    disentangled_vae.main(["finetune", "--checkpoint", os.path.join(runs["lr-livae"].out, "checkpoint.pt"),
                           "--finetune-steps", str(scale["finetune"])])
    runs["finetune"] = Run("finetune", os.path.join(runs["lr-livae"].out, "finetune"),
                           f"the training images of the unseen digits {scale['unseen']}, labels unused",
                           scale["finetune"], time.time() - t0)
    return runs


TOY_BAND = 0.45  # 3 sd of the toy data's noise: a generated point this close to its curve is on it


def along_curve_spread(points: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Fig. 2's label-irrelevant axis is the position along each class's half circle. Returns the
    spread along it, the sd of the angle t (radians) of the points within TOY_BAND of their curve,
    averaged over classes (points uniform on a half circle: pi / sqrt(12) = 0.907), and the share
    of points within the band (how many are on their curve at all)."""
    t, offset = data.toy_curve_coordinates(points, labels)
    near = np.abs(offset) < TOY_BAND
    spreads = [t[near & (labels == k)].std() if (near & (labels == k)).sum() > 1 else 0.0 for k in np.unique(labels)]
    return float(np.mean(spreads)), float(near.mean())


@torch.no_grad()
def toy_prior_width(run_out: str) -> float:
    """How much wider p(z_s|c) is than the codes E_s gives the class's training points: the mean
    over classes and dims of sqrt(Sigma_k) / sd(E_s(x) | c = k). 1 when prior samples land where
    the encoder puts real points; above 1 they fall off the decoder's trained region."""
    cfg, model, _ = disentangled_vae.load_models(disentangled_vae.Config(checkpoint=os.path.join(run_out, "checkpoint.pt")),
                                                 set(), torch.device("cpu"))[0]
    points, labels = data.toy_data(cfg.toy_points, cfg.seed)
    train = data.toy_split(cfg.toy_points, "train")
    z_s = model.encoder_s(torch.from_numpy(points[train])).numpy()
    _, logvar = model.prior.params(detach=True)
    sd = np.exp(0.5 * logvar.numpy())
    return float(np.mean([sd[k] / z_s[labels[train] == k].std(0) for k in range(model.n_classes)]))


def claim_toy_spread(runs: dict) -> Row:
    """Fig. 2: with the label-relevant code split off, generated toy points spread along each half
    circle (the label-irrelevant direction) where the cVAE-GAN's collapse (sec. 4.1). Measured on
    each run's last snapshot by `along_curve_spread`, the real points' beside it. Holds if
    Lr-LiVAE's spread along the curve is larger."""
    measured = {}
    for name in ("toy-lr-livae", "toy-cvae-gan"):
        folder = os.path.join(runs[name].out, "toy")
        snap = np.load(os.path.join(folder, sorted(os.listdir(folder))[-1]))
        measured[name] = along_curve_spread(snap["points"], snap["labels"])
    real = along_curve_spread(*data.toy_data(3000, 0))
    (ours, ours_on), (base, base_on) = measured["toy-lr-livae"], measured["toy-cvae-gan"]
    ok, width = ours > base, toy_prior_width(runs["toy-lr-livae"].out)
    return Row("Fig. 2: generated toy points spread along each class's curve, more than the cVAE-GAN's",
               "sec. 4.1, Fig. 2", f"sd of the position along the curve (angle, radians) of generated points "
               f"within {TOY_BAND} of their class's half circle, mean over 3 classes: Lr-LiVAE {ours:.3f}, cVAE-GAN "
               f"{base:.3f}, real points {real[0]:.3f}; share of points that near their curve: {ours_on:.2f}, "
               f"{base_on:.2f}, real {real[1]:.2f}", verdict([ok]),
               "Lr-LiVAE spreads more along the curves" if ok else "the baseline spreads as much or more",
               "" if ok else f"only {ours_on:.0%} of Lr-LiVAE's points lie near their curve ({base_on:.0%} of the "
               f"baseline's), and the class Gaussians it samples z_s from are {width:.2f}x as wide as the codes E_s "
               f"gives the training points (after {runs['toy-lr-livae'].steps} steps), so many samples fall where "
               f"the decoder was never trained")


def claim_codes(runs: dict) -> list:
    """Sec. 4.2 (Tables 1 and 3): z_s carries the label, z_u does not. z_s holds if its held-out
    accuracy (nearest mixture component) is at least 0.9; z_u holds if both the linear and the MLP
    probe on mu_u stay within 0.1 of the chance level of the classes present ('mixed' if one)."""
    r = eval_json(runs["lr-livae"])
    z_s = r["acc_z_s_nearest_component"]
    lin, mlp, chance = r["acc_z_u_probe"], r["acc_z_u_mlp_probe"], r["chance_accuracy"]
    parts = [lin <= chance + 0.1, mlp <= chance + 0.1]
    return [Row("z_s carries the label", "sec. 4.2", f"held-out accuracy of z_s by the nearest mixture component: "
                f"{z_s:.3f} ({r['heldout']} digits of {r['classes_present']} seen classes)",
                verdict([z_s >= 0.9]), f"{z_s:.3f}"),
            Row("z_u does not carry the label", "sec. 4.2", f"held-out accuracy on mu_u: linear probe {lin:.3f}, "
                f"MLP probe {mlp:.3f}, the adversary C {r['acc_z_u_adversary']:.3f}; chance {chance:.3f}, majority "
                f"class {r['majority_accuracy']:.3f}", verdict(parts), f"within 0.1 of chance: linear "
                f"{'yes' if parts[0] else 'no'}, MLP {'yes' if parts[1] else 'no'}",
                "" if all(parts) else f"at {runs['lr-livae'].steps} steps the adversary has not yet driven the "
                f"label out of z_u; C itself reads {r['acc_z_u_adversary']:.3f}")]


@torch.no_grad()
def swap_reading(run_out: str, judge_: Judge, which: str, n: int, seed: int, device) -> tuple[float, float]:
    """G(z_s of image a, mu_u of image b) for n held-out pairs of different classes (`which`:
    seen or unseen classes); the share the judge reads as a's class, and as b's."""
    cfg, model, _ = disentangled_vae.load_models(disentangled_vae.Config(checkpoint=os.path.join(run_out, "checkpoint.pt")),
                                                 set(), device)[0]
    held = disentangled_vae.load_split(cfg, "test", verbose=False, which=which)
    digit = np.array([int(name) for name in held.names["class"]])[held.labels["class"]]
    g = np.random.default_rng(seed)
    a, b = g.integers(0, len(held), n), g.integers(0, len(held), n)
    keep = digit[a] != digit[b]
    a, b = a[keep], b[keep]
    x_a, x_b = (disentangled_vae.model_inputs(cfg, held.images[i], device) for i in (a, b))
    c_a, c_b = (torch.from_numpy(held.labels["class"][i]).to(device) for i in (a, b))
    images = model.decode(model.code_s(x_a, c_a), model.encode_u(x_b, c_b)[0])
    read = judge_.predict(((images.float() + 1) / 2).clamp(0, 1).cpu()).numpy()
    return float((read == digit[a]).mean()), float((read == digit[b]).mean())


def claims_disentangled(args, device) -> None:
    scale, t0 = DISENTANGLED_SCALES[args.scale], time.time()
    runs = disentangled_runs(args, scale)
    judge_ = judge(args, device)
    rows = [claim_toy_spread(runs), *claim_codes(runs)]
    as_a, as_b = swap_reading(runs["lr-livae"].out, judge_, "seen", scale["swaps"], args.seed, device)
    rows.append(Row("Swap: G(z_s of a, z_u of b) shows a's class", "sec. 4.2, Fig. 6",
                    f"judge reads the z_s image's class in {as_a:.3f} of held-out swaps of seen digits, the z_u "
                    f"image's in {as_b:.3f} (judge {judge_.accuracy:.3f} on real digits)",
                    verdict([as_a >= 0.8]), f"{as_a:.3f}",
                    "" if as_a >= 0.8 else "z_u still carries the class (the z_u row), so G reads the class from both "
                    "codes and a swap often shows the z_u image's digit"))
    a, b = eval_json(runs["lr-livae"]), eval_json(runs["cvae-gan"])
    ok = a["diversity_1_minus_ms_ssim"] > b["diversity_1_minus_ms_ssim"]
    rows.append(Row("Table 2: samples of a class are more diverse than the cVAE-GAN's", "sec. 4.2, Table 2",
                    f"1 - mean within-class MS-SSIM of generated digits ([0, 1] pixels): Lr-LiVAE "
                    f"{a['diversity_1_minus_ms_ssim']:.3f}, cVAE-GAN {b['diversity_1_minus_ms_ssim']:.3f} "
                    f"({scale['div_classes']} classes x {scale['div_samples']} samples)", verdict([ok]),
                    "Lr-LiVAE more diverse" if ok else "the baseline is as diverse or more"))
    unseen_a, unseen_b = swap_reading(runs["finetune"].out, judge_, "unseen", scale["swaps"], args.seed, device)
    rows.append(Row(f"Sec. 3.6: after finetuning on unlabelled digits {scale['unseen']}, swaps keep the unseen "
                    f"digit's class", "sec. 3.6", f"judge reads the z_s image's class in {unseen_a:.3f} of held-out "
                    f"swaps among the unseen digits, the z_u image's in {unseen_b:.3f} ({scale['finetune']} finetune "
                    f"steps)", verdict([unseen_a > 0.5]), f"{unseen_a:.3f}",
                    "" if unseen_a > 0.5 else "E_s learned the unseen digits only through the reconstruction and the "
                    "mixture's total Gaussian; in this budget their z_s does not yet separate them"))
    figures = []
    os.makedirs(os.path.join(args.out, "disentangled"), exist_ok=True)
    for run, name, caption in ((runs["toy-lr-livae"], "fig2_toy.png", "Fig. 2, Lr-LiVAE: real points, then generated "
                                "points at each saved epoch"),
                               (runs["toy-cvae-gan"], "fig2_toy.png", "Fig. 2, the cVAE-GAN baseline"),
                               (runs["lr-livae"], "fig6_swap.png", "Fig. 6 on seen digits: z_s from the row image, "
                                "z_u from the column image"),
                               (runs["finetune"], "unseen_swap.png", f"Sec. 3.6 on the unseen digits {scale['unseen']} "
                                "after finetuning without their labels: the same swap"),
                               (runs["lr-livae"], "sec4_3_traverse_z_u.png", "Sec. 4.3: the z_u dimensions that change "
                                "the image most, each swept from -2 to 2 (a row each)")):
        target = f"disentangled/{run.name}_{name}"
        shutil.copy(os.path.join(run.out, "figures", name), os.path.join(args.out, target))
        figures.append((target, caption))
    header = ["Paper: Z. Zheng & L. Sun, Disentangling Latent Space for VAE by Label Relevant/Irrelevant "
              "Dimensions, CVPR 2019",
              f"Data: MNIST digits under --data-dir ({args.data_dir}) with the digits {scale['unseen']} kept out of "
              f"labelled training (seen-class claims on the other 7), and the toy half circles of Fig. 2",
              f"Scale: {args.scale}; {scale['steps']} iterations at batch {scale['batch']} (each 3 stage-1 steps and "
              f"one joint step), the code's other settings; {scale['finetune']} finetune steps; one seed ({args.seed})",
              "Baseline: the cVAE-GAN with Bao et al. 2017's pieces (`--model cvae-gan --bao`: the encoder sees the "
              "label, an auxiliary image classifier, mean and pairwise feature matching), the same networks, "
              "discriminator and steps as Lr-LiVAE",
              f"Judge: {judge_.description}",
              *[f"Run `{r.name}`: {r.data}; {r.steps} steps; " + (f"trained in {r.seconds:.0f} s (an earlier "
                f"invocation's run, reused)" if r.reused else f"done in {r.seconds:.0f} s") for r in runs.values()],
              "Faces (celeba_identities, 149 identities) are not in the small scale's 20-minute budget (a VGG16-BN "
              "step at 64 px takes seconds on 2 cores). At the paper's settings (64 px, VGG16-BN encoders, batch "
              "96, 52,000 iterations; a GPU job): `python disentangled_vae.py --dataset folder --data-dir "
              "../shared/data/celeba_identities --crop 50,25,128,128 --out runs/dvae-faces` then `python "
              "disentangled_vae.py eval --checkpoint runs/dvae-faces/checkpoint.pt` gives the z_s and z_u "
              "accuracies on held-out faces of the seen identities (eval.json: acc_z_s_nearest_component, "
              "acc_z_u_probe, acc_z_u_mlp_probe)",
              *footer("disentangled", runs, t0, args)]
    publish(args, "disentangled", "Lr-LiVAE (Zheng & Sun 2019): the paper's claims, measured", header, rows, figures,
            ("fig2_toy", "fig6_swap", "unseen_swap"))
