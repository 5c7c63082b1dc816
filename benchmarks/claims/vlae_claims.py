"""vlae: Xu 2018, the MMD variational ladder autoencoder's claims."""
from __future__ import annotations

import json
import os
import shutil
import time

import numpy as np
import torch
import torch.nn.functional as F

import common
import data
import probes
import vlae

from .shared import (
    Row, Run, accuracy_gap_se, data_folder, eval_json, fmt, machine, pixel_probe, report_path, scale_settings,
    train_run, update_readme, verdict, write_report, rule_changes)


RULE_CHANGES = [  # since the previous report; each rule fixed before the run that reads it
    "MMD vs KL: was 'more active units' (both models filled all 40) with the KL's warm-up on (its weight 0.16 at "
    "step 350); now each code's rate per dimension with a bootstrap SE, the KL baseline trained with its warm-up off",
    "Fig. 3: was 'z0's colour share is the largest' with no SE; now z0's share must lead every layer by 2 SE of the "
    "paired difference over 32 bases (was 16); the share, not the absolute variance, is the paper's measure",
    "Fig. 4: the latent result must also be nearer the pale women than decode(mu(c)), the dark woman's own "
    "reconstruction, on a majority of rows",
]
VLAE_SCALES = {  # steps, batch and image size of each run, base draws of the redraw measures; 'tiny': the tests' smoke run
    "small": {"mnist_steps": 1200, "mnist_batch": 100, "face_steps": 350, "face_batch": 64, "face_size": 32, "bases": 64},
    "paper": {"mnist_steps": 30_000, "mnist_batch": 100, "face_steps": 100_000, "face_batch": 100, "face_size": 64,
              "bases": 64},
    "tiny": {"mnist_steps": 3, "mnist_batch": 16, "face_steps": 2, "face_batch": 8, "face_size": 16, "bases": 4},
    # one H200, about 3 minutes: the project path trains the 64 px face model at 3,845 img/s at batch
    # 100 (benchmarks/bench.py, 2026-12), so 1,000 steps per face run take ~26 s (MMD and KL), and
    # MNIST's 3,000 steps (28 px, a smaller network) at most ~80 s; eval and the measures the rest
    "medium": {"mnist_steps": 3000, "mnist_batch": 100, "face_steps": 1000, "face_batch": 100, "face_size": 64,
               "bases": 64},
}


def vlae_mnist_runs(args, scale: dict) -> dict:
    """The MMD model (the paper) on MNIST. (The KL baseline trains on faces, where the paper's
    argument for MMD bites: `vlae_face_runs`.)"""
    mnist = data_folder(args.data_dir, "mnist", "MNIST's gzipped IDX files")
    argv = ["--dataset", "mnist", "--data-dir", mnist, "--steps", str(scale["mnist_steps"]),
            "--batch-size", str(scale["mnist_batch"]), "--seed", str(args.seed), "--log-every", "100"]
    if args.scale == "tiny" or args.dry_run:
        argv += ["--eval-images", "100", "--bn-images", "200", "--log-every", "1"]
    return {"mmd": train_run(vlae, "mnist-mmd", argv + ["--reg", "mmd"], args.work, args.reuse)}


def load_vlae(run: Run, device):
    """The trained model (eval mode, population BatchNorm statistics) and its config."""
    cfg, model, _ = vlae.load_run(vlae.Config(checkpoint=run.out), set(), device)
    return model, cfg


def run_numbers(run: Run, model, cfg, args, device, probe: bool = True) -> dict:
    """The run's eval.json with benchmarks/probes.py's numbers for its loaded model on the same
    held-out images: per-layer linear-probe accuracies (fitted on 10,000 training images; 200 / 40
    in a tiny run) and effect scores (8 bases; 2 in a tiny run)."""
    result = eval_json(run)
    tiny = args.scale == "tiny" or args.dry_run
    probe_images = (200 if cfg.dataset == "mnist" else 40) if tiny else 10_000
    return {**result, **probes.vlae_numbers(cfg, model, device, result["heldout_images"], probe_images if probe else 0,
                                            2 if tiny else 8)}


