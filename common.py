"""The kit the four face-VAE scripts share: only what two or more of `vlae.py`, `cmma.py`,
`disentangled_vae.py` and `vae_began.py` use. A kit, not a framework: no loop object, no
sub-command framework, no paper's equation (each paper's own maths lives in its script).

* math      - reparameterisation, KL to N(0, I) and between diagonal Gaussians, active units,
              BatchNorm population statistics
* images    - [-1, 1] / [0, 1] tensors to uint8 grids and PNG files (PIL, no torchvision), Reshape
* config    - a documented dataclass -> argparse flags (`arg`, `add_fields`, `parse`), range checks
* runtime   - device, seeds, autocast, torch.distributed helpers, rank-0 printing, a SIGTERM flag
* runs      - atomic checkpoints holding every RNG state, resume and evaluate a run folder, its
              lock, JSONL metrics with img/s and ETA (`Meter`), a PIL loss-curve plot, one-line
              errors for what a user can fix

Units: KLs are in nats, summed over the event dimensions, one value per sample (shape (B,));
callers average over the batch themselves.
"""
from __future__ import annotations

import argparse
import atexit
import dataclasses
import errno
import datetime
import json
import math
import os
import pickle
import random
import signal
import sys
import time
from contextlib import contextmanager, nullcontext
from typing import Any, NoReturn, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from PIL import Image, ImageDraw

CHECKPOINT_VERSION = 2  # 2: RNG states as tensors (weights_only loading); 1 still loads
# ----------------------------------------------------------------------------------------------
# math
# ----------------------------------------------------------------------------------------------
def reparameterize(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Draw z ~ N(mu, diag(exp(logvar))) differentiably: z = mu + exp(logvar / 2) * eps.

    Kingma & Welling 2014, sec. 2.4. `mu`, `logvar`: (B, D); returns (B, D). The noise comes
    from the global torch RNG (its state is in every checkpoint, so resume is exact).
    """
    return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)


def kl_normal_std(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag exp(logvar)) || N(0, I)) in nats, summed over D: (B, D) -> (B,).

    Kingma & Welling 2014, appendix B: -1/2 * sum(1 + logvar - mu^2 - exp(logvar)).
    """
    return -0.5 * torch.sum(1.0 + logvar - mu.pow(2) - logvar.exp(), dim=-1)


def kl_normal(mu_q: torch.Tensor, logvar_q: torch.Tensor,
              mu_p: torch.Tensor, logvar_p: torch.Tensor) -> torch.Tensor:
    """KL(N(mu_q, diag exp(logvar_q)) || N(mu_p, diag exp(logvar_p))) in nats, summed over D.

    All inputs broadcast to (B, D); returns (B,). Closed form for diagonal Gaussians:
    1/2 * sum(logvar_p - logvar_q + (exp(logvar_q) + (mu_q - mu_p)^2) / exp(logvar_p) - 1).
    """
    var_ratio = torch.exp(logvar_q - logvar_p)
    mean_term = (mu_q - mu_p).pow(2) * torch.exp(-logvar_p)
    return 0.5 * torch.sum(var_ratio + mean_term - 1.0 - (logvar_q - logvar_p), dim=-1)


def active_units(mu: torch.Tensor, threshold: float = 0.01) -> int:
    """Latent dims whose posterior mean moves with the input: Var_x[mu_d] > threshold (Burda et
    al. 2016, sec. 5.2). `mu` (N, D) encoder means of N held-out inputs; returns a count in 0..D."""
    return int((mu.float().var(dim=0) > threshold).sum().item())


@torch.no_grad()
def recompute_batchnorm(model: nn.Module, batches, forward=None, total: int = 0) -> int:
    """Replace every BatchNorm's running statistics by their population average over `batches`
    (an iterable of inputs, or of argument tuples for `forward`), as
    `torch.optim.swa_utils.update_bn` does: reset, momentum None (a cumulative mean), one
    forward per batch in train mode. `forward` defaults to `model`. Returns the number of
    inputs seen (the first dim of each batch's first tensor); the model keeps its train/eval mode.
    `total`, the number of inputs if known, turns on a progress line for a long pass.

    Why: with the TF references' momentum of 0.001 the running statistics average over ~1,000
    steps, so a shorter run would evaluate with statistics near their initial values.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return 0
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    was_training, seen = model.training, 0
    model.train()
    forward, progress = forward or model, Progress("BatchNorm statistics", total, "images")
    for batch in batches:
        args = batch if isinstance(batch, (tuple, list)) else (batch,)
        forward(*args)
        seen += len(args[0])
        progress.update(len(args[0]))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.train(was_training)
    return seen


# ----------------------------------------------------------------------------------------------
# JSON records (eval.json, config.json)
# ----------------------------------------------------------------------------------------------
def save_json(path: str, record: dict) -> None:
    """Write `record` to `path` as indented JSON, creating its folder, atomically (`atomic_write`)."""
    with atomic_write(path) as f:
        json.dump(record, f, indent=2)


def write_json(path: str, record: dict, summary: str = "") -> None:
    """Write `record` to `path` (creating its folder) and print `summary` with the file's path (the
    eval commands' output), or, without a summary, the whole record."""
    save_json(path, record)
    print(f"{summary}\nall numbers: {shown(path)}" if summary else json.dumps(record, indent=2))


# ----------------------------------------------------------------------------------------------
# layers
# ----------------------------------------------------------------------------------------------
class Reshape(nn.Module):
    """(B, ...) -> (B, *shape): a flat fc output into feature maps."""

    def __init__(self, *shape: int):
        super().__init__()
        self.shape = shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], *self.shape)


# ----------------------------------------------------------------------------------------------
# images
# ----------------------------------------------------------------------------------------------
def quantise(images: torch.Tensor, value_range: tuple[float, float] = (-1.0, 1.0)) -> torch.Tensor:
    """(B, C, H, W) float images in `value_range` -> (B, C, H, W) uint8 on the same device, values
    clipped and rounded to the nearest level: the bytes a PNG of them holds."""
    lo, hi = value_range
    x = (images.detach().float() - lo) / (hi - lo)
    return (x.clamp(0.0, 1.0) * 255.0 + 0.5).to(torch.uint8)


