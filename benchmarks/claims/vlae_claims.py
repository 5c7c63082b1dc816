"""vlae: Xu 2018, the MMD variational ladder autoencoder's claims."""
from __future__ import annotations

import os
import shutil
import time

import numpy as np
import torch

import common
import data
import vlae

from .shared import (
    Row, Run, data_folder, eval_json, fmt, machine, pixel_probe, train_run, update_readme, verdict,
    write_report)


VLAE_SCALES = {  # steps, batch and image size of each run, base draws of the redraw measures; 'tiny': the tests' smoke run
    "small": {"mnist_steps": 1200, "mnist_batch": 100, "face_steps": 350, "face_batch": 64, "face_size": 32, "bases": 64},
    "paper": {"mnist_steps": 30_000, "mnist_batch": 100, "face_steps": 100_000, "face_batch": 100, "face_size": 64,
              "bases": 64},
    "tiny": {"mnist_steps": 3, "mnist_batch": 16, "face_steps": 2, "face_batch": 8, "face_size": 16, "bases": 4},
}


def vlae_mnist_runs(args, scale: dict) -> dict:
    """The MMD model (the paper) and the KL baseline, same data, steps, batch and seed."""
    mnist = data_folder(args.data_dir, "mnist", "MNIST's gzipped IDX files")
    argv = ["--dataset", "mnist", "--data-dir", mnist, "--steps", str(scale["mnist_steps"]),
            "--batch-size", str(scale["mnist_batch"]), "--seed", str(args.seed), "--log-every", "100"]
    if args.scale == "tiny":
        argv += ["--eval-images", "100", "--probe-images", "200", "--bn-images", "200", "--log-every", "1"]
    return {reg: train_run(vlae, f"mnist-{reg}", argv + ["--reg", reg], args.work, args.reuse) for reg in ("mmd", "kl")}


def load_vlae(run: Run, device):
    """The trained model (eval mode, population BatchNorm statistics) and its config."""
    model, cfg, _ = vlae.load_model(vlae.Config(checkpoint=os.path.join(run.out, "checkpoint.pt")), set())
    model.to(device)
    vlae.refresh_batchnorm(cfg, model, device)
    return model, cfg


def claim_probe_hierarchy(run: Run) -> Row:
    """"Deep layers hold high-level features" (sec. 2.2; Fig. 2's reading: the top layer is the
    digit's identity). Holds if a linear probe on the top layer's mu reads the held-out digit
    class more accurately than the same probe on the bottom layer's mu."""
    result = eval_json(run)
    acc = result["probe_accuracy"]["class"]
    note = "" if acc[-1] > acc[0] else (
        f"with 2 dims per layer no layer holds the class alone (best {max(acc):.3f}); the paper reads its "
        f"Fig. 2 by eye, and the bottom layer's codes also separate digits by their ink")
    return Row("A linear probe reads the digit class better from the top layer than from the bottom",
               "sec. 2.2, Fig. 2", f"held-out probe accuracy on mu_l, bottom to top: {fmt(acc)} "
               f"({result['heldout_images']} digits; majority class {result['probe_majority_accuracy']['class']:.3f})",
               verdict([acc[-1] > acc[0]]), f"top {acc[-1]:.3f} vs bottom {acc[0]:.3f}", note)


