"""What every paper's claims share: rows and verdicts, the runs and their data folders, the digit
judge and the distances it reads, the report writer and the README section."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import re
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image, ImageDraw

from . import ROOT

import common  # noqa: E402
import data  # noqa: E402
import probes  # noqa: E402


@dataclasses.dataclass
class Row:
    """One line of the claims table. `holds` is 'yes', 'no' or 'mixed'; `why` one clause;
    `note` what we think explains a claim that does not hold (printed below the table).
    `check`: a row whose rule cannot go both ways (arithmetic on the paper's own constants, a
    quantity the objective trains directly): listed under its own heading, never counted."""
    claim: str
    where: str
    measured: str
    holds: str
    why: str
    note: str = ""
    check: bool = False


@dataclasses.dataclass
class Run:
    """A training run done for the claims: where it is, what it trained on, how long it took."""
    name: str
    out: str
    data: str
    steps: int
    seconds: float
    reused: bool = False


def verdict(parts: list) -> str:
    """'yes' when every part of a claim holds, 'no' when none does, else 'mixed'."""
    return "yes" if all(parts) else "no" if not any(parts) else "mixed"


def data_folder(root: str, name: str, wanted: str) -> str:
    """root/name, or a clear error naming what the claims need there. For 'mnist', root itself
    when it holds t10k IDX files: --data-dir may point at any 10-class 28x28 set in MNIST's IDX
    layout (Fashion-MNIST, KMNIST)."""
    if name == "mnist" and os.path.isfile(os.path.join(root, "t10k-labels-idx1-ubyte.gz")):
        return root
    path = os.path.join(root, name)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"the claims need {path} ({wanted}); pass --data-dir, the folder that holds "
                                f"mnist/, celeba/ and celeba_identities/")
    return path


def split_description(run_out: str) -> str:
    """The data line of a run: set, split and count, as the script wrote it into config.json,
    without the folder (the report names --data-dir once)."""
    with open(os.path.join(run_out, "config.json")) as f:
        return re.sub(r" from \S+", "", json.load(f)["data"])


def train_run(script, name: str, argv: list, work: str, reuse: bool = False) -> Run:
    """Train one run through `script.main` (fresh, into work/name; training, figures and eval)
    and time it; the argv is kept in work/name/claims_argv.json. With `reuse`, a finished run of as
    many steps and the same argv already in work/name is kept (one from before argv was kept, with
    a note) and its training time read from its metrics."""
    out = os.path.join(work, name)
    steps = int(argv[argv.index("--steps") + 1])
    done, kept = os.path.join(out, "eval.json"), os.path.join(out, "claims_argv.json")
    same = (not os.path.exists(kept) or json.load(open(kept)) == argv) and same_settings(script, argv, out)
    if reuse and os.path.exists(done) and same and common.load_checkpoint(out, script.SCRIPT)["step"] == steps:
        print(f"reusing {out}" + ("" if os.path.exists(kept) else " (trained before claims_argv.json was kept)"))
        seconds = common.read_jsonl(os.path.join(out, "metrics.jsonl"))[-1]["seconds"]
        return Run(name, out, split_description(out), steps, seconds, reused=True)
    t0 = time.time()
    script.main(argv + ["--out", out, "--fresh"])
    common.save_json(kept, argv)
    return Run(name, out, split_description(out), steps, time.time() - t0)


def same_settings(script, argv: list, out: str) -> bool:
    """Whether the run in `out` was trained with the settings `argv` gives today: every field of its
    config.json equals the field that the script's current defaults resolve argv to (a default
    changed since the run was trained makes it stale, though its argv is the same)."""
    path = os.path.join(out, "config.json")
    if not os.path.exists(path):
        return False
    cfg, _ = common.parse_train_flags(script.Config, argv + ["--out", out])
    now = dataclasses.asdict(script.resolve_defaults(cfg))
    saved = json.load(open(path))
    # data_dir: argv names it (compared above), or it is the cwd's data/NAME, which nothing reads (toy);
    # a script's DATA_FIELDS are set from the data at train time (cmma's attributes), not from argv
    skip = {"out", "fresh", "data_dir", *getattr(script, "DATA_FIELDS", ())}
    return all(saved[k] == v for k, v in now.items() if k in saved and k not in skip)


def fmt(values, digits: int = 3) -> str:
    """A list of numbers as 'a / b / c' (bottom layer first)."""
    return " / ".join(f"{v:.{digits}g}" if isinstance(v, float) else str(v) for v in values)


def pixel_probe(train: data.ImageSet, test: data.ImageSet, device):
    """A linear classifier on raw pixels (probes.fit_linear_probe), fitted on the training split:
    it reads the digit class of generated images. Returns (predict, held-out accuracy)."""
    (x, y), (x_test, y_test) = digits(train), digits(test)
    predict = probes.fit_linear_probe(x.flatten(1).to(device), y.to(device), 10)
    accuracy = (predict(x_test.flatten(1).to(device)).cpu() == y_test).float().mean().item()
    return predict, accuracy


@dataclasses.dataclass
class Judge:
    """A digit classifier that reads generated images: predict(images (N, 1, S, S) in [0, 1]) ->
    (N,) classes; its accuracy on real digits it was not trained on; what it was trained on."""
    predict: object
    accuracy: float
    description: str
    read: object  # images -> (p(y|x) (N, 10), features (N, 128): the last hidden layer)


def judge_net() -> nn.Module:
    """A small CNN for 28x28 greyscale digits (two conv-pool blocks, one hidden layer)."""
    return nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Dropout(0.3), nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Dropout(0.3), nn.Linear(128, 10))


def digits(dataset: data.ImageSet) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 1, S, S) float in [0, 1] and (N,) int64 classes of a digit set."""
    x = torch.from_numpy(np.array(dataset.images)).permute(0, 3, 1, 2).float() / 255.0
    return x, torch.from_numpy(dataset.labels["class"])