def to_uint8(images: torch.Tensor, value_range: tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
    """(B, C, H, W) float images in `value_range` -> (B, H, W, C) uint8 numpy, values clipped."""
    return quantise(images, value_range).cpu().permute(0, 2, 3, 1).numpy()


def make_grid(images: np.ndarray, nrow: int, padding: int = 2, pad_value: int = 255) -> np.ndarray:
    """Tile (B, H, W, C) uint8 images into one (rows*(H+p)+p, nrow*(W+p)+p, 3) uint8 array.

    Grey images are repeated to RGB. Raises ValueError on an empty batch or nrow < 1.
    """
    if images.ndim != 4 or len(images) == 0 or nrow < 1:
        raise ValueError(f"make_grid needs a non-empty (B, H, W, C) array and nrow >= 1, got {images.shape}")
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    b, h, w, _ = images.shape
    rows = math.ceil(b / nrow)
    grid = np.full((rows * (h + padding) + padding, nrow * (w + padding) + padding, 3), pad_value, np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, nrow)
        top, left = padding + r * (h + padding), padding + c * (w + padding)
        grid[top:top + h, left:left + w] = img
    return grid


def hstack_panels(panels: Sequence[np.ndarray], gap: int = 20, pad_value: int = 255) -> np.ndarray:
    """Put (H, W_i, 3) uint8 panels side by side with `gap` white pixels between them."""
    height = max(p.shape[0] for p in panels)
    out = []
    for i, p in enumerate(panels):
        if i:
            out.append(np.full((height, gap, 3), pad_value, np.uint8))
        out.append(np.pad(p, ((0, height - p.shape[0]), (0, 0), (0, 0)), constant_values=pad_value))
    return np.concatenate(out, axis=1)


def save_png(array: np.ndarray, path: str) -> None:
    """Write a (H, W, 3) or (H, W) uint8 array to `path` as PNG, creating its folder, atomically."""
    with atomic_write(path, "wb") as f:
        Image.fromarray(array).save(f, format="PNG")


def save_grid(images: torch.Tensor, path: str, nrow: int,
              value_range: tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
    """Save (B, C, H, W) images in `value_range` as one PNG grid; returns the grid array."""
    grid = make_grid(to_uint8(images, value_range), nrow)
    save_png(grid, path)
    return grid


# ----------------------------------------------------------------------------------------------
# config: a dataclass with documented fields -> argparse
# ----------------------------------------------------------------------------------------------
def arg(default: Any, help: str, **kwargs: Any) -> Any:
    """A dataclass field whose `help` text appears in --help (choices= may be passed too), and
    the range a number must lie in, where the paper or torch gives one: at_least=, above=,
    at_most=, below= (checked by `check_ranges`; NaN is outside every range)."""
    return dataclasses.field(default=default, metadata={"help": help, **kwargs})


RANGE_CHECKS = {"at_least": (lambda v, b: v >= b, ">="), "above": (lambda v, b: v > b, ">"),
                "at_most": (lambda v, b: v <= b, "<="), "below": (lambda v, b: v < b, "<")}


def check_ranges(cfg: Any) -> None:
    """ValueError naming the first flag whose value lies outside the range its field declares."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        for key, (ok, sign) in RANGE_CHECKS.items():
            if key in f.metadata and not ok(value, f.metadata[key]):
                raise ValueError(f"--{f.name.replace('_', '-')} must be {sign} {f.metadata[key]:g}, got {value:g}")


@dataclasses.dataclass
class RunConfig:
    """The flags every script shares; each script's Config adds the paper's own (and `dataset`,
    `steps`, `batch_size`, `lr`, `image_size` with the paper's defaults)."""
    data_dir: str = arg("", "dataset folder (default: data/<dataset>)")
    out: str = arg("", "output folder (default: runs/<script>-<dataset>...)")
    checkpoint: str = arg("", "checkpoint for sample/figures/eval (default: OUT/checkpoint.pt)")
    device: str = arg("auto", "auto (cuda if present), cpu, cuda or cuda:N")
    seed: int = arg(0, "random seed (each rank adds its rank)")
    log_every: int = arg(100, "steps between log lines and metrics.jsonl rows")
    ckpt_every: int = arg(2000, "steps between checkpoints")
    amp: bool = arg(True, "bf16 autocast on CUDA (fp16 + GradScaler on GPUs without bf16)")
    compile: bool = arg(False, "torch.compile the model")
    fresh: bool = arg(False, "ignore an existing checkpoint in OUT and start over")
    cache_dir: str = arg("", "decoded-image cache (default: $FACE_VAE_CACHE or ~/.cache/face-vaes)")
    grad_accum: int = arg(1, "micro-batches per optimizer step: the effective batch is batch-size x "
                             "grad-accum x processes")



# Fields a resumed or evaluated run may set differently from its checkpoint (run control only).
RUN_FIELDS = frozenset({"data_dir", "out", "checkpoint", "steps", "device", "log_every", "ckpt_every",
                        "amp", "compile", "fresh", "cache_dir", "grad_accum"})


def parse_crop(text: str, default: tuple | None) -> tuple[int, int, int, int] | None:
    """--crop 'top,left,height,width' (source pixels) as a tuple; '' gives `default`.
    Raises ValueError naming the flag for anything else."""
    if not text:
        return default
    try:
        box = tuple(int(v) for v in text.split(","))
    except ValueError:
        box = ()
    if len(box) != 4 or min(box) < 0 or box[2] == 0 or box[3] == 0:
        raise ValueError(f"--crop must be four integers top,left,height,width, got {text!r}")
    return box


def require(checks: list) -> None:
    """Raise ValueError(message) for the first (ok, message) pair whose ok is False; the
    message names the flag and the value it needs."""
    for ok, message in checks:
        if not ok:
            raise ValueError(message)


def check_run_config(cfg: Any) -> None:
    """Raise ValueError (one line naming the flag) for values no run can use."""
    check_ranges(cfg)
    checks = [(cfg.batch_size >= 1, f"--batch-size must be >= 1, got {cfg.batch_size}"),
              (cfg.steps >= 0, f"--steps must be >= 0, got {cfg.steps}"),
              (cfg.lr > 0, f"--lr must be > 0, got {cfg.lr}"),
              (cfg.log_every >= 1 and cfg.ckpt_every >= 1, "--log-every and --ckpt-every must be >= 1"),
              (cfg.grad_accum >= 1, f"--grad-accum must be >= 1, got {cfg.grad_accum}")]
    require(checks)
    if cfg.steps == 0 and is_main():
        print("note: --steps 0 trains nothing: eval and figures show the network as initialised (or as resumed)",
              file=sys.stderr)


def add_fields(parser: argparse.ArgumentParser, config_cls: type, names: set | None = None) -> argparse.ArgumentParser:
    """One --flag per field of the dataclass `config_cls` (only those in `names`, if given).

    Underscores become dashes; bools get --flag/--no-flag; a None default takes the type of
    the field's annotation. --help shows each field's help and default.
    """
    for f in dataclasses.fields(config_cls):
        if names is not None and f.name not in names:
            continue
        name = "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("help", "")
        if "default" not in help_text:
            help_text += f" (default: {f.default})"
        kwargs = {"default": f.default, "help": help_text}
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        annotation = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        if annotation.startswith("bool"):
            parser.add_argument(name, action=argparse.BooleanOptionalAction, **kwargs)
        else:
            kind = int if annotation.startswith("int") else float if annotation.startswith("float") else str
            parser.add_argument(name, type=kind, **kwargs)
    return parser


# The flags of the commands that read a checkpoint (sample, figures, eval, ...): the model and
# its objective come from the checkpoint, so only where to read and write, and on what device.
CHECKPOINT_FLAGS = frozenset({"checkpoint", "out", "data_dir", "cache_dir", "device", "amp"})


def parse(parser: argparse.ArgumentParser, config_cls: type, argv: Sequence[str] | None) -> tuple[str, Any, set, dict]:
    """Parse `prog [SUBCOMMAND] --flags` with a script's argparse parser, whose subparsers (dest
    "command") each hold their flags (`add_fields`); no subcommand means train. Returns the
    subcommand, the config (fields a subcommand does not take keep their defaults), the fields
    given explicitly (they override a checkpoint's config where allowed) and the subcommand's own
    flags. A training flag given to a checkpoint command, a stray or misplaced word and an unknown
    flag each exit with one `error:` line (status 2)."""
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    for p in commands.values():
        p.allow_abbrev = False  # a flag counts as given only when spelled out, as `explicit` reads it
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0] not in commands and argv[0] not in ("-h", "--help")):
        argv = ["train"] + argv
    args, unknown = parser.parse_known_args(argv)
    command, prog, fields = args.command, parser.prog, {f.name for f in dataclasses.fields(config_cls)}
    for flag in (a.split("=")[0] for a in unknown if a.startswith("--")):
        if flag[2:].replace("-", "_").removeprefix("no_") in fields:
            fail(f"{flag} is a training flag: `{command}` takes the model's settings from its checkpoint "
                 f"(python {prog} {command} --help lists its flags)")
    words = [a for a in unknown if a.isidentifier()]  # a stray word: a mistyped or misplaced subcommand
    if words and words[0] in commands:
        fail(f"the subcommand `{words[0]}` must come first: python {prog} {words[0]} --flags")
    if words:
        fail(f"`{words[0]}` is not a subcommand: the subcommands are {', '.join(commands)} (python {prog} --help)")
    if unknown:
        fail(f"unrecognized arguments for `{command}`: {' '.join(unknown)} (python {prog} {command} --help)")
    values = vars(args)
    given = {a.split("=")[0][2:].replace("-", "_") for a in argv[1:] if a.startswith("--")}
    explicit = {name for name in fields if name in given or f"no_{name}" in given}
    own = {k: v for k, v in values.items() if k not in fields and k != "command"}
    return command, config_cls(**{k: v for k, v in values.items() if k in fields}), explicit, own


def parse_train_flags(config_cls: type, argv: Sequence[str]) -> tuple[Any, set]:
    """A training command line (flags only) as (config, the fields given explicitly), with
    `parse`'s checks: for tools that drive a script's training (tuning, the claims)."""
    parser = argparse.ArgumentParser(prog=config_cls.__module__ + ".py")
    add_fields(parser.add_subparsers(dest="command").add_parser("train"), config_cls)
    return parse(parser, config_cls, argv)[1:3]


# ----------------------------------------------------------------------------------------------
# runtime: device, seeds, autocast, distributed
# ----------------------------------------------------------------------------------------------
def pick_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """'auto' -> cuda:<local_rank> when CUDA is present, else cpu; 'cpu', 'cuda', 'cuda:N'.
    Raises ValueError for any other name, and when CUDA is asked for on a machine without it."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    index = name.split(":", 1)[1] if name.startswith("cuda:") else "0"
    if name not in ("cpu", "cuda") and not (name.startswith("cuda:") and index.isdigit()):
        raise ValueError(f"--device {name!r} is not a device: use auto, cpu, cuda or cuda:N (N a GPU index)")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name} was given but no CUDA GPU is visible; use --device cpu")
        return torch.device("cuda", local_rank if name == "cuda" else int(index))
    return torch.device(name)


def seed_everything(seed: int, rank: int = 0) -> None:
    """Seed python, numpy and torch (CPU and CUDA) with seed + rank, so ranks draw different noise."""
    s = seed + rank
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)


def amp_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    """bf16 on CUDA GPUs that support it, fp16 on older ones, None (fp32) on CPU or when off."""
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: torch.device, enabled: bool):
    """The autocast context of `amp_dtype` on the device's type, or a null context (CPU runs
    stay fp32; the tests switch CPU bf16 on to check the mixed-precision code paths)."""
    dtype = amp_dtype(device, enabled)
    return torch.autocast(device.type, dtype=dtype) if dtype else nullcontext()


def memory_format(device: torch.device, images: bool = True) -> torch.memory_format:
    """channels_last for image networks on CUDA (cuDNN's fast layout for convolutions); else as is."""
    return torch.channels_last if device.type == "cuda" and images else torch.preserve_format


def make_grad_scaler(device: torch.device, enabled: bool) -> torch.amp.GradScaler:
    """A GradScaler that is active only for fp16 autocast (bf16 and fp32 need none)."""
    return torch.amp.GradScaler("cuda", enabled=amp_dtype(device, enabled) == torch.float16)


def init_distributed() -> tuple[int, int, int]:
    """Join the process group when launched by torchrun (RANK/WORLD_SIZE set); return
    (rank, world_size, local_rank). NCCL on CUDA, gloo on CPU; (0, 1, 0) when not distributed."""
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return 0, 1, 0
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
    return dist.get_rank(), dist.get_world_size(), local_rank


def cleanup_distributed() -> None:
    """Leave the process group, if one was joined (safe to call when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_main() -> bool:
    """True on rank 0 (or when not distributed): the one process that logs and writes files."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Average a tensor over ranks (a no-op copy when not distributed)."""
    t = t.detach().clone()
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
        t /= dist.get_world_size()
    return t


def accumulate_grad(p: torch.Tensor, g: torch.Tensor) -> None:
    """p.grad += g (p.grad = g when it is None), kept in p's own memory layout. `.backward()`
    does this itself (AccumulateGrad's layout contract); a gradient taken with
    torch.autograd.grad and assigned by hand may come in another layout (an NCHW gradient for a
    channels_last weight), which CUDA's fused Adam refuses ("params, grads, exp_avgs, and
    exp_avg_sqs must have same dtype, device, and layout") and which would make every later
    optimizer kernel stride-mismatched."""
    if g.stride() != p.stride():
        g = torch.empty_like(p).copy_(g)  # empty_like keeps p's strides
    p.grad = g if p.grad is None else p.grad + g


def average_gradients(params: Sequence[torch.Tensor]) -> None:
    """Average the .grad of `params` over ranks in one flat all-reduce (no-op when not
    distributed). For steps that route several losses to several networks by hand, where
    DDP's backward hooks do not apply."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    grads = [p.grad for p in params if p.grad is not None]
    flat = torch.cat([g.flatten() for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    for g, chunk in zip(grads, flat.split([g.numel() for g in grads])):
        g.copy_(chunk.view_as(g))


def any_rank(flag: bool, device: torch.device) -> bool:
    """True when `flag` is True on any rank: used so all ranks stop at the same step."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def gather_objects(obj: Any) -> list:
    """Every rank's `obj` as a list indexed by rank ([obj] when not distributed)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def print0(*args: Any) -> None:
    """print on rank 0 only, flushed (logs of cluster jobs are read while they run). Output
    piped into a reader that has gone (`| head`) is dropped from then on: the run goes on."""
    if is_main():
        try:
            print(*args, flush=True)
        except BrokenPipeError:
            silence_stdout()


def silence_stdout() -> None:
    """Point stdout at /dev/null: its reader closed the pipe, and Python would otherwise raise
    BrokenPipeError again at each print and at exit."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DDP and/or torch.compile wrappers (for state dicts and eval)."""
    model = getattr(model, "_orig_mod", model)
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


class StopSignal:
    """Turns SIGTERM/SIGINT/SIGHUP (the terminal closed) into a flag the training loop polls, so
    it can save and exit.

    A second Ctrl-C raises KeyboardInterrupt as usual. Use as a context manager; the previous
    handlers come back on exit. Signals can only be caught in the main thread: elsewhere it is
    a flag that never rises.
    """

    def __init__(self):
        self.raised: str | None = None
        self._old: dict = {}

    def _handle(self, signum, frame):
        if self.raised and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.raised = signal.Signals(signum).name

    def __enter__(self) -> "StopSignal":
        import threading
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGTERM, signal.SIGINT, getattr(signal, "SIGHUP", None)):
                if s is not None:  # no SIGHUP on Windows
                    self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)

    def poll(self, step: int, device: torch.device) -> bool:
        """Whether to stop after `step`: a signal arrived on this rank or, under torch.distributed,
        on any rank (a collective, so polled every 10 steps: all ranks stop at the same step)."""
        if not (dist.is_available() and dist.is_initialized()):
            return self.raised is not None
        return step % 10 == 0 and any_rank(self.raised is not None, device)

    def exit(self, step: int, what: str = "step") -> NoReturn:
        """After the checkpoint: say so, and exit with 128 + the signal's number (143 for SIGTERM,
        130 for SIGINT), the shell's "killed by it", so a scheduler or a `&&` chain does not read a
        stopped run as a finished one. The same command resumes."""
        print0(f"stopped by {self.raised or 'a signal on another rank'} at {what} {step}; checkpoint saved, run the "
               f"same command to resume")
        raise SystemExit(128 + getattr(signal, self.raised or "SIGTERM", signal.SIGTERM))