def probe_row(claim: str, where: str, what: str, acc: list, hi: int, lo: int, result: dict, note: str) -> Row:
    """A row comparing two layers' held-out probe accuracies: holds if layer `hi` beats layer `lo`
    by more than 2 standard errors of the difference (each accuracy binomial on the held-out set)."""
    n = result["heldout_images"]
    se = accuracy_gap_se(acc[hi], acc[lo], n)
    ok = acc[hi] - acc[lo] > 2 * se
    return Row(claim, where, f"held-out linear-probe accuracy of the {what} on mu_l, bottom to top: {fmt(acc)} "
               f"({n} held out; majority class {result['probe_majority_accuracy']['class']:.3f}); difference "
               f"{acc[hi] - acc[lo]:+.3f}, standard error {se:.3f}", verdict([ok]),
               f"layer {hi} vs {lo}: {acc[hi]:.3f} vs {acc[lo]:.3f}, " + ("more than" if ok else "not") + " 2 SE apart",
               "" if ok else note)


def claim_probe_hierarchy(run: Run, args, device) -> Row:
    """"Deep layers hold high-level features" (sec. 2.2; Fig. 2's reading: the top layer is the
    digit's identity). Holds if a linear probe on the top layer's mu reads the held-out digit
    class more accurately than the same probe on the bottom layer's mu, by more than 2 SE."""
    result = run_numbers(run, *load_vlae(run, device), args, device)
    acc = result["probe_accuracy"]["class"]
    return probe_row("A linear probe reads the digit class better from the top layer than from the bottom",
                     "sec. 2.2, Fig. 2", "digit class", acc, len(acc) - 1, 0, result,
                     f"with 2 dims per layer no layer holds the class alone (best {max(acc):.3f}); the paper reads "
                     f"its Fig. 2 by eye")


@torch.no_grad()
def layer_changes(model, classify, device, seed: int, bases: int = 64, redraws: int = 16) -> dict:
    """Per layer and base draw: redraw the layer `redraws` times from N(0, I) with every other
    layer fixed at the base (the same `bases` bases for every layer, so layers compare paired),
    decode, and measure what changed: the share of redraws whose pixel-probe class differs from
    the base image's (identity), and, among redraws that keep the class, the std of the ink (mean
    pixel in [0, 1]) and of the slant (mu_11 / mu_02, the horizontal shift per row of the centred
    image moments): Fig. 2's stroke width and slant. Returns name -> (layers, bases) arrays (NaN
    where fewer than 2 redraws kept the class)."""
    g = torch.Generator().manual_seed(seed)
    base_draws = [vlae.prior_draw(model, 1, g, device) for _ in range(bases)]
    size = model.decode(base_draws[0]).shape[-1]
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij")
    out = {key: np.full((len(model.latent_dims), bases), np.nan) for key in ("identity", "ink", "slant")}
    for layer in range(len(model.latent_dims)):
        for i, base in enumerate(base_draws):
            zs = [z.expand(redraws + 1, -1).clone() for z in base]
            zs[layer][1:] = torch.randn(redraws, model.latent_dims[layer], generator=g).to(device)
            images = ((model.decode(zs).float().cpu()[:, 0] + 1.0) / 2.0).clamp(0, 1)   # (R+1, H, W) in [0, 1]
            labels = classify(images.flatten(1).to(device)).cpu()
            same = labels[1:] == labels[0]
            out["identity"][layer, i] = 1.0 - same.float().mean().item()
            kept = images[1:][same]
            if len(kept) >= 2:
                mass = kept.sum((1, 2)) + 1e-6
                cx, cy = (kept * xs).sum((1, 2)) / mass, (kept * ys).sum((1, 2)) / mass
                dx, dy = xs - cx[:, None, None], ys - cy[:, None, None]
                slant = (kept * dx * dy).sum((1, 2)) / ((kept * dy * dy).sum((1, 2)) + 1e-6)
                out["ink"][layer, i], out["slant"][layer, i] = kept.mean((1, 2)).std().item(), slant.std().item()
    return out


def leads(values: np.ndarray, layer: int) -> tuple[bool, list, list]:
    """Whether `layer`'s per-base values exceed every other layer's by more than 2 standard
    errors of the paired difference (bases where both are measured); the layers' means and SEs."""
    means = [float(np.nanmean(v)) for v in values]
    ses = [float(np.nanstd(v) / np.sqrt(max(np.isfinite(v).sum(), 1))) for v in values]
    wins = []
    for other in range(len(values)):
        if other != layer:
            diff = values[layer] - values[other]
            diff = diff[np.isfinite(diff)]
            wins.append(len(diff) >= 2 and diff.mean() > 2 * diff.std() / np.sqrt(len(diff)))
    return all(wins), means, ses