@torch.no_grad()
def layer_changes(model, classify, device, seed: int, bases: int = 64, redraws: int = 16) -> dict:
    """Per layer: redraw it `redraws` times from N(0, I) with every other layer fixed (one base
    draw each, `bases` bases), decode, and measure what changed: the share of redraws whose
    pixel-probe class differs from the base image's (identity), and, among redraws that keep the
    class, the std of the ink (mean pixel in [0, 1]) and of the slant (mu_11 / mu_02, the
    horizontal shift per row of the centred image moments) - the stroke width and slant of Fig. 2."""
    g = torch.Generator().manual_seed(seed)
    size = model.decode(vlae.prior_draw(model, 1, g, device)).shape[-1]
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij")
    out = {"identity": [], "ink": [], "slant": []}
    for layer in range(len(model.latent_dims)):
        changed, ink_std, slant_std = [], [], []
        for _ in range(bases):
            base = vlae.prior_draw(model, 1, g, device)
            zs = [z.expand(redraws + 1, -1).clone() for z in base]
            zs[layer][1:] = torch.randn(redraws, model.latent_dims[layer], generator=g).to(device)
            images = ((model.decode(zs).float().cpu()[:, 0] + 1.0) / 2.0).clamp(0, 1)   # (R+1, H, W) in [0, 1]
            labels = classify(images.flatten(1).to(device)).cpu()
            same = labels[1:] == labels[0]
            changed.append(1.0 - same.float().mean().item())
            kept = images[1:][same]
            if len(kept) >= 2:
                mass = kept.sum((1, 2)) + 1e-6
                cx, cy = (kept * xs).sum((1, 2)) / mass, (kept * ys).sum((1, 2)) / mass
                dx, dy = xs - cx[:, None, None], ys - cy[:, None, None]
                slant = (kept * dx * dy).sum((1, 2)) / ((kept * dy * dy).sum((1, 2)) + 1e-6)
                ink_std.append(kept.mean((1, 2)).std().item())
                slant_std.append(slant.std().item())
        out["identity"].append(float(np.mean(changed)))
        out["ink"].append(float(np.mean(ink_std)) if ink_std else 0.0)
        out["slant"].append(float(np.mean(slant_std)) if slant_std else 0.0)
    return out


def claims_fig2(run: Run, device, seed: int, bases: int) -> tuple[list, float]:
    """Two rows for Fig. 2 ("bottom = stroke width / style, middle = slant, top = digit
    identity", sec. 3). Identity holds if redrawing the top layer changes the pixel-probe class
    more often than redrawing any other layer. Style holds if, among redraws that keep the
    class, the bottom layer changes both ink (stroke width) and slant more than the top layer
    ('mixed' if one of the two)."""
    model, cfg = load_vlae(run, device)
    train = data.load_dataset("mnist", cfg.data_dir, "train", 28)
    test = data.load_dataset("mnist", cfg.data_dir, "test", 28)
    classify, pixel_accuracy = pixel_probe(train, test, device)
    ch = layer_changes(model, classify, device, seed, bases)
    ident, ink, slant = ch["identity"], ch["ink"], ch["slant"]
    top_most = all(ident[-1] > v for v in ident[:-1])
    style = [ink[0] > ink[-1], slant[0] > slant[-1]]
    style_note = "" if all(style) else (
        f"the paper reads slant off the middle layer (its Fig. 2: bottom = stroke width, middle = slant), "
        f"and here the layer whose redraws change slant most is layer {int(np.argmax(slant))} (0 = bottom); "
        f"the top layer's redraws that keep the class still move between writing styles of that digit")
    rows = [Row("Fig. 2: redrawing the top layer changes the digit's identity", "sec. 3, Fig. 2",
                f"share of redraws whose digit class changes, bottom to top: {fmt(ident)} ({bases} bases x 16 redraws "
                f"per layer; classes read by a linear pixel probe, {pixel_accuracy:.3f} held-out accuracy)",
                verdict([top_most]), "the top layer changes it most" if top_most else "another layer changes it more",
                "" if top_most else f"layer {int(np.argmax(ident))} (0 = bottom) changes the class most at this scale"),
            Row("Fig. 2: redrawing the bottom layer changes stroke width and slant", "sec. 3, Fig. 2",
                f"among redraws that keep the class, std of ink (mean pixel, [0, 1]) bottom to top: {fmt(ch['ink'])}; "
                f"std of slant (row shift per row): {fmt(ch['slant'])}",
                verdict(style), f"bottom vs top: ink {ink[0]:.3g} vs {ink[-1]:.3g}, slant {slant[0]:.3g} vs "
                f"{slant[-1]:.3g}", style_note)]
    return rows, pixel_accuracy