# ----------------------------------------------------------------------------------------------
# checkpoints: atomic, complete, with clear errors
# ----------------------------------------------------------------------------------------------
def rng_state() -> dict:
    """Every RNG this project draws from (python, numpy, torch CPU, torch CUDA), as tensors and plain
    values only, so that checkpoints load with torch.load(weights_only=True)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    numpy_state = {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                   "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore the RNGs saved by `rng_state` (CUDA ones only when the device count matches)."""
    random.setstate(state["python"])
    s = state["numpy"]
    np.random.set_state((s["name"], s["keys"].numpy().astype(np.uint32), s["pos"], s["has_gauss"], s["cached_gaussian"])
                        if isinstance(s, dict) else s)  # a tuple: a checkpoint written before version 2
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


# The one way the scripts write a file. A reader (a resumed run, an image viewer, a second
# process) sees the old file or the new one, never half of one; a failed write (a full disk)
# leaves no temporary file and names the file it could not write.
@contextmanager
def atomic_write(path: str, mode: str = "w"):
    """Open a temporary file `.NAME.PID.tmp` beside `path` for writing ("w" text, "wb" bytes),
    creating the folder; when the block ends it is flushed to disk (fsync) and moved onto
    `path` in one step (os.replace). On any error the temporary file is removed and `path` is
    left as it was; an OSError (ENOSPC, EROFS, ...) is raised again with `path` as its file
    name, which `user_errors` prints as one line."""
    folder, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(folder, f".{name}.{os.getpid()}.tmp")
    try:
        os.makedirs(folder, exist_ok=True)
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(e, OSError) and e.errno is not None and not e.filename:
            raise OSError(e.errno, e.strerror, path) from None
        raise