def claims_fig2(run: Run, device, seed: int, bases: int, redraws: int = 16) -> tuple[list, float]:
    """Two rows for Fig. 2 ("bottom = stroke width, middle = slant, top = digit identity", sec. 3),
    each layer tested for its own effect against every other layer, paired over shared bases.
    Identity holds if the top layer's redraws change the pixel-probe class more often than each
    other layer's by more than 2 SE. Style holds if the bottom layer leads the ink (stroke width)
    and the middle layer leads the slant, each by more than 2 SE ('mixed' if one of the two)."""
    model, cfg = load_vlae(run, device)
    train = data.load_dataset("mnist", cfg.data_dir, "train", 28)
    test = data.load_dataset("mnist", cfg.data_dir, "test", 28)
    classify, pixel_accuracy = pixel_probe(train, test, device)
    ch = layer_changes(model, classify, device, seed, bases, redraws)
    top = len(model.latent_dims) - 1
    (ident_ok, ident, ident_se), (ink_ok, ink, ink_se), (slant_ok, slant, slant_se) = (
        leads(ch["identity"], top), leads(ch["ink"], 0), leads(ch["slant"], top // 2))
    show = lambda m, e: " / ".join(f"{a:.3g} +- {b:.2g}" for a, b in zip(m, e))
    rows = [Row("Fig. 2: redrawing the top layer changes the digit's identity, more than any other layer",
                "sec. 3, Fig. 2", f"share of redraws whose digit class changes, bottom to top (mean +- SE over "
                f"{bases} shared bases x {redraws} redraws per layer): {show(ident, ident_se)} (classes read by a "
                f"linear pixel probe, {pixel_accuracy:.3f} held-out accuracy)", verdict([ident_ok]),
                f"top {ident[-1]:.3f} vs bottom {ident[0]:.3f}: " + ("ahead of every layer by more than 2 SE"
                                                                     if ident_ok else "not ahead of every layer by 2 SE"),
                "" if ident_ok else f"layer {int(np.argmax(ident))} (0 = bottom) changes the class most at this scale"),
            Row("Fig. 2: the bottom layer carries stroke width and the middle one slant", "sec. 3, Fig. 2",
                f"among redraws that keep the class (mean +- SE over bases), bottom to top: std of ink (mean pixel, "
                f"[0, 1]) {show(ink, ink_se)}; std of slant (row shift per row) {show(slant, slant_se)}",
                verdict([ink_ok, slant_ok]), f"ink led by the bottom: {'yes' if ink_ok else 'no'}; slant led by the "
                f"middle: {'yes' if slant_ok else 'no'}", "" if ink_ok and slant_ok else
                f"here ink is led by layer {int(np.argmax(ink))} and slant by layer {int(np.argmax(slant))} (0 = bottom)")]
    return rows, pixel_accuracy


@torch.no_grad()
def heldout_rates(run: Run, device, n: int = 1000) -> tuple[torch.Tensor, dict]:
    """KL(q(z_d|x) || N(0, 1)) per held-out face and latent dim, (N, 40) in nats, the code's rate:
    a dim the model ignores has q(z_d|x) = p(z_d) and rate 0. Also the run's eval.json."""
    model, cfg = load_vlae(run, device)
    x, _ = vlae.heldout_images(cfg, n, device)
    mus, logvars = vlae.encode_means(model, x)
    mu, logvar = torch.cat(mus, 1), torch.cat(logvars, 1)
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar), eval_json(run)


def claim_mmd_vs_kl(runs: dict, device, draws: int = 1000) -> Row:
    """"MMD ... avoids the [KL's] tendency to ignore latent codes" (sec. 2.3, the paper's reason
    for MMD, after InfoVAE), tested where it can bite: 10-dim layers on faces, the KL baseline at
    the reference's face loss_ratio 0.5 with its KL warm-up off (weight 1 from the first step), so
    that after the short run the KL term has its full weight. The measure is each code's rate per
    dimension (mean over held-out faces of KL(q(z_d|x) || N(0, 1)), nats), not a count of active
    units, which both models fill. Holds if the MMD model's mean rate exceeds the KL model's by
    more than 2 SE (a bootstrap over faces) and its held-out L1 reconstruction error is at most
    2% above the baseline's ('mixed' if one of the two)."""
    (r_mmd, mmd), (r_kl, kl) = heldout_rates(runs["mmd"], device), heldout_rates(runs["kl"], device)
    g = torch.Generator().manual_seed(0)
    boot = [(r_mmd[torch.randint(len(r_mmd), (len(r_mmd),), generator=g)].mean()
             - r_kl[torch.randint(len(r_kl), (len(r_kl),), generator=g)].mean()).item() for _ in range(draws)]
    gap, se = (r_mmd.mean() - r_kl.mean()).item(), float(np.std(boot))
    l1_mmd, l1_kl = mmd["recon_l1_per_element"], kl["recon_l1_per_element"]
    per_layer = lambda r: fmt([r[:, 10 * l:10 * l + 10].mean().item() for l in range(4)])
    parts = [gap > 2 * se, l1_mmd <= 1.02 * l1_kl]
    return Row("MMD keeps more information in its codes than KL on 10-dim face layers, and reconstructs as well",
               "sec. 2.3-2.4", f"rate KL(q(z_d|x) || N(0, 1)) per dim (nats, mean over {len(r_mmd)} held-out faces), "
               f"z0 to z3: MMD {per_layer(r_mmd)}, KL {per_layer(r_kl)}; mean over the 40 dims MMD "
               f"{r_mmd.mean().item():.3f}, KL {r_kl.mean().item():.3f}, difference {gap:+.3f} (bootstrap SE {se:.3f}); "
               f"lowest dim MMD {r_mmd.mean(0).min().item():.3f}, KL {r_kl.mean(0).min().item():.3f}; active units MMD "
               f"{sum(mmd['active_units'])}, KL {sum(kl['active_units'])} of 40; held-out L1 per pixel ([-1, 1]): MMD "
               f"{l1_mmd:.4f}, KL {l1_kl:.4f} ({runs['mmd'].steps} steps each; KL at loss_ratio "
               f"{json.load(open(os.path.join(runs['kl'].out, 'config.json')))['kl_recon_weight']:g}, warm-up off)",
               verdict(parts), f"rate {'higher by more than 2 SE' if parts[0] else 'not higher by 2 SE'}, "
               f"{'matches or beats' if parts[1] else 'worse'} reconstruction")


def vlae_face_runs(args, scale: dict) -> dict:
    """MMD-VLAE and the KL baseline on the faces of celeba_identities (a folder per identity,
    CelebA's aligned JPEGs) with the reference's crop, 10-dim layers, the reference's face
    balance (KL at loss_ratio 0.5); small scale at 32x32. The paper scale trains on full CelebA."""
    if args.scale == "paper":
        argv = ["--dataset", "celeba", "--data-dir", data_folder(args.data_dir, "celeba", "the full CelebA")]
    else:
        argv = ["--dataset", "folder", "--crop", ",".join(map(str, vlae.CELEBA_CROP)),
                "--data-dir", data_folder(args.data_dir, "celeba_identities", "CelebA faces, a folder per identity")]
    argv += ["--image-size", str(scale["face_size"]), "--steps", str(scale["face_steps"]),
             "--batch-size", str(scale["face_batch"]), "--seed", str(args.seed), "--log-every", "50"]
    if args.scale == "tiny" or args.dry_run:
        argv += ["--eval-images", "20", "--bn-images", "40", "--log-every", "1"]
    # the KL run serves only the MMD-vs-KL row, its warm-up off so that the KL has its full weight
    # within the short run (its reference value, 1 - exp(-t / 2000), is 0.16 at step 350)
    runs = {"mmd": train_run(vlae, "faces-mmd", argv + ["--reg", "mmd"], args.work, args.reuse)}
    runs["kl"] = train_run(vlae, "faces-kl-nowarmup", argv + ["--reg", "kl", "--kl-warmup", "1e-9"], args.work, args.reuse)
    return runs


@torch.no_grad()
def colour_shares(model, device, seed: int, bases: int = 16, side: int = 6) -> tuple[list, list]:
    """Per layer: the share of the redraw variance that is a change of the whole image's mean
    colour (per channel), i.e. lighting and white balance, and that variance itself ([-1, 1]
    units squared); each over side x side redraws per base, one value per shared base: lists of
    `bases` floats per layer."""
    g = torch.Generator().manual_seed(seed)
    shares, colour = [[] for _ in model.latent_dims], [[] for _ in model.latent_dims]
    for _ in range(bases):
        base = vlae.prior_draw(model, 1, g, device)
        for layer in range(len(model.latent_dims)):
            images = vlae.fig_resample_layer(model, layer, base, g, device, n=side).float()
            per_pixel = images.var(0).mean()
            global_colour = images.mean((2, 3)).var(0).mean()
            shares[layer].append((global_colour / per_pixel.clamp_min(1e-12)).item())
            colour[layer].append(global_colour.item())
    return shares, colour


def claim_fig3_colour(model, effect: list, args, device, side: int = 6) -> Row:
    """Fig. 3 ("z0 = lighting / white balance", sec. 3). The paper describes what kind of change
    each layer makes, so the measure is the share of a layer's redraw variance that is the image's
    mean colour (not that variance itself, which also grows with how much the layer changes at all;
    it is reported beside). Holds if z0's share exceeds every other layer's by more than 2 SE of
    the paired difference over the shared bases."""
    bases = max(2, scale_settings(VLAE_SCALES, args)["bases"] // 2)
    shares, colour = (np.array(v) for v in colour_shares(model, device, args.seed, bases, side))
    diffs = shares[0] - shares[1:]                                  # (layers - 1, bases), paired by base
    gaps, ses = diffs.mean(1), diffs.std(1, ddof=1) / np.sqrt(bases)
    ok = bool(np.all(gaps > 2 * ses))
    mean_se = lambda a: " / ".join(f"{m:.3g} +- {e:.2g}" for m, e in zip(a.mean(1), a.std(1, ddof=1) / np.sqrt(bases)))
    return Row("Fig. 3: the bottom layer (z0) changes lighting and white balance", "sec. 3, Fig. 3",
               f"share of each layer's redraw variance that is the image's mean colour, z0 to z3 (mean +- SE over "
               f"{bases} bases x {side * side} redraws): {mean_se(shares)}; z0 minus z1..z3: "
               + ", ".join(f"{g:+.3g} (SE {e:.2g})" for g, e in zip(gaps, ses))
               + f"; the mean-colour variance itself: {mean_se(colour)}", verdict([ok]),
               "z0's share ahead of every layer by more than 2 SE" if ok else "z0's share not ahead of every layer by "
               "2 SE", "" if ok else f"z0's redraws change the mean colour "
               f"{'the most' if colour.mean(1)[0] == colour.mean(1).max() else 'less than another layer'} in absolute "
               f"terms ({colour.mean(1)[0]:.3g}); effect scores {fmt(effect)}. Hypothesis, not measured: at "
               f"{scale_settings(VLAE_SCALES, args)['face_steps']} steps the layers have not yet split the factors")


def claims_faces(run: Run, args, device) -> tuple[list, list]:
    """Rows for Fig. 3 and Fig. 4, and the figures: z0's colour (`claim_fig3_colour`); every layer
    used (each effect score above 1% of the largest); identity deeper (z2's probe beats z0's by
    more than 2 SE); Fig. 4's arithmetic (`claim_arithmetic`)."""
    model, cfg = load_vlae(run, device)
    result = run_numbers(run, model, cfg, args, device)
    effect = result["effect_score"]
    rows = [claim_fig3_colour(model, effect, args, device),
            Row("Every latent layer changes the image (none is ignored)", "sec. 2.2, Fig. 3",
                f"effect score (mean per-pixel std over 64 redraws, [-1, 1] units), z0 to z3: {fmt(effect)}",
                verdict([min(effect) > 0.01 * max(effect)]), "all above 1% of the largest"
                if min(effect) > 0.01 * max(effect) else "a layer is ignored by the decoder",
                check=True)]  # every layer feeds the decoder by construction: a redraw always moves the image
    if "class" in result.get("probe_accuracy", {}):
        acc = result["probe_accuracy"]["class"]
        rows.append(probe_row("Deeper layers hold identity (z2 more than z0)", "sec. 3, Fig. 3", "identity", acc, 2, 0,
                              result, f"no layer reads the identity well (best {max(acc):.3f}; effect scores "
                              f"{fmt(effect)}). Hypothesis, not measured: {run.steps} steps are too few for it"))
    figures, row = claim_arithmetic(model, cfg, args, device)
    return rows + ([row] if row else []), figures


def pool8(x: torch.Tensor) -> torch.Tensor:
    """Faces (N, C, S, S) in [-1, 1], clamped and area-averaged to 8x8: their layout and colour
    without the detail that blur (a VAE's) or ghosting (pixel arithmetic's) changes."""
    return F.adaptive_avg_pool2d(x.float().clamp(-1, 1), 8).flatten(1)


@torch.no_grad()
def claim_arithmetic(model, cfg, args, device, rows: int = 6) -> tuple[list, Row | None]:
    """Fig. 4 ("pale men - dark men + dark women -> pale women", sec. 4) on the attribute-labelled
    faces of --data-dir/celeba, against plain pixel arithmetic a - b + c and against decode(mu(c)),
    the dark woman's own reconstruction (did the arithmetic move her at all?). Per row, each
    result's distance (8x8 area means, `pool8`) to the nearest real pale woman not used in the rows;
    the latent result must be nearer than the pixel one on a majority of rows, nearer than
    decode(mu(c)) on a majority, and its face centre brighter than decode(mu(c))'s on a majority
    ('mixed' if some of the three)."""
    celeba = os.path.join(args.data_dir, "celeba")
    if not os.path.isdir(celeba):
        return [], None
    faces = data.load_dataset("celeba", celeba, "all", cfg.image_size, vlae.CELEBA_CROP, verbose=False)
    picks = [vlae.pick_by_attributes(faces, w, rows) for w in vlae.ARITHMETIC["pale"]]
    targets = vlae.pick_by_attributes(faces, {"Male": 0, "Pale_Skin": 1}, len(faces))
    if any(p is None for p in picks) or targets is None:
        return [], None
    n = min(map(len, picks))
    a, b, c = [vlae.as_inputs(faces.images[p[:n]], device) for p in picks]
    grid = vlae.fig_arithmetic(model, a, b, c)
    latent, pixel, recon_c = grid[3::4], (a - b + c).clamp(-1, 1), model.decode(model.encode(c)[0])
    pale = pool8(vlae.as_inputs(faces.images[targets], device))
    nearest = lambda x: torch.cdist(pool8(x), pale).min(1).values
    d_latent, d_pixel, d_recon = nearest(latent), nearest(pixel), nearest(recon_c)
    s = cfg.image_size
    centre = lambda x: x[..., s // 4: 3 * s // 4, s // 4: 3 * s // 4].float().mean((1, 2, 3))
    brighter = centre(latent) - centre(recon_c)
    wins, moved, lit = int((d_latent < d_pixel).sum()), int((d_latent < d_recon).sum()), int((brighter > 0).sum())
    common.save_grid(torch.stack([a, b, c, latent, pixel], 1).flatten(0, 1),
                     os.path.join(args.out, "vlae", "fig4_arithmetic_pale.png"), 5)
    row = Row("Fig. 4: pale men - dark men + dark women gives pale women, better than pixel arithmetic and than "
              "the dark woman's own reconstruction",
              "sec. 4, Fig. 4", f"{n} rows; distance (8x8 means, [-1, 1]) to the nearest of {len(targets)} real pale "
              f"women, latent result vs pixel a - b + c vs decode(mu(c)), per row: " + ", ".join(
                  f"{x:.2f} / {y:.2f} / {z:.2f}" for x, y, z in zip(d_latent.tolist(), d_pixel.tolist(), d_recon.tolist()))
              + f"; face-centre brightness, latent result minus decode(mu(c)): {fmt(brighter.tolist())}",
              verdict([wins > n / 2, moved > n / 2, lit > n / 2]), f"nearer than pixel arithmetic in {wins} of {n} "
              f"rows, nearer than decode(mu(c)) in {moved} of {n}, brighter in {lit} of {n}")
    return [("vlae/fig4_arithmetic_pale.png",
             f"Fig. 4, face arithmetic on {n} rows of {faces.description.split(' from ')[0]} at {s}x{s}: pale man, "
             f"not-pale man, not-pale woman, decode(mu(a) - mu(b) + mu(c)) on every layer, and the pixel "
             f"arithmetic a - b + c (Pale_Skin = 0 stands for the paper's dark skin)")], row


def copy_figure(run: Run, name: str, args) -> str:
    os.makedirs(os.path.join(args.out, "vlae"), exist_ok=True)
    shutil.copy(os.path.join(run.out, "figures", name), os.path.join(args.out, "vlae", f"{run.name}_{name}"))
    return f"vlae/{run.name}_{name}"


def face_part(args, scale: dict, device) -> tuple[list, list, list]:
    """The face runs, their rows (MMD vs KL, Fig. 3, Fig. 4) and figures."""
    faces = vlae_face_runs(args, scale)
    os.makedirs(os.path.join(args.out, "vlae"), exist_ok=True)
    rows, figures = claims_faces(faces["mmd"], args, device)
    s, face = scale["face_size"], faces["mmd"]
    figures = [(copy_figure(face, "fig3_layers.png", args),
                f"Fig. 3 ({face.data.split(' from ')[0]}, {s}x{s}, {face.steps} steps): z0 to z3 left to right, "
                f"each panel redraws its layer in every cell, all panels share one base draw of the others"),
               (copy_figure(face, "samples.png", args), "Prior samples of the face model"),
               (copy_figure(face, "reconstructions.png", args),
                "Held-out faces (odd columns) and their reconstructions from mu (even columns)")] + figures
    return [claim_mmd_vs_kl(faces, device), *rows], figures, list(faces.values())


def claims_vlae(args, device) -> None:
    scale, t0 = scale_settings(VLAE_SCALES, args, keep=("face_size",)), time.time()
    runs = vlae_mnist_runs(args, scale)
    os.makedirs(os.path.join(args.out, "vlae"), exist_ok=True)
    fig2_rows, _ = claims_fig2(runs["mmd"], device, args.seed, scale["bases"])
    rows = [claim_probe_hierarchy(runs["mmd"], args, device), *fig2_rows]
    figures = [(copy_figure(runs["mmd"], "fig2_manifold.png", args),
                f"Fig. 2 (MMD model, MNIST, {runs['mmd'].steps} steps): the bottom, middle and top layer's 2-D code "
                f"on a 15 x 15 grid over [-3, 3]^2, left to right, the other layers drawn from N(0, I) in each cell")]
    all_runs = list(runs.values())
    if not args.skip_faces:
        face_rows, face_figures, face_runs = face_part(args, scale, device)
        rows, figures, all_runs = rows + face_rows, figures + face_figures, all_runs + face_runs
    header = ["Paper: H. Xu, Generate Faces Using Ladder Variational Autoencoder with Maximum Mean Discrepancy, 2018",
              f"Data: the folders under --data-dir ({args.data_dir})",
              f"Scale: {args.scale}; one seed ({args.seed}) per run; the reference's defaults otherwise (Adam 2e-4, "
              f"L1, its MMD / KL balance); eval with BatchNorm statistics recomputed on "
              f"{eval_json(runs['mmd'])['bn_stats_images']} training images",
              *[f"Run `{r.name}`: {r.data}; {r.steps} steps; " + (f"trained in {r.seconds:.0f} s (an earlier "
                f"invocation's run, reused)" if r.reused else f"trained, drawn and evaluated in {r.seconds:.0f} s")
                for r in all_runs],
              f"Machine: {machine()}; this invocation took {time.time() - t0:.0f} s"
              + (" (it reused finished runs, --reuse)" if any(r.reused for r in all_runs) else ""),
              f"Reproduce: `python benchmarks/claims vlae --scale {args.scale}"
              f"{' --skip-faces' if args.skip_faces else ''}` (data from --data-dir; the runs in --work)"
              + (" (this was a --dry-run: tiny counts, meaningless numbers)" if args.dry_run else "")]
    report = report_path(args, "vlae")
    write_report(report, "MMD-VLAE (Xu 2018): the paper's claims, measured", header, rows, figures,
                 rule_changes(RULE_CHANGES))
    if args.readme:
        update_readme("vlae", report, figures=("mnist-mmd_fig2_manifold", "fig3_layers", "fig4_arithmetic_pale"))