def claim_mmd_vs_kl(runs: dict) -> Row:
    """"MMD ... avoids the [KL's] tendency to ignore latent codes" (sec. 2.3, the paper's reason
    for MMD, after InfoVAE). Holds if, after the same steps, the MMD model keeps more active
    units (Var_x[mu_d] > 0.01) than the KL baseline and its held-out L1 reconstruction error is
    at most 2% above the baseline's ('mixed' if one of the two)."""
    mmd, kl = eval_json(runs["mmd"]), eval_json(runs["kl"])
    au_mmd, au_kl = sum(mmd["active_units"]), sum(kl["active_units"])
    l1_mmd, l1_kl = mmd["recon_l1_per_element"], kl["recon_l1_per_element"]
    total = sum(mmd["latent_dims"])
    notes = []
    if au_kl == total:
        notes.append(f"every unit stays active under KL too: with {mmd['latent_dims'][0]} dims per layer and the "
                     f"reference's MNIST loss_ratio (8.0 on [0, 1] pixels), the KL is too weak against the "
                     f"reconstruction to switch a unit off, so there is no collapse for MMD to prevent here")
    if l1_mmd > 1.02 * l1_kl:
        notes.append("a KL this weak lets each q(z|x) shrink toward a point, which serves reconstruction; MMD "
                     "instead holds the aggregate q(z) to N(0, I). The 10-dim face layers at loss_ratio 0.5 "
                     "are where the paper's argument would bite; that comparison is not in the small scale's budget")
    return Row("MMD keeps more active units than KL and reconstructs as well", "sec. 2.3-2.4",
               f"active units (of {total}) per layer, bottom to top: MMD {fmt(mmd['active_units'])} = {au_mmd}, "
               f"KL {fmt(kl['active_units'])} = {au_kl}; held-out L1 per pixel ([-1, 1]): MMD {l1_mmd:.4f}, "
               f"KL {l1_kl:.4f} ({mmd['heldout_images']} digits, {runs['mmd'].steps} steps each)",
               verdict([au_mmd > au_kl, l1_mmd <= 1.02 * l1_kl]),
               f"{'more' if au_mmd > au_kl else 'not more'} active units, "
               f"{'matches or beats' if l1_mmd <= 1.02 * l1_kl else 'worse'} reconstruction", "; ".join(notes))


def vlae_face_run(args, scale: dict) -> Run:
    """MMD-VLAE on the faces of celeba_identities (a folder per identity, CelebA's aligned JPEGs)
    with the reference's crop; small scale at 32x32. The paper scale trains on full CelebA."""
    if args.scale == "paper":
        argv = ["--dataset", "celeba", "--data-dir", data_folder(args.data_dir, "celeba", "the full CelebA")]
    else:
        argv = ["--dataset", "folder", "--crop", ",".join(map(str, vlae.CELEBA_CROP)),
                "--data-dir", data_folder(args.data_dir, "celeba_identities", "CelebA faces, a folder per identity")]
    argv += ["--image-size", str(scale["face_size"]), "--steps", str(scale["face_steps"]),
             "--batch-size", str(scale["face_batch"]), "--seed", str(args.seed), "--log-every", "50"]
    if args.scale == "tiny":
        argv += ["--eval-images", "20", "--probe-images", "40", "--bn-images", "40", "--log-every", "1"]
    return train_run(vlae, "faces-mmd", argv, args.work, args.reuse)


@torch.no_grad()
def colour_shares(model, device, seed: int, bases: int = 16, redraws: int = 32) -> list:
    """Per layer: the share of the redraw variance that is a change of the whole image's mean
    colour (per channel), i.e. lighting and white balance, and that variance itself ([-1, 1]
    units squared); each averaged over `bases` shared bases."""
    g = torch.Generator().manual_seed(seed)
    shares, colour = [[] for _ in model.latent_dims], [[] for _ in model.latent_dims]
    for _ in range(bases):
        base = vlae.prior_draw(model, 1, g, device)
        for layer in range(len(model.latent_dims)):
            images = vlae.fig_resample_layer(model, layer, base, g, device, n=int(np.sqrt(redraws))).float()
            per_pixel = images.var(0).mean()
            global_colour = images.mean((2, 3)).var(0).mean()
            shares[layer].append((global_colour / per_pixel.clamp_min(1e-12)).item())
            colour[layer].append(global_colour.item())
    return [float(np.mean(s)) for s in shares], [float(np.mean(c)) for c in colour]