def train_judge(train: data.ImageSet, seed: int, epochs: int) -> nn.Module:
    """Adam with a one-cycle schedule (peak 3e-3), batch 64, a random shift of up to 2 pixels per batch."""
    torch.manual_seed(seed)
    x, y = digits(train)
    net, g = judge_net(), torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=epochs * ((len(x) + 63) // 64))
    net.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), 64):
            dx, dy = torch.randint(0, 5, (2,), generator=g).tolist()
            batch = F.pad(x[order[i:i + 64]], (2, 2, 2, 2))[:, :, dy:dy + 28, dx:dx + 28]
            opt.zero_grad()
            F.cross_entropy(net(batch), y[order[i:i + 64]]).backward()
            opt.step()
            schedule.step()
    return net.eval()


def judge(args, device, epochs: int = 30) -> Judge:
    """The judge of the MNIST-like data set under --data-dir, trained once on its held-out split
    (the generative models never train on it) and scored on its training split (which the judge
    never sees); cached in --work by the hash of the data set's t10k files, so every paper's
    claims reuse it. About 30 s on 2 CPU cores; 98.3% on MNIST from the 2,000-digit t10k sample."""
    root = data_folder(args.data_dir, "mnist", "a 10-class 28x28 set in MNIST's gzipped IDX layout")
    digest = hashlib.sha1()
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        with open(os.path.join(root, name), "rb") as f:
            digest.update(f.read())
    path = os.path.join(args.work, f"judge-{digest.hexdigest()[:12]}-{args.scale}.pt")
    net = judge_net()
    if os.path.exists(path):
        saved = torch.load(path, map_location="cpu", weights_only=True)
        net.load_state_dict(saved["state"])
        accuracy, description = saved["accuracy"], saved["description"]
    else:
        held, train = (data.load_dataset("mnist", root, split, 28, verbose=False) for split in ("test", "train"))
        net = train_judge(held, args.seed, 1 if args.scale == "tiny" or getattr(args, "dry_run", False) else epochs)
        with torch.no_grad():
            x, y = digits(train)
            accuracy = (net(x).argmax(1) == y).float().mean().item()
        description = (f"a small CNN trained on the {len(held)} held-out digits, {accuracy:.3f} accurate on the "
                       f"{len(train)} training digits it never saw")
        os.makedirs(args.work, exist_ok=True)
        torch.save({"state": net.state_dict(), "accuracy": accuracy, "description": description}, path + ".tmp")
        os.replace(path + ".tmp", path)
    net = net.to(device).eval()

    @torch.no_grad()
    def read(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if images.shape[-1] != 28:
            images = F.interpolate(images.float(), size=(28, 28), mode="bilinear", antialias=True)
        hidden = [net[:-2](b.to(device)) for b in images.split(500)]  # eval mode: the dropout is off
        return torch.cat([net[-1](h).softmax(1).cpu() for h in hidden]), torch.cat([h.cpu() for h in hidden])
    return Judge(lambda images: read(images)[0].argmax(1), accuracy, description, read)


CHECKS_HEADING = "### Checks (not counted)"


def rule_changes(changes: list) -> list:
    """The report section that lists the rules changed since the previous report: each was fixed
    in code before this run, and the runs it reads were repeated."""
    return ["### Rules changed since the previous report", "",
            "Each was fixed in code before this run, and the runs it reads were repeated:", "",
            *[f"- {c}" for c in changes]] if changes else []


def write_report(path: str, title: str, header: list, rows: list, figures: list, sections: list = ()) -> None:
    """docs/claims/PAPER.md: a header (bullets), the claims table, then `sections` (markdown
    lines: an ablation table, say), then the figures with captions (`figures`: (relative PNG path,
    caption) pairs)."""
    table = ["| claim | where in the paper | what we measured | holds? |", "|---|---|---|---|"]
    lines = [f"# {title}", "", *[f"- {h}" for h in header], "", *table]
    lines += [f"| {r.claim} | {r.where} | {r.measured} | **{r.holds}**: {r.why} |" for r in rows if not r.check]
    notes = [f"- **{r.claim}** ({r.holds}): {r.note}" for r in rows if r.note and not r.check]
    if notes:
        lines += ["", "What we think explains the claims that do not fully hold:", "", *notes]
    checks = [r for r in rows if r.check]
    if checks:
        lines += ["", CHECKS_HEADING, "", "Rows whose rule cannot go both ways (arithmetic on the paper's own "
                  "constants, or a number the objective trains directly): shown, not counted.", "", *table]
        lines += [f"| {r.claim} | {r.where} | {r.measured} | **{r.holds}**: {r.why} |" for r in checks]
        lines += [f"- **{r.claim}** ({r.holds}): {r.note}" for r in checks if r.note]
    if sections:
        lines += ["", *sections]
    for png, caption in figures:
        lines += ["", f"![{caption}]({png})", "", f"*{caption}*"]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {path}")


def update_readme(paper: str, report: str, readme: str = os.path.join(ROOT, "README.md"),
                  figures: tuple = ()) -> None:
    """Copy the report's header, table and the figures named in `figures` (file names) between
    README's `<!-- claims:PAPER start -->` and `<!-- claims:PAPER end -->` markers, with the
    image paths made relative to the README. Raises ValueError when the markers are missing."""
    start, end = f"<!-- claims:{paper} start -->", f"<!-- claims:{paper} end -->"
    text = open(readme).read()
    if start not in text or end not in text:
        raise ValueError(f"{readme} has no {start} ... {end} section to write the {paper} claims into")
    lines = open(report).read().splitlines()
    first_figure = next((i for i, l in enumerate(lines) if l.startswith("![")), len(lines))
    body = lines[2:first_figure]  # after the title: header, table and notes
    prefix = os.path.relpath(os.path.dirname(os.path.abspath(report)), os.path.dirname(os.path.abspath(readme)))
    shown = [l.replace("](", f"]({prefix}/") for l in lines
             if l.startswith("![") and any(f in l for f in figures)]
    section = "\n".join([start, "", *body, *[s + "\n" for s in shown], end])
    before, rest = text.split(start, 1)
    with open(readme, "w") as f:
        f.write(before + section + rest.split(end, 1)[1])
    update_status(paper, report, readme)
    print(f"updated {readme}")


SCRIPTS = {"vlae": "vlae.py", "cmma": "cmma.py", "disentangled": "disentangled_vae.py", "vae_began": "vae_began.py"}


def status_from_report(report: str, readme_dir: str) -> str:
    """The README status of a paper, read off its claims table: 'N of M claims hold (K in part)
    at the SCALE scale (link)'."""
    text = open(report).read().split(CHECKS_HEADING)[0]  # claims only: checks are not counted
    verdicts = re.findall(r"^\|.*\| \*\*(yes|no|mixed)\*\*", text, re.M)
    scale = re.search(r"^- Scale: (\w+)", text, re.M)
    link = os.path.relpath(report, readme_dir)
    part = f" ({verdicts.count('mixed')} in part)" if "mixed" in verdicts else ""
    return (f"{verdicts.count('yes')} of {len(verdicts)} claims hold{part} at the "
            f"{scale.group(1) if scale else 'small'} CPU scale ([{link}]({link}))")


def update_status(paper: str, report: str, readme: str) -> None:
    """Rewrite the status cell of the paper's script in README.md's table of scripts."""
    lines = open(readme).read().split("\n")
    row = next((i for i, line in enumerate(lines) if line.startswith(f"| `{SCRIPTS[paper]}` |")), None)
    if row is None:
        raise ValueError(f"{readme} has no '| `{SCRIPTS[paper]}` |' row in its table of scripts")
    cells = lines[row].split(" | ")
    cells[-1] = status_from_report(report, os.path.dirname(os.path.abspath(readme))) + " |"
    lines[row] = " | ".join(cells)
    with open(readme, "w") as f:
        f.write("\n".join(lines))


def footer(paper: str, runs: dict, t0: float, args) -> list:
    """The report header's last lines: the machine and wall time (saying when runs were reused) and
    the command that reproduces it."""
    reused = " (it reused finished runs, --reuse)" if any(r.reused for r in runs.values()) else ""
    return [f"Machine: {machine()}; this invocation took {time.time() - t0:.0f} s{reused}",
            f"Reproduce: `python benchmarks/claims {paper} --scale {args.scale}`"
            + (" (this was a --dry-run: tiny counts, meaningless numbers)" if getattr(args, "dry_run", False) else "")]


def report_path(args, paper: str) -> str:
    """OUT/PAPER.md at the small scale, OUT/PAPER-SCALE.md at any other (medium, paper, tiny), so
    that a report of another scale never stands in for the committed small-scale one."""
    return os.path.join(args.out, f"{paper}.md" if args.scale == "small" else f"{paper}-{args.scale}.md")


def scale_settings(table: dict, args, keep: tuple = ()) -> dict:
    """The settings of --scale from a paper's table. With --dry-run, the scale's data, sizes and
    widths but the tiny scale's counts (steps, batch, evaluation sizes), except the keys in
    `keep`: the scale's path end to end in minutes on a CPU, its numbers meaningless."""
    settings = dict(table[args.scale])
    if getattr(args, "dry_run", False):
        settings.update({k: v for k, v in table["tiny"].items() if k in settings and k not in keep
                         and isinstance(v, (int, float)) and not isinstance(v, bool)})
    return settings


def publish(args, paper: str, title: str, header: list, rows: list, figures: list, shown: tuple,
            sections: list = ()) -> None:
    """Write the report (`report_path`) and, with --readme, its README section with the `shown` figures."""
    report = report_path(args, paper)
    write_report(report, title, header, rows, figures, sections)
    if args.readme:
        update_readme(paper, report, figures=shown)


def machine() -> str:
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    return f"{device}, torch {torch.__version__}, {platform.system()} {platform.machine()}"



def mean_se(values) -> tuple[float, float]:
    """The mean of `values` (over seeds, or paired differences per item) and its standard error
    sd / sqrt(n), with the n - 1 sd; the SE is 0 for a single value."""
    v = np.asarray(values, dtype=float)
    return float(v.mean()), float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else 0.0


def accuracy_gap_se(a: float, b: float, n: int) -> float:
    """Standard error of the difference of two accuracies a, b measured on n items each, each
    binomial: sqrt(a (1 - a) / n + b (1 - b) / n) (conservative when the two share the items)."""
    return float(np.sqrt((a * (1 - a) + b * (1 - b)) / max(n, 1)))


def eval_json(run: Run) -> dict:
    with open(os.path.join(run.out, "eval.json")) as f:
        return json.load(f)


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) of two feature sets (N, D), float64;
    the trace of the matrix square root from the eigenvalues of S_a^(1/2) S_b S_a^(1/2) (symmetric)."""
    a, b = a.double(), b.double()
    mu_a, mu_b, s_a, s_b = a.mean(0), b.mean(0), torch.cov(a.T), torch.cov(b.T)
    w, v = torch.linalg.eigh(s_a)
    root_a = v @ torch.diag(w.clamp(min=0).sqrt()) @ v.T
    cross = torch.linalg.eigvalsh(root_a @ s_b @ root_a).clamp(min=0).sqrt().sum()
    return float((mu_a - mu_b).pow(2).sum() + s_a.trace() + s_b.trace() - 2 * cross)


def kernel_inception_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """KID (Binkowski et al. 2018) of feature sets a (N, D), b (M, D): the unbiased MMD^2 with the
    polynomial kernel k(x, y) = (x . y / D + 1)^3, which needs no bandwidth; float64."""
    a, b = a.double(), b.double()
    k = lambda x, y: (x @ y.T / a.shape[1] + 1) ** 3
    kaa, kbb, n, m = k(a, a), k(b, b), len(a), len(b)
    return float((kaa.sum() - kaa.trace()) / (n * (n - 1)) + (kbb.sum() - kbb.trace()) / (m * (m - 1))
                 - 2 * k(a, b).mean())


def judge_scores(judge_: Judge, images: torch.Tensor, real_features: torch.Tensor) -> dict:
    """Images (N, 1, S, S) in [0, 1] read by the judge: the Inception-style score exp(E_x KL(p(y|x)
    || p(y))) (10 for ten equally used, confidently read classes; 1 for one), the Frechet and the
    kernel distance (KID) to the real digits in its features, and mode coverage: the total variation between its class
    histogram and uniform (0 all ten equally, 0.9 one class) and the rarest class's share."""
    probs, features = judge_.read(images)
    p_y = probs.mean(0, keepdim=True)
    kl = (probs * (probs.clamp_min(1e-12).log() - p_y.clamp_min(1e-12).log())).sum(1)
    share = torch.bincount(probs.argmax(1), minlength=10).double() / len(probs)
    return {"is": float(kl.mean().exp()), "fd": frechet_distance(features, real_features),
            "kid": kernel_inception_distance(features, real_features),
            "tv": float(0.5 * (share - 0.1).abs().sum()), "rarest": float(share.min())}


