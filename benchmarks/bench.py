"""Training throughput of the four scripts: a plain PyTorch loop against this project's path.

    python benchmarks/bench.py                                 # GPU, the papers' model sizes
    python benchmarks/bench.py --device cpu --quick            # anywhere, < 3 minutes on 2 cores
    python benchmarks/bench.py --scripts vlae,vae_began --batch-size 256 --peak-tflops 989
    python benchmarks/bench.py --profile runs/profile          # + what bounds each step

For each script, at its paper's model and image size, the same model and the same training step
(the script's own `train_step`) are fed and run three ways:
  (a) plain:     fp32, eager, NCHW tensors, non-fused Adam, and a torch DataLoader that opens,
                 crops and resizes every JPEG with PIL every epoch (pytorch/examples style);
  (b) project:   the decoded uint8 cache (`data.Batches`, on the GPU when it fits), bf16
                 autocast, channels_last, fused Adam, and `torch.compile` of the forward (on CUDA;
                 `--compile on` compiles on CPU too, to check that path);
  (c) synthetic: (b) on random batches already on the device: the pipeline-free ceiling, so
                 (b)/(c) near 1 means the data pipeline is never what the GPU waits for.
The table: images/s of each, (b)/(a), (b)/(c), peak GPU memory, and model FLOPs utilisation:
FLOPs per step (torch.utils.flop_counter, forward + backward, the optimizer not counted) / step time / the device's peak
(looked up by name, or --peak-tflops), (b)'s host-device synchronisations per step (CUDA
sync debug mode; each one stops the host queueing work ahead of the GPU), and the ops of a step's
forward and backward that read values back to the host (`HostReads`, any device: what would
sync on a GPU). Images count every
image a step consumes (Lr-LiVAE's stage 1 reads three batches per step).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
import time
import warnings

import numpy as np
import torch
from PIL import Image
import torch.utils._python_dispatch
from torch.utils.flop_counter import FlopCounterMode

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import cmma  # noqa: E402
import common  # noqa: E402
import data  # noqa: E402
import disentangled_vae  # noqa: E402
import vae_began  # noqa: E402
import vlae  # noqa: E402

# dense bf16 tensor-core peaks, TFLOP/s (vendor data sheets)
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "V100": 125.0,
               "RTX 4090": 165.0, "RTX 3090": 71.0}


class JpegFaces(torch.utils.data.Dataset):
    """(a)'s data: decode, crop and resize one JPEG per item, every epoch. x in [-1, 1] NCHW."""

    def __init__(self, paths, labels, crop, size):
        self.paths, self.labels, self.crop, self.size = paths, labels, crop, size

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        img = Image.open(self.paths[i]).convert("RGB")
        if self.crop:
            top, left, h, w = self.crop
            img = img.crop((left, top, left + w, top + h))
        else:
            side = min(img.size)
            img = img.crop(((img.width - side) // 2, (img.height - side) // 2,
                            (img.width + side) // 2, (img.height + side) // 2))
        img = img.resize((self.size, self.size), Image.BICUBIC)
        x = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 127.5 - 1
        return x, self.labels[i]


# ----------------------------------------------------------------------------------------------
# one adapter per script: config, model and a step on next_batch() -> (x in [-1, 1], label)
# ----------------------------------------------------------------------------------------------
def configure(name: str, args, project: bool):
    flags = dict(amp=project, compile=False, seed=0, **({"batch_size": args.batch_size} if args.batch_size else {}))
    if name == "vlae":
        return vlae.resolve_defaults(vlae.Config(dataset="celeba", **flags)), "celeba", vlae.CELEBA_CROP, "attributes"
    if name == "cmma":
        return cmma.resolve_defaults(cmma.Config(dataset="celeba", **flags)), "celeba", cmma.CELEBA_CROP, "attributes"
    if name == "vae_began":
        cfg = vae_began.Config(dataset="celeba", **{"batch_size": 16, **flags})  # BEGAN's batch (the script's: 32)
        if args.quick:
            cfg = dataclasses.replace(cfg, filters=32)
        return vae_began.resolve_defaults(cfg), "celeba", vae_began.CELEBA_CROP, "attributes"
    cfg = disentangled_vae.Config(dataset="folder", data_dir=args.identities, **flags)
    if args.quick:
        cfg = dataclasses.replace(cfg, filters=16, z_s_dim=128, z_u_dim=128)
    return disentangled_vae.resolve_defaults(cfg), "folder", None, "class"


def build(name: str, cfg, n_labels: int, device):
    """(model, step(next_batch, i) -> None, images per step) for one script at cfg."""
    torch.manual_seed(0)
    fused = device.type == "cuda" and cfg.amp
    if name == "vlae":
        model = vlae.build_model(cfg).to(device)
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, fused=fused)
        scaler, net = common.make_grad_scaler(device, cfg.amp), torch.compile(model) if cfg.compile else model
        return model, lambda nb, i: vlae.train_step(net, opt, scaler, [nb()[0]], cfg, i, device), 1
    if name == "cmma":
        model = cmma.build_model(cfg, n_labels).to(device)
        opts, scaler = cmma.make_optimizers(model, cfg), common.make_grad_scaler(device, cfg.amp)
        net = torch.compile(model) if cfg.compile else model

        def step(nb, i):
            x, y = nb()
            return cmma.train_step(net, opts, scaler, [((x + 1) / 2, y.float())], cfg, device)
        return model, step, 1
    if name == "vae_began":
        model = vae_began.VAEBEGAN(cfg).to(device)
        opts = vae_began.make_optimizers(model, cfg, device)
        controller = vae_began.Controller.start((1e-3, 0, 0), device)
        forward = torch.compile(vae_began.losses) if cfg.compile else None
        return model, lambda nb, i: vae_began.train_step(model, opts, controller, [nb()[0]], cfg, device, forward), 1
    model = disentangled_vae.DisentangledVAE(cfg, n_labels).to(device)
    opts = disentangled_vae.make_optimizers(model, cfg, device)
    forward = torch.compile(disentangled_vae.stage2_losses) if cfg.compile else None
    step = lambda nb, i: disentangled_vae.train_step(model, opts, lambda _: nb(), i, cfg, device, forward)
    return model, step, cfg.n_gm


def sources(cfg, dataset: str, crop, label_key: str, data_dir: str, device, workers: int):
    """next_batch callables for (a) JPEG DataLoader, (b) the cache, (c) synthetic batches."""
    split = data.load_celeba(data_dir, "train", cfg.image_size, crop, None, verbose=False) if dataset == "celeba" \
        else data.load_dataset("folder", data_dir, "train", cfg.image_size, crop, None, verbose=False)
    if dataset == "celeba":
        paths = [os.path.join(data.find_celeba_images(data_dir), f) for f in split.files]
    else:
        paths = [os.path.join(data_dir, f) for f in split.files]
    labels = torch.from_numpy(np.asarray(split.labels[label_key]))
    loader = torch.utils.data.DataLoader(JpegFaces(paths, labels, crop, cfg.image_size), batch_size=cfg.batch_size,
                                         shuffle=True, num_workers=workers, drop_last=True,
                                         pin_memory=device.type == "cuda", persistent_workers=workers > 0)

    def plain():
        nonlocal it
        batch = next(it, None) if it is not None else None
        if batch is None:  # a new epoch; the workers start on (a)'s first call, not before (b)
            it = iter(loader)
            batch = next(it)
        return batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
    it = None
    batches = data.Batches(split, cfg.batch_size, 0, device, label_keys=(label_key,),
                           channels_last=device.type == "cuda")
    counter = iter(range(10 ** 9))

    def cached():
        x, y = batches.get(next(counter))
        return x, y[label_key]
    x0, y0 = cached()
    synthetic = lambda: (x0, y0)
    return plain, cached, synthetic, labels.shape[1] if labels.dim() > 1 else int(labels.max()) + 1


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step, next_batch, steps: int, warmup: int, device) -> float:
    """Seconds per step, after `warmup` steps (compilation, cudnn autotune, worker start-up)."""
    for i in range(warmup):
        step(next_batch, i)
    sync(device)
    t0 = time.perf_counter()
    for i in range(steps):
        step(next_batch, warmup + i)
    sync(device)
    return (time.perf_counter() - t0) / steps