def claims_faces(run: Run, args, device) -> tuple[list, list]:
    """Rows for Fig. 3 and Fig. 4, and the figures. Fig. 3 ("z0 = lighting / white balance",
    sec. 3) holds if the bottom layer has the largest share of its redraw variance in the image's
    mean colour. Every layer is used (the hierarchy needs them all) if each effect score is above
    1% of the largest. Fig. 4 ("pale men - dark men + dark women -> pale women", sec. 4) holds if
    the arithmetic result's face centre is brighter than the reconstruction of the dark women."""
    model, cfg = load_vlae(run, device)
    result, rows = eval_json(run), []
    bases = max(1, VLAE_SCALES[args.scale]["bases"] // 4)
    shares, colour = colour_shares(model, device, args.seed, bases)
    effect = result["effect_score"]
    first = shares[0] == max(shares)
    rows.append(Row("Fig. 3: the bottom layer (z0) changes lighting and white balance", "sec. 3, Fig. 3",
                    f"share of each layer's redraw variance that is the image's mean colour, z0 to z3: {fmt(shares)}; "
                    f"that mean-colour variance itself: {fmt(colour)} ({bases} bases x 36 redraws)", verdict([first]),
                    "z0's share is the largest" if first else "another layer's share is larger",
                    "" if first else f"z0's redraws change the mean colour "
                    f"{'the most' if colour[0] == max(colour) else 'less than another layer'} in absolute terms "
                    f"({colour[0]:.3g}), but layers whose redraws change little (effect scores {fmt(effect)}) put "
                    f"a larger share of that little into the mean colour; at this scale the deep layers are barely used"))
    rows.append(Row("Every latent layer changes the image (none is ignored)", "sec. 2.2, Fig. 3",
                    f"effect score (mean per-pixel std over 64 redraws, [-1, 1] units), z0 to z3: {fmt(effect)}",
                    verdict([min(effect) > 0.01 * max(effect)]), "all above 1% of the largest"
                    if min(effect) > 0.01 * max(effect) else "a layer is ignored by the decoder"))
    if "class" in result.get("probe_accuracy", {}):
        acc = result["probe_accuracy"]["class"]
        rows.append(Row("Deeper layers hold identity (z2 more than z0)", "sec. 3, Fig. 3",
                        f"held-out linear-probe accuracy of the identity on mu_l, z0 to z3: {fmt(acc)} "
                        f"(majority class {result['probe_majority_accuracy']['class']:.3f})", verdict([acc[2] > acc[0]]),
                        f"z2 {acc[2]:.3f} vs z0 {acc[0]:.3f}", "" if acc[2] > acc[0] else
                        f"no layer reads the identity well yet (best {max(acc):.3f}): at {run.steps} steps the deep "
                        f"layers change the image little (effect scores {fmt(effect)}), and a 10-dim code of a "
                        f"blurry face separates few of the identities linearly"))
    figures, brighter = arithmetic_figure(model, cfg, args, device)
    if brighter is not None:
        rows.append(Row("Fig. 4: pale men - dark men + dark women gives pale women", "sec. 4, Fig. 4",
                        f"mean brightness of the face centre ([-1, 1]), result minus reconstructed dark woman, per row: "
                        f"{fmt(brighter)}", verdict([float(np.mean(brighter)) > 0]),
                        f"mean {float(np.mean(brighter)):+.3f}"))
    return rows, figures


@torch.no_grad()
def arithmetic_figure(model, cfg, args, device, rows: int = 6) -> tuple[list, list | None]:
    """Fig. 4 on the attribute-labelled faces of --data-dir/celeba (same crop and size as the
    model): rows [pale man, dark man, dark woman, result]; returns the saved PNG name and the
    per-row brightness gain of the result over the reconstructed dark woman (face centre)."""
    celeba = os.path.join(args.data_dir, "celeba")
    if not os.path.isdir(celeba):
        return [], None
    faces = data.load_dataset("celeba", celeba, "all", cfg.image_size, vlae.CELEBA_CROP, verbose=False)
    picks = [vlae.pick_by_attributes(faces, w, rows) for w in vlae.ARITHMETIC["pale"]]
    if any(p is None for p in picks):
        return [], None
    n = min(map(len, picks))
    a, b, c = [vlae.as_inputs(faces.images[p[:n]], device) for p in picks]
    grid = vlae.fig_arithmetic(model, a, b, c)
    recon_c = model.decode(model.encode(c)[0])
    s = cfg.image_size
    centre = lambda x: x[..., s // 4: 3 * s // 4, s // 4: 3 * s // 4].float().mean((1, 2, 3))
    brighter = (centre(grid[3::4]) - centre(recon_c)).tolist()
    common.save_grid(grid, os.path.join(args.out, "vlae", "fig4_arithmetic_pale.png"), 4)
    common.save_grid(torch.stack([a, b, c, grid[3::4], recon_c], 1).flatten(0, 1),
                     os.path.join(args.out, "vlae", "fig4_with_recon.png"), 5)
    return [("vlae/fig4_arithmetic_pale.png",
             f"Fig. 4, face arithmetic on {n} rows of {faces.description.split(' from ')[0]} at {s}x{s}: pale man, "
             f"not-pale man, not-pale woman, decode(mu(a) - mu(b) + mu(c)) on every layer (Pale_Skin = 0 stands "
             f"for the paper's dark skin)"),
            ("vlae/fig4_with_recon.png", "The same rows with a fifth column, the reconstruction of the not-pale woman: "
             "the baseline the brightness row of the table compares the result with")], brighter


def copy_figure(run: Run, name: str, args) -> str:
    os.makedirs(os.path.join(args.out, "vlae"), exist_ok=True)
    shutil.copy(os.path.join(run.out, "figures", name), os.path.join(args.out, "vlae", f"{run.name}_{name}"))
    return f"vlae/{run.name}_{name}"


def claims_vlae(args, device) -> None:
    scale, t0 = VLAE_SCALES[args.scale], time.time()
    runs = vlae_mnist_runs(args, scale)
    fig2_rows, _ = claims_fig2(runs["mmd"], device, args.seed, scale["bases"])
    rows = [claim_probe_hierarchy(runs["mmd"]), *fig2_rows, claim_mmd_vs_kl(runs)]
    figures = [(copy_figure(runs["mmd"], "fig2_manifold.png", args),
                f"Fig. 2 (MMD model, MNIST, {runs['mmd'].steps} steps): the bottom, middle and top layer's 2-D code "
                f"on a 15 x 15 grid over [-3, 3]^2, left to right, the other layers drawn from N(0, I) in each cell"),
               (copy_figure(runs["kl"], "fig2_manifold.png", args), "The same for the KL baseline")]
    all_runs = list(runs.values())
    if not args.skip_faces:
        face = vlae_face_run(args, scale)
        face_rows, face_figures = claims_faces(face, args, device)
        rows += face_rows
        s = VLAE_SCALES[args.scale]["face_size"]
        figures += [(copy_figure(face, "fig3_layers.png", args),
                     f"Fig. 3 ({face.data.split(' from ')[0]}, {s}x{s}, {face.steps} steps): z0 to z3 left to right, "
                     f"each panel redraws its layer in every cell, all panels share one base draw of the others"),
                    (copy_figure(face, "samples.png", args), "Prior samples of the face model"),
                    (copy_figure(face, "reconstructions.png", args),
                     "Held-out faces (odd columns) and their reconstructions from mu (even columns)")] + face_figures
        all_runs.append(face)
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
              f"{' --skip-faces' if args.skip_faces else ''}` (data from --data-dir; the runs in --work)"]
    report = os.path.join(args.out, "vlae.md")
    write_report(report, "MMD-VLAE (Xu 2018): the paper's claims, measured", header, rows, figures)
    if args.readme:
        update_readme("vlae", report, figures=("mnist-mmd_fig2_manifold", "fig3_layers", "fig4_arithmetic_pale"))