def remove_stale_writes(folder: str) -> None:
    """Delete the temporary files (`.NAME.PID.tmp`) in `folder` that `atomic_write` left when its
    process was killed mid-write (kill -9, a lost node): never a finished file."""
    for f in sorted(os.listdir(folder)):
        pid = f.rsplit(".", 2)[-2] if f.startswith(".") and f.endswith(".tmp") and f.count(".") >= 3 else ""
        if pid.isdigit() and not pid_alive(int(pid)):
            os.remove(os.path.join(folder, f))
            print0(f"removed {os.path.join(folder, f)}, left by an interrupted write")


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists on this machine (signal 0 only asks)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, under another user
    return True


def save_checkpoint(path: str, script: str, **state: Any) -> None:
    """Write `state` (model, optimizer, scaler, step, config, rng, ...) to `path` atomically.

    The file is written next to `path` and moved into place with os.replace, so a crash or a
    full disk never leaves a half-written checkpoint where the last good one was. `script`
    (e.g. "vlae") is stored so another script's checkpoint is refused on load.
    """
    payload = {"script": script, "version": CHECKPOINT_VERSION, **state}
    try:
        with atomic_write(path, "wb") as f:
            torch.save(payload, f)
    except (RuntimeError, OSError) as e:  # torch's writer reports a full disk as a RuntimeError
        first = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        raise CheckpointWriteError(f"could not write the checkpoint {path} ({first}; disk full?); the "
                                   f"previous checkpoint there, if any, is kept: free space and run the same "
                                   f"command to resume from it") from None


# Checkpoints written before the RNG state became tensors (version 1) hold numpy's as an ndarray:
# these rebuild plain arrays only, so they are allowed to the safe unpickler.
LEGACY_NUMPY_GLOBALS = [(np._core if hasattr(np, "_core") else np.core).multiarray._reconstruct, np.ndarray,
                        np.dtype, type(np.dtype(np.uint32))]