def plot_series(series: dict, path: str, title: str, size: tuple = (560, 300)) -> None:
    """Several (step, value) curves on one set of axes (shared ranges), a colour and a legend line each."""
    points = [p for pts in series.values() for p in pts]
    x_lo, x_hi = min(p[0] for p in points), max(p[0] for p in points)
    y_lo, y_hi = min(p[1] for p in points), max(p[1] for p in points)
    x_hi, y_hi = (x_hi if x_hi > x_lo else x_lo + 1), (y_hi if y_hi > y_lo else y_lo + 1)
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    left, right, top, bottom = 50, size[0] - 10, 20 + 14 * len(series), size[1] - 20
    draw.rectangle([left, top, right, bottom], outline=(180, 180, 180))
    draw.text((4, 3), title, fill=(0, 0, 0))
    draw.text((2, top), f"{y_hi:.3g}", fill=(90, 90, 90))
    draw.text((2, bottom - 10), f"{y_lo:.3g}", fill=(90, 90, 90))
    draw.text((left, bottom + 4), str(x_lo), fill=(90, 90, 90))
    draw.text((right - 40, bottom + 4), str(x_hi), fill=(90, 90, 90))
    for i, (name, pts) in enumerate(series.items()):
        colour = ((200, 40, 40), (40, 70, 200), (40, 150, 40), (150, 60, 170), (90, 90, 90))[i % 5]
        draw.text((left + 4, 18 + 14 * i), name, fill=colour)
        draw.line([(left + (x - x_lo) / (x_hi - x_lo) * (right - left),
                    bottom - (y - y_lo) / (y_hi - y_lo) * (bottom - top)) for x, y in pts], fill=colour, width=2)
    img.save(path)
