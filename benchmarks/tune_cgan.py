"""Sec. 4.4's tuning of cmma.py's CGAN baseline: "For CGAN, we selected the learning rate of
generator and discriminator and the variance of weights by verifying the conditional
log-likelihood on the validation set."

    python benchmarks/tune_cgan.py --grid 'lr=1e-4,3e-4,1e-3;lr_d=1e-4,3e-4,1e-3;init_std=0,0.01,0.02' \
        --tune-steps 5000 --dataset celeba --data-dir data/celeba --out runs/cmma-celeba-cgan

Each combination of the grid trains --tune-steps steps into OUT/tune/candidate-i (no figures, no
eval) through cmma.py's own `train`, and is scored by the best Parzen log-likelihood over
--parzen-grid on the validation faces (cmma's `eval_subsets`). Every score and the choice go to
OUT/tune.json, reused when it holds the same grid, steps and candidate settings (every flag that
shapes a candidate's training or score, `candidate_settings`; --fresh tunes again; a new tuning
starts every candidate over); then the
winner trains into OUT for --steps, with its figures and eval.json, as `cmma.py --model cgan`
would. Every other flag is cmma.py's. One process: pass the chosen values to torchrun after.
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import sys

import torch
import torch.nn as nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import cmma  # noqa: E402
import common  # noqa: E402

TUNABLE = ("lr", "lr_d", "init_std")
# flags that change neither a candidate's training nor its validation score
NOT_TUNING = common.RUN_FIELDS | {"eval_images", "is_samples"} | set(TUNABLE)


def candidate_settings(cfg: cmma.Config) -> dict:
    """The flags a tuning's candidates share (the model, optimizer, networks, data, seed, the
    validation Parzen's settings): a saved tuning is reused only for the same."""
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in NOT_TUNING}


def tune_grid(text: str) -> list[dict]:
    """--grid 'lr=a,b;lr_d=c;init_std=d,e' -> every combination as a dict of floats. Raises
    ValueError naming the flag for an unknown name or a value that is not a number."""
    axes = {}
    for part in (p for p in text.split(";") if p.strip()):
        name, _, values = part.partition("=")
        name = name.strip()
        if name not in TUNABLE:
            raise ValueError(f"--grid: unknown setting {name!r}; tunable are {', '.join(TUNABLE)} "
                             f"(e.g. 'lr=1e-4,1e-3;lr_d=1e-4,1e-3;init_std=0,0.02')")
        try:
            axes[name] = [float(v) for v in values.split(",")]
        except ValueError:
            raise ValueError(f"--grid: {part!r} must be NAME=number,number,...") from None
    if not axes:
        raise ValueError("--grid is empty: give NAME=number,...;NAME=... with NAME one of " + ", ".join(TUNABLE))
    return [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())]


def validation_parzen(cfg: cmma.Config, model: nn.Module, device) -> float:
    """The best Parzen log-likelihood over --parzen-grid on the validation faces, nats per face."""
    _, (x, y), _ = cmma.eval_faces(cfg, device)
    torch.manual_seed(cfg.seed)
    return cmma.parzen_scores(model, x, y, cfg.parzen_samples, cmma.parzen_sigmas(cfg.parzen_grid)).max().item()


def read_tuning(out: str) -> dict | None:
    """OUT/tune.json (the grid, the candidates' scores and the choice) when the run was tuned, else None."""
    path = os.path.join(out, "tune.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def tune(cfg: cmma.Config, explicit: set, grid: str, steps: int) -> dict:
    """The chosen values (name -> float) for the cgan `cfg` (resolved), after training and scoring
    every combination of `grid` for `steps` steps (see the module's docstring); OUT/tune.json."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("tuning runs in one process; tune first, then pass the chosen --lr, --lr-d and "
                         "--init-std (OUT/tune.json) to torchrun")
    saved, path = read_tuning(cfg.out), os.path.join(cfg.out, "tune.json")
    settings = candidate_settings(cfg)
    if (saved and not cfg.fresh and saved["grid"] == grid and saved["tune_steps"] == steps
            and saved.get("settings") == settings):
        common.print0(f"tuning: reusing {path}: {saved['chosen']}")
        return saved["chosen"]
    device, results = common.pick_device(cfg.device), []
    for i, candidate in enumerate(tune_grid(grid)):
        if "lr" in candidate and "lr_d" not in candidate and "lr_d" not in explicit:
            candidate["lr_d"] = candidate["lr"]  # --lr-d's default: the same as --lr
        trial = dataclasses.replace(cfg, steps=steps, out=os.path.join(cfg.out, "tune", f"candidate-{i}"), fresh=True,
                                    **candidate)  # a new tuning starts each candidate over
        model = cmma.train(trial, explicit, figures=False)
        results.append({**candidate, "valid_parzen_nats_per_face": validation_parzen(trial, model, device)})
        common.print0(f"tuning: {candidate} -> {results[-1]['valid_parzen_nats_per_face']:,.1f} nats per face")
    chosen = {k: v for k, v in max(results, key=lambda r: r["valid_parzen_nats_per_face"]).items() if k in TUNABLE}
    common.save_json(path, {"grid": grid, "tune_steps": steps, "settings": settings, "valid_faces": cfg.valid_images,
                            "parzen_samples": cfg.parzen_samples, "candidates": results, "chosen": chosen})
    common.print0(f"tuning: chose {chosen}")
    return chosen


def main(argv: list | None = None) -> nn.Module:
    parser = argparse.ArgumentParser(prog="benchmarks/tune_cgan.py", description=__doc__.split("\n")[0])
    parser.add_argument("--grid", required=True, help="e.g. 'lr=1e-4,1e-3;lr_d=1e-4,1e-3;init_std=0,0.02'")
    parser.add_argument("--tune-steps", type=int, default=0, help="steps per candidate (0: a tenth of --steps)")
    args, rest = parser.parse_known_args(argv)
    cfg, explicit = common.parse_train_flags(cmma.Config, rest + ["--model", "cgan"])
    with common.user_errors():
        cfg = cmma.resolve_defaults(cfg)
        chosen = tune(cfg, explicit, args.grid, args.tune_steps or max(1, cfg.steps // 10))
        return cmma.train(dataclasses.replace(cfg, **chosen), explicit)


if __name__ == "__main__":
    main()