class CheckpointWriteError(ValueError):
    """A checkpoint could not be written (a full disk, a lost mount); the previous one is intact."""


UNREADABLE_HINT = ("; it is truncated or not a checkpoint: to train, --fresh starts over in the same --out (the file "
                   "is replaced at the first save); to evaluate, pass another --checkpoint")


RUN_ENTRIES = ("config", "models", "step")  # what every script's run checkpoint holds


def load_checkpoint(path: str, script: str, need: Sequence[str] = ()) -> dict:
    """Read a checkpoint written by `save_checkpoint` for `script`, on the CPU.

    Raises FileNotFoundError if `path` is missing, ValueError if it is not a checkpoint of
    this project, belongs to another script (the message names both), or lacks one of the
    entries in `need` (RUN_ENTRIES for a run's checkpoint).
    """
    path = checkpoint_file(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path}: train first, or pass --checkpoint "
                                f"OUT/checkpoint.pt of a finished or interrupted run")
    try:  # weights_only: a crafted pickle cannot run code; numpy arrays only for older checkpoints' RNG state
        with torch.serialization.safe_globals(LEGACY_NUMPY_GLOBALS):
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = next((line.strip() for line in str(e).splitlines() if "GLOBAL" in line or "got <class" in line), "")
        if not found:  # not a pickle of objects at all: a truncated or foreign file
            raise ValueError(f"{path} is not a readable checkpoint (UnpicklingError){UNREADABLE_HINT}") from None
        raise ValueError(f"refusing to load {path}: it holds {found[:160]}; a checkpoint of this project holds "
                         f"only tensors and plain values, and unpickling other objects could run code. Load it "
                         f"yourself with torch.load(weights_only=False) only if you trust where it came from") from None
    except Exception as e:  # a truncated or foreign file
        raise ValueError(f"{path} is not a readable checkpoint ({type(e).__name__}: {e}){UNREADABLE_HINT}") from None
    if not isinstance(payload, dict) or "script" not in payload:
        raise ValueError(f"{path} is not a checkpoint of this project (no 'script' entry)")
    if payload["script"] != script:
        raise ValueError(f"{path} was written by {payload['script']}.py, not {script}.py: "
                         f"use `python {payload['script']}.py ... --checkpoint {path}`")
    payload["path"] = path
    require_entries(payload, need)
    return payload


def require_entries(payload: dict, need: Sequence[str]) -> None:
    """ValueError naming the checkpoint (payload['path']) when an entry in `need` is missing, or its
    config or models is not a dict."""
    missing = [k for k in need if k not in payload]
    if missing or any(not isinstance(payload[k], dict) for k in ("config", "models") if k in need):
        raise ValueError(f"{payload['path']} lacks its {', '.join(missing) or 'config or models'} entry (it holds "
                         f"{', '.join(sorted(map(str, payload)))}){UNREADABLE_HINT}")


def checkpoint_file(path: str) -> str:
    """--checkpoint as a file: a run folder stands for its checkpoint.pt (so the run folder,
    not its parent, is where eval, sample and figures write)."""
    return os.path.join(path, "checkpoint.pt") if os.path.isdir(path) else path