class _GlobalOnly:
    """Stands in for FlopCounterMode's module tracker, whose backward hooks break
    torch.autograd.grad (used by the scripts that route gradients by hand); totals only."""
    parents = ["Global"]
    is_bw = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


SYNC_OPS = ("_local_scalar_dense", "nonzero", "masked_select", "_unique", "unique_", "item")


class HostReads(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the aten ops that read a tensor's values back to the host: `.item()` / `bool()` /
    `float()` (aten._local_scalar_dense), nonzero (boolean-mask indexing, torch.where with one
    argument), masked_select and unique. On a GPU each is a host-device sync; this mode finds
    them on any device, the CPU included."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.__name__ if hasattr(func, "__name__") else str(func)
        if any(op in name for op in SYNC_OPS):
            self.ops.append(name)
        return func(*args, **(kwargs or {}))


def host_reads_per_step(step, next_batch, steps: int = 2) -> list:
    """The host-reading ops (`HostReads`) of `steps` training steps' forward and backward, any
    device. The optimizer step is left out: on CPU Adam reads its step count (a CPU tensor on
    every device, by design), and on the GPU the scripts use the fused kernels."""
    with optimizer_steps_skipped(), HostReads() as mode:
        for i in range(steps):
            step(next_batch, 30_000 + i)
    return mode.ops


def syncs_per_step(step, next_batch, device, steps: int = 3) -> float | None:
    """Host-device synchronisations per training step on CUDA (torch.cuda sync debug mode): each
    one stalls the host until the GPU drains its queue, so the next step's launches can no longer
    overlap this step's kernels. The scripts' steps should have none (logging polls aside)."""
    if device.type != "cuda":
        return None
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for i in range(steps):
                step(next_batch, 20_000 + i)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught) / steps