def load_weights(module: nn.Module, state: dict, name: str) -> None:
    """Load state['models'][name] of the checkpoint `load_checkpoint` read into `module`, checked first: the entry must exist, every
    floating tensor be finite (a NaN-weight file would evaluate to NaN with exit 0), and the
    names and shapes fit the model built from the checkpoint's own settings. Each failure is a
    ValueError naming the checkpoint and what does not match."""
    weights, path = state["models"].get(name), state["path"]
    if not isinstance(weights, dict):
        raise ValueError(f"{path} holds no '{name}' weights (its models: {', '.join(map(str, state['models']))})"
                         f"{UNREADABLE_HINT}")
    bad = [k for k, v in weights.items() if torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ValueError(f"{path} holds non-finite (NaN or inf) weights in {len(bad)} tensor(s), e.g. '{name}' "
                         f"{bad[0]}: it cannot be evaluated or resumed; use an earlier checkpoint or train again")
    try:
        module.load_state_dict(weights)
    except RuntimeError as e:
        details = [line.strip() for line in str(e).splitlines()[1:] if line.strip()]
        raise ValueError(f"{path} does not fit the '{name}' network built from its own saved settings "
                         f"({'; '.join(details)[:300]}): the file is damaged or was edited{UNREADABLE_HINT}") from None


# ----------------------------------------------------------------------------------------------
# metrics: JSONL log and a PIL line plot of it
# ----------------------------------------------------------------------------------------------
def append_jsonl(path: str, record: dict) -> None:
    """Append one JSON line to `path` (metrics.jsonl); floats stay floats, tensors become floats."""
    clean = {k: (v.item() if isinstance(v, torch.Tensor) else v) for k, v in record.items()}
    try:
        with open(path, "a") as f:
            f.write(json.dumps(clean) + "\n")
    except OSError as e:  # a full disk: name the file (a failed write carries no file name)
        raise OSError(e.errno, e.strerror, path) from None


def read_jsonl(path: str) -> list[dict]:
    """All rows of a JSONL file as dicts ([] when it does not exist)."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def truncate_jsonl(path: str, max_step: int) -> None:
    """Drop lines logged after `max_step`: a resumed run re-logs the steps after its checkpoint."""
    rows = [r for r in read_jsonl(path) if r.get("step", 0) <= max_step]
    with atomic_write(path) as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


_COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
            (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def plot_curves(metrics_path: str, png_path: str, keys: Sequence[str],
                width: int = 300, height: int = 190) -> bool:
    """Redraw `keys` of metrics.jsonl against `step`, one small panel per key, as a PNG; returns
    whether it wrote one.

    Each panel has its own y-range (ticks at the smallest and largest value), so terms of
    different scales stay readable. Keys with no finite values are left out; nothing is drawn
    (False) without data, e.g. after --steps 0.
    """
    rows = read_jsonl(metrics_path)
    series = []
    for k in keys:
        pts = [(r["step"], r[k]) for r in rows if k in r and isinstance(r[k], (int, float)) and math.isfinite(r[k])]
        if pts:
            series.append((k, pts))
    if not series:
        return False
    cols = min(3, len(series))
    n_rows = math.ceil(len(series) / cols)
    canvas = Image.new("RGB", (cols * width, n_rows * height), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (key, pts) in enumerate(series):
        r, c = divmod(i, cols)
        _draw_panel(draw, (c * width, r * height, width, height), key, pts, _COLOURS[i % len(_COLOURS)])
    with atomic_write(png_path, "wb") as f:
        canvas.save(f, format="PNG")
    return True


def draw_curves(out: str, keys: Sequence[str]) -> list:
    """OUT/figures/curves.png from OUT/metrics.jsonl: [its path], or [] when the run logged nothing
    (--steps 0, or figures drawn into another --out)."""
    path = os.path.join(out, "figures", "curves.png")
    return [path] if plot_curves(os.path.join(out, "metrics.jsonl"), path, keys) else []


def logged(out: str) -> bool:
    """Whether OUT holds a training log (so its figures include curves.png)."""
    return os.path.exists(os.path.join(out, "metrics.jsonl"))


def _draw_panel(draw: ImageDraw.ImageDraw, box, key: str, pts, colour) -> None:
    """One panel: the key above, the series as a line, "step" below; ticks and their labels at the
    first and last logged step and at the smallest and largest value (one tick, mid-height, for
    a constant series), so every tick stands at a value the series takes."""
    x0, y0, w, h = box
    left, right, top, bottom = x0 + 54, x0 + w - 12, y0 + 18, y0 + h - 32
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    x_lo, x_hi, y_lo, y_hi = min(xs), max(xs), min(ys), max(ys)
    to_x = lambda x: left + (x - x_lo) / (x_hi - x_lo) * (right - left) if x_hi > x_lo else (left + right) / 2
    to_y = lambda y: bottom - (y - y_lo) / (y_hi - y_lo) * (bottom - top) if y_hi > y_lo else (top + bottom) / 2
    grey = (90, 90, 90)
    draw.rectangle([left, top, right, bottom], outline=(180, 180, 180))
    draw.text((x0 + 4, y0 + 3), key, fill=(0, 0, 0))
    for x in sorted({x_lo, x_hi}):
        label, at = f"{x:g}", to_x(x)
        draw.line([(at, bottom), (at, bottom + 3)], fill=grey)
        draw.text((min(at - draw.textlength(label) / 2, x0 + w - 2 - draw.textlength(label)), bottom + 5), label,
                  fill=grey)
    draw.text(((left + right - draw.textlength("step")) / 2, bottom + 18), "step", fill=grey)
    for y in sorted({y_lo, y_hi}):
        label, at = f"{y:.3g}", to_y(y)
        draw.line([(left - 3, at), (left, at)], fill=grey)
        draw.text((left - 5 - draw.textlength(label), at - 5), label, fill=grey)
    to_px = [(to_x(x), to_y(y)) for x, y in pts]
    if len(to_px) == 1:
        draw.ellipse([to_px[0][0] - 2, to_px[0][1] - 2, to_px[0][0] + 2, to_px[0][1] + 2], fill=colour)
    else:
        draw.line(to_px, fill=colour, width=2)


def format_eta(seconds: float) -> str:
    """Seconds -> '1h02m' / '3m05s' / '12s' for log lines."""
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class Progress:
    """Progress of a long job on stderr: `label: done/total unit (rate unit/s, ETA ...)`. Silent for
    a job that ends within `every` seconds; otherwise a line every `every` seconds (the first one
    gives the job's size and ETA) and one at the end. On a terminal it rewrites one line; into a
    log file (not a tty) each update is its own line, with no carriage returns. Rank 0 only.
    Use: p = Progress("Parzen", len(x), "faces"); p.update(n) after each n done."""

    def __init__(self, label: str, total: int, unit: str = "images", every: float = 5.0, enabled: bool = True,
                 announce: bool = False):
        self.label, self.total, self.unit, self.every = label, total, unit, every
        self.enabled, self.tty = enabled and is_main() and total > 0, sys.stderr.isatty()
        self.t0 = self.last = time.time()
        self.done, self.shown = 0, False
        if announce and self.enabled:  # a job known to be long says its size at once (its ETA follows)
            print(f"{label}: 0/{total} {unit}", file=sys.stderr, flush=True)
            self.shown = True

    def update(self, n: int = 1) -> None:
        self.done += n
        now, finished = time.time(), self.done >= self.total
        if self.enabled and (now - self.last >= self.every or (finished and self.shown)):
            rate = self.done / max(now - self.t0, 1e-9)
            line = (f"{self.label}: {self.done}/{self.total} {self.unit} ({rate:.3g} {self.unit}/s, "
                    f"ETA {format_eta((self.total - self.done) / max(rate, 1e-9))})")
            end = "\n" if finished or not self.tty else ""
            print(("\r" if self.tty else "") + line, end=end, file=sys.stderr, flush=True)
            self.last, self.shown = now, True


USER_OS_ERRORS = (errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EEXIST, errno.ENOTDIR, errno.EACCES)


@contextmanager
def user_errors():
    """Around a script's main: errors a user can fix (bad flags, missing or corrupt files, a NaN
    loss) become one `error:` line and exit status 2; the process group is left either way."""
    try:
        yield
    except BrokenPipeError:  # stdout's reader (`| head`) is gone: end quietly, as a Unix tool does
        silence_stdout()
        raise SystemExit(0) from None
    except (ValueError, FileNotFoundError, NonFiniteLoss) as e:
        fail(str(e))
    except (PermissionError, NotADirectoryError, IsADirectoryError) as e:  # e.g. --out under a file, or in /sys
        fail(f"cannot write to {e.filename or 'a path'} ({e.strerror}): if it is under --out or --cache-dir, "
             f"pass a folder you can write to")
    except OSError as e:
        if e.errno not in USER_OS_ERRORS:
            raise
        fail(f"cannot write to {e.filename or 'a path'} ({e.strerror}): "
             + ("free some space or pass a folder on another disk (--out, --cache-dir)" if e.errno in
                (errno.ENOSPC, errno.EDQUOT) else "pass a folder you can write to (--out, --cache-dir)"))
    finally:
        cleanup_distributed()


def shown(path: str) -> str:
    """`path` as the scripts print it: relative to the working folder when it lies under it."""
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


def wrote(path: str, replaced: bool) -> None:
    """Print where a command wrote a file, and say so when it replaced one that was there (the
    `sample` command draws over the samples.png that training wrote)."""
    print(f"wrote {shown(path)}" + (" (it replaced the file that was there)" if replaced else ""))


def fail(message: str) -> NoReturn:
    """Print one clear line to stderr and exit with status 2 (bad arguments or input)."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def merge_saved_config(cfg: Any, saved: dict, explicit: set, free: set, where: str, resume: bool = True) -> Any:
    """The config to resume (`resume`) or evaluate with: the saved one, with the explicitly given
    fields in `free` (run control: steps, device, output paths...) taken from the command line.

    Raises ValueError when the command line explicitly sets another field (one that shapes
    the model or the objective) to a value other than the saved one, naming flag and values;
    and, to evaluate, when the saved data folder is not there (a relative path saved from
    another working folder), naming --data-dir.
    """
    merged = dict(saved)
    for name in explicit:
        value, old = getattr(cfg, name), saved.get(name)
        if name in free or name not in saved:
            merged[name] = value
        elif value != old:
            flag = "--" + name.replace("_", "-")
            fix = ("pass the same flags to continue it, or --fresh (or another --out) to start over" if resume else
                   f"drop {flag} (a checkpoint is evaluated with its own settings) or pass another --checkpoint")
            raise ValueError(f"{where} was trained with {flag} {old}, not {value}: {fix}")
    if not resume and "data_dir" not in explicit and merged.get("dataset") != "toy" \
            and merged.get("data_dir") and not os.path.exists(merged["data_dir"]):
        raise ValueError(f"{where} was trained on {merged['data_dir']}, which is not there from {os.getcwd()}: "
                         f"pass --data-dir with the data set's folder")
    known = {f.name for f in dataclasses.fields(type(cfg))}
    return type(cfg)(**{k: v for k, v in merged.items() if k in known})


# ----------------------------------------------------------------------------------------------
# training-run plumbing shared by the four scripts (their step loops stay in the scripts)
# ----------------------------------------------------------------------------------------------
class NonFiniteLoss(RuntimeError):
    """The loss became NaN or inf; the run stops and keeps its last good checkpoint."""


def check_finite(bad: torch.Tensor, step: int, out: str) -> None:
    """Raise NonFiniteLoss if `bad` (a bool tensor accumulated over steps, on any rank) is set.
    Checked only at log and checkpoint steps, so the training step never waits for the GPU."""
    if (all_reduce_mean(bad.float()) > 0).item():
        raise NonFiniteLoss(f"the loss became NaN or inf at or before step {step}; stopping. The last "
                            f"good checkpoint, if any, is kept in {out}/checkpoint.pt. Try a lower "
                            f"--lr, or --no-amp")


class Meter:
    """The log of a training run: every `log` call averages the loss terms over ranks, prints a
    line with images/s (all ranks) and the ETA, and appends a row to OUT/metrics.jsonl (rank 0)
    with the wall time, counting the runs it resumes (`earlier` seconds). Time spent inside
    `with meter.paused():` (a checkpoint) is left out of images/s."""

    def __init__(self, out: str, steps: int, start: int, images_per_step: int, earlier: float = 0.0):
        self.out, self.steps, self.start, self.images_per_step, self.earlier = out, steps, start, images_per_step, earlier
        self.t0 = self.t_log = time.time()
        self.step_log = start

    def log(self, step: int, terms: dict) -> None:
        values = {k: all_reduce_mean(v).item() if isinstance(v, torch.Tensor) else v for k, v in terms.items()}
        now = time.time()
        rate = (step - self.step_log) * self.images_per_step / max(now - self.t_log, 1e-9)
        eta = (self.steps - step) * (now - self.t0) / max(step - self.start, 1)
        print0(f"step {step}/{self.steps} | " + " ".join(f"{k} {v:.4g}" for k, v in values.items())
               + f" | {rate:.0f} img/s | eta {format_eta(eta)}")
        if is_main():
            append_jsonl(os.path.join(self.out, "metrics.jsonl"),
                         {"step": step, **values, "images_per_s": rate, "seconds": self.earlier + now - self.t0})
        self.t_log, self.step_log = now, step

    @contextmanager
    def paused(self):
        t = time.time()
        yield
        self.t_log += time.time() - t


def start_run_folder(cfg: Any, train_set: Any, model: nn.Module, start: int, device: torch.device,
                     images_per_step: int, label: str = "") -> Meter:
    """Rank 0: create OUT/figures, write OUT/config.json (the config, the data split, the world
    size), drop metrics rows after `start` (a resumed run logs them again), and print the run's
    header: data, processes, parameters, the global batch and how many epochs the run is.
    Returns the run's Meter, which counts the wall time of the runs being resumed."""
    data_description = train_set.description
    out, world = cfg.out, dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    if is_main():
        os.makedirs(os.path.join(out, "figures"), exist_ok=True)
        for folder in (out, os.path.join(out, "figures")):
            remove_stale_writes(folder)
        save_json(os.path.join(out, "config.json"),
                  {**dataclasses.asdict(cfg), "data": data_description, "world_size": world})
        truncate_jsonl(os.path.join(out, "metrics.jsonl"), start)
    print0(f"{label}{data_description}; {world} process(es) on {device}, "
           f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters; global batch {images_per_step} "
           f"({cfg.batch_size} per process x {cfg.grad_accum} micro-batches x {world} processes): {cfg.steps} steps "
           f"are {cfg.steps * images_per_step / len(train_set):.1f} epochs of {len(train_set)}")
    rows = read_jsonl(os.path.join(out, "metrics.jsonl")) if start else []
    earlier = rows[-1]["seconds"] if rows and rows[-1]["step"] <= start else 0.0
    return Meter(out, cfg.steps, start, images_per_step, earlier)


def save_training_state(cfg: Any, script: str, step: int, models: dict, optimizers: dict,
                        scaler: torch.amp.GradScaler, curve_keys: Sequence[str], extra: dict | None = None) -> None:
    """Collective: gather every rank's RNG state and weights' fingerprint, then rank 0 writes
    cfg.out/checkpoint.pt atomically (the config, `models` and `optimizers` as name -> module /
    optimizer dicts, `extra` any other state, e.g. a controller's) and redraws curves.png. Raises
    RuntimeError, writing nothing, when the ranks' copies of a model have drifted apart
    (`check_replicas_agree`); CheckpointWriteError (the previous checkpoint kept) on a failed write."""
    out = cfg.out
    rng, fingerprints = zip(*gather_objects((rng_state(), parameter_fingerprint(models))))
    check_replicas_agree(fingerprints)
    if is_main():
        save_checkpoint(os.path.join(out, "checkpoint.pt"), script, step=step, config=dataclasses.asdict(cfg),
                        models={k: unwrap(m).state_dict() for k, m in models.items()},
                        optimizers={k: o.state_dict() for k, o in optimizers.items()},
                        scaler=scaler.state_dict(), rng=list(rng), world_size=len(rng), extra=extra or {})
        plot_curves(os.path.join(out, "metrics.jsonl"), os.path.join(out, "figures", "curves.png"), curve_keys)


def parameter_fingerprint(models: dict) -> dict:
    """name -> (sum, sum of squares) of the model's parameters, in float64: equal across ranks
    whose copies hold the same weights. Empty when not distributed (nothing to compare)."""
    if not (dist.is_available() and dist.is_initialized()):
        return {}
    out = {}
    for name, m in models.items():
        total = torch.zeros(2, dtype=torch.float64, device=next(unwrap(m).parameters()).device)
        for p in unwrap(m).parameters():  # one float64 copy at a time, not the whole model at once
            q = p.detach().double()
            total += torch.stack([q.sum(), q.square().sum()])
        out[name] = tuple(total.tolist())
    return out


def check_replicas_agree(fingerprints: Sequence[dict]) -> None:
    """Raise RuntimeError (on every rank: all hold the gathered list) when a rank's
    `parameter_fingerprint` differs from rank 0's. Data parallelism keeps the copies equal to
    the bit; a difference means a gradient that was not averaged on every rank or ranks that
    started from different weights, and a checkpoint would silently keep rank 0's copy."""
    for rank, prints in enumerate(fingerprints[1:], start=1):
        for name, value in prints.items():
            if not all(math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12) for a, b in zip(value, fingerprints[0][name])):
                raise RuntimeError(f"rank {rank}'s copy of '{name}' differs from rank 0's (parameter sum and sum of "
                                   f"squares {value} vs {fingerprints[0][name]}): its gradients were not averaged on "
                                   f"every rank, or the ranks started from different weights; no checkpoint written")


_RUN_LOCKS: dict = {}  # folder -> the open file whose exclusive flock this process holds


class RunFolderBusy(ValueError):
    """Another live process is training into the same --out."""


def lock_run_folder(out: str) -> None:
    """Rank 0: an exclusive lock on OUT/.lock for the rest of the process (flock: the kernel
    drops it when the process dies, however it dies), with this process's PID in the file. A
    second run on the same --out is refused with the first one's PID (RunFolderBusy); a lock
    file left by a dead process is taken over with a note. Raises PermissionError or OSError
    when OUT cannot be written."""
    import fcntl
    if not is_main() or os.path.abspath(out) in _RUN_LOCKS:
        return
    if os.path.islink(out) and not os.path.exists(out):
        raise FileNotFoundError(f"--out {out} is a symbolic link to {os.readlink(out)}, which does not exist: create "
                                f"that folder, or pass another --out")
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, ".lock")
    f = open(path, "a+")
    f.seek(0)
    previous = f.read().strip()
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise RunFolderBusy(f"{out} is in use by another training run (PID {previous or 'unknown'}): wait for it or "
                            f"stop it, or pass another --out") from None
    if previous and previous != str(os.getpid()):
        print0(f"note: took over {path}, left by process {previous}, which is no longer running")
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    _RUN_LOCKS[os.path.abspath(out)] = f
    atexit.register(_release_run_lock, f)