@contextlib.contextmanager
def optimizer_steps_skipped():
    """Every optimizer's `step` a no-op for the duration: the FLOP count is the model's (forward
    and backward), not the optimizer's elementwise update, which FlopCounterMode's dispatch
    would also run through (CUDA's fused Adam failed under it on hand-routed gradients)."""
    classes = [c for c in vars(torch.optim).values() if isinstance(c, type) and issubclass(c, torch.optim.Optimizer)
               and "step" in vars(c)]
    saved = {c: vars(c)["step"] for c in classes}
    try:
        for c in classes:
            c.step = lambda self, *args, **kwargs: None
        yield
    finally:
        for c, step in saved.items():
            c.step = step


def flops_per_step(step, next_batch) -> float:
    """FLOPs of one training step's forward and backward passes (matmuls and convolutions; the
    optimizer's update is not counted)."""
    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _GlobalOnly()
    with optimizer_steps_skipped(), counter:
        step(next_batch, 0)
    return float(counter.get_total_flops())


MATMUL_NAMES = ("gemm", "conv", "cutlass", "xmma", "cudnn", "sm80_", "sm90_", "aten::mm", "aten::bmm", "aten::addmm",
                "aten::linear", "aten::_convolution", "mkldnn")


def profile_steps(name: str, step, next_batch, device, steps: int, out_dir: str) -> dict:
    """torch.profiler over `steps` training steps: writes the top ops by self time and a Chrome
    trace to out_dir, and returns where the step time goes. On CUDA: `busy`, the fraction of the
    wall time the GPU runs kernels (low: launch- or host-bound; CUDA graphs or a bigger batch
    help), and `matmul`, the fraction of kernel time in GEMM/convolution kernels (low: bound by
    memory-bound elementwise and normalisation kernels; fusion helps). On CPU only `matmul`."""
    cuda = device.type == "cuda"
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
    sync(device)
    t0 = time.perf_counter()
    with torch.profiler.profile(activities=activities) as prof:
        for i in range(steps):
            step(next_batch, 10_000 + i)
        sync(device)
    wall_us = (time.perf_counter() - t0) * 1e6
    os.makedirs(out_dir, exist_ok=True)
    prof.export_chrome_trace(os.path.join(out_dir, f"{name}.trace.json"))
    sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    with open(os.path.join(out_dir, f"{name}.top_ops.txt"), "w") as f:
        f.write(prof.key_averages().table(sort_by=sort, row_limit=25))
    is_matmul = lambda n: any(k in n.lower() for k in MATMUL_NAMES)
    if cuda:  # kernels are the events that ran on the device
        kernels = [(e.name, e.time_range.elapsed_us()) for e in prof.events()
                   if e.device_type == torch.autograd.DeviceType.CUDA]
    else:     # self times of the CPU ops add up to the time spent in ops, without double counting
        kernels = [(e.key, e.self_cpu_time_total) for e in prof.key_averages()]
    total = sum(t for _, t in kernels) or float("nan")
    return {"busy": total / wall_us if cuda else None,
            "matmul": sum(t for n, t in kernels if is_matmul(n)) / total}


def peak_flops(device, override: float) -> float | None:
    if override:
        return override * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v * 1e12 for k, v in PEAK_TFLOPS.items() if k in name), None)


def bench_script(name: str, args, device) -> dict:
    row = {"script": name}
    for mode in ("plain", "project", "synthetic"):
        cfg, dataset, crop, key = configure(name, args, project=mode != "plain")
        if mode != "plain" and (args.compile == "on" or args.compile == "auto" and device.type == "cuda"):
            cfg = dataclasses.replace(cfg, compile=True)
        data_dir = args.celeba if dataset == "celeba" else args.identities
        plain, cached, synthetic, n_labels = sources(cfg, dataset, crop, key, data_dir, device, args.workers)
        model, step, reads = build(name, cfg, n_labels, device)
        if mode != "plain" and device.type == "cuda":
            model.to(memory_format=torch.channels_last)
        next_batch = {"plain": plain, "project": cached, "synthetic": synthetic}[mode]
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        seconds = time_steps(step, next_batch, args.steps, args.warmup, device)
        row[mode] = cfg.batch_size * reads / seconds
        row.update(size=cfg.image_size, batch=cfg.batch_size)
        if mode == "project":
            row["memory_gib"] = torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else None
            row["step_s"] = seconds
            row["syncs"] = syncs_per_step(step, next_batch, device)
        if mode == "synthetic":
            eager = dataclasses.replace(cfg, compile=False)  # FlopCounterMode counts the eager graph
            _, eager_step, _ = build(name, eager, n_labels, device)
            row["flops"] = flops_per_step(eager_step, synthetic)
            row["host_reads"] = len(host_reads_per_step(eager_step, synthetic)) / 2  # the eager graph's ops
            if args.profile:
                row.update(profile_steps(name, step, synthetic, device, min(args.steps, 5), args.profile))
        del model, step
    peak = peak_flops(device, args.peak_tflops)
    row["mfu"] = row["flops"] / row["step_s"] / peak if peak else None
    return row


def print_table(rows: list, device) -> None:
    head = ("script", "size", "batch", "(a) plain img/s", "(b) project img/s", "(b)/(a)", "(c) synthetic img/s",
            "(b)/(c)", "peak mem GiB", "GFLOP/step", "MFU", "(b) syncs/step", "host reads/step") \
        + (("GPU busy", "matmul share") if "matmul" in rows[0] else ())
    percent = lambda v: "-" if v is None else f"{100 * v:.1f}%"
    print(f"\n{device_name(device)}, torch {torch.__version__}\n")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        cells = [r["script"], r["size"], r["batch"], f"{r['plain']:.1f}", f"{r['project']:.1f}",
                 f"{r['project'] / r['plain']:.2f}x", f"{r['synthetic']:.1f}", f"{r['project'] / r['synthetic']:.2f}",
                 "-" if r["memory_gib"] is None else f"{r['memory_gib']:.1f}", f"{r['flops'] / 1e9:.1f}",
                 percent(r["mfu"]), "-" if r["syncs"] is None else f"{r['syncs']:.1f}", f"{r['host_reads']:.1f}"]
        cells += [percent(r["busy"]), percent(r["matmul"])] if "matmul" in r else []
        print("| " + " | ".join(str(c) for c in cells) + " |")


def device_name(device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--quick", action="store_true", help="fewer steps, lighter vae_began and disentangled_vae")
    p.add_argument("--scripts", default="vlae,cmma,vae_began,disentangled_vae")
    p.add_argument("--batch-size", type=int, default=0, help="every script's batch (0: each paper's)")
    p.add_argument("--steps", type=int, default=0, help="timed steps (default 30, --quick 3)")
    p.add_argument("--warmup", type=int, default=0, help="untimed steps first (default 10, --quick 1)")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="(a)'s DataLoader workers")
    p.add_argument("--celeba", default=os.path.join(ROOT, "tests", "data", "celeba"))
    p.add_argument("--identities", default=os.path.join(ROOT, "tests", "data", "celeba_identities"))
    p.add_argument("--peak-tflops", type=float, default=0.0, help="device peak for MFU (default: by GPU name)")
    p.add_argument("--profile", default="", metavar="DIR",
                   help="also profile (c) with torch.profiler: top ops and a Chrome trace per script in DIR, "
                        "and the table gains GPU-busy and matmul shares (what bounds each step)")
    p.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                   help="torch.compile in (b) and (c): auto compiles on CUDA only (on CPU the compile time "
                        "outweighs a few steps); on checks the compiled path anywhere")
    args = p.parse_args()
    args.steps = args.steps or (3 if args.quick else 30)
    args.warmup = args.warmup or (1 if args.quick else 10)
    if args.quick and not args.batch_size:
        args.batch_size = 8
    device = common.pick_device(args.device)
    rows = []
    for name in args.scripts.split(","):
        rows.append(bench_script(name, args, device))
        r = rows[-1]
        print(f"{name}: plain {r['plain']:.1f}, project {r['project']:.1f}, synthetic {r['synthetic']:.1f} img/s",
              flush=True)
    print_table(rows, device)


if __name__ == "__main__":
    main()