def _release_run_lock(f) -> None:
    """At a clean exit (a finished run, an error, SIGTERM's save): empty the lock file, so the
    next run takes it without a note; only a killed process leaves its PID there."""
    try:
        f.seek(0)
        f.truncate()
        f.close()
    except (OSError, ValueError):
        pass


def checkpoint_to_evaluate(cfg: Any, explicit: set, script: str, run_fields: set, resolve,
                           default_out: str) -> tuple[Any, dict]:
    """(config, state) of the checkpoint that sample / figures / eval read: --checkpoint, a run
    folder or its checkpoint.pt (default OUT's, else `default_out`'s). The saved config wins, but
    for `run_fields` given on the command line (merge_saved_config); `resolve` fills the script's
    derived defaults; outputs go to the run's own folder unless --out is given. ValueError for a
    comma-separated list (one run at a time) and for what load_checkpoint refuses."""
    path = cfg.checkpoint or os.path.join(cfg.out or default_out, "checkpoint.pt")
    if "," in path and not os.path.exists(path):
        raise ValueError(f"--checkpoint {path}: {script}.py evaluates one checkpoint at a time; run the command "
                         f"once per checkpoint (each writes into its own run folder)")
    path = checkpoint_file(path)
    state = load_checkpoint(path, script, RUN_ENTRIES)
    saved = merge_saved_config(cfg, state["config"], explicit, run_fields, path, resume=False)
    if "out" not in explicit:
        saved = dataclasses.replace(saved, out=os.path.dirname(os.path.abspath(path)))
    return resolve(saved), state


def checkpoint_to_resume(cfg: Any, explicit: set, script: str, run_fields: set, resolve) -> tuple[Any, dict | None]:
    """(config, state) of the checkpoint in cfg.out that this run resumes, or (cfg, None) for a
    fresh run (none there, or --fresh). First takes the run's lock on cfg.out (`lock_run_folder`):
    every training run starts here, before it reads or writes anything in the folder. The saved
    config wins, but for `run_fields` given on the command line; a conflicting model flag is a ValueError (see merge_saved_config). `resolve`
    fills the script's derived defaults. Under torch.distributed every rank must see the same
    checkpoint (ValueError otherwise: --out is then not one folder shared by all nodes)."""
    lock_run_folder(cfg.out)
    path = os.path.join(cfg.out, "checkpoint.pt")
    state = None if cfg.fresh or not os.path.exists(path) else load_checkpoint(path, script)
    seen = gather_objects(None if state is None else state.get("step"))
    for rank, step in enumerate(seen):
        if step != seen[0]:
            view = lambda s: "no checkpoint" if s is None else f"a checkpoint at step {s}"
            raise ValueError(f"rank {rank} sees {view(step)} in {cfg.out} and rank 0 sees {view(seen[0])}: "
                             f"--out must be a folder every node shares (rank 0 writes the checkpoint, all ranks "
                             f"resume from it)")
    if state is None:
        return cfg, None
    require_entries(state, RUN_ENTRIES)  # after the collective above: every rank raises alike, none hangs
    return resolve(merge_saved_config(cfg, state["config"], explicit, run_fields, path)), state


def restore_training_state(state: dict | None, models: dict, optimizers: dict, scaler: torch.amp.GradScaler,
                           seed: int) -> int:
    """The step a run starts from. A fresh run (state None): 0, each rank's RNGs seeded with
    seed + rank. A resumed one: load weights, optimizer moments and the scaler from a
    `save_training_state` checkpoint, and this rank's RNG state when the number of ranks is
    unchanged (resume is then exact; on another number of ranks each rank gets a fresh,
    distinct stream); returns its step."""
    distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    if state is None:
        seed_everything(seed, rank)
        return 0
    for k, m in models.items():
        load_weights(unwrap(m), state, k)
    for k, o in optimizers.items():
        o.load_state_dict(state["optimizers"][k])
    scaler.load_state_dict(state["scaler"])
    if state["world_size"] == world:
        set_rng_state(state["rng"][rank])
    else:
        seed_everything(seed + 7919 * state["step"], rank)
    print0(f"resuming {state['path']} at step {state['step']}")
    return state["step"]
