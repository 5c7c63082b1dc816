"""The papers' claims, measured on data anyone has, written up as docs/claims/PAPER.md.

    python benchmarks/claims vlae                     # MNIST + faces, small scale (~30 min on 2 CPU cores)
    python benchmarks/claims vlae --skip-faces        # MNIST only (~20 min)
    python benchmarks/claims vlae --scale paper       # the paper's settings (a GPU job)
    python benchmarks/claims cmma                     # MNIST stand-in for faces from attributes (~19 min)
    python benchmarks/claims disentangled             # Lr-LiVAE on MNIST and the toy data (~20 min)
    python benchmarks/claims vae_began                # Table 1's variants on MNIST, faces, the defaults' ablation (~100 min)
    python benchmarks/claims vlae --scale tiny        # a smoke run: writes under --work only
    python benchmarks/claims all --scale medium       # all four at the medium scale: ~12 min on one H200
    python benchmarks/claims all --scale medium --dry-run --device cpu   # its path end to end on a CPU

(`python benchmarks/claims ...`, the old entry point, runs the same.) Each paper's module
trains the runs it needs through the script's own public functions (its `main`, `load_run`,
encoder and decoder), then tests one claim per function. A claim function's docstring quotes the
claim, says where the paper makes it and what counts as holding, decided before the run; it
returns a `Row` (claim | where | what we measured | holds?). The rows and the figures they cite
go to PAPER.md, whose header gives the data, the scale, the machine and the wall time. Every
number comes from the run; one seed (--seed) per run.

Where things go: the training runs in --work (default runs/claims/SCALE; about 1 GB per paper at
the small scale, mostly checkpoints). Only the default scale (small) writes the committed report
(docs/claims/PAPER.md and its figures) and README.md's claims section; any other scale writes its
report under --work/report unless --out is given, and the README only with an explicit --readme.
Reports of another scale than small are named PAPER-SCALE.md (docs/claims/PAPER-medium.md once a
GPU run's report is copied there). The medium scale gives each paper about 3 minutes of one H200,
on faces where the paper's claim is about faces (celeba_identities at 64 px); its step counts
come from the measured rates, written beside each paper's table.

Modules: `shared` (rows, verdicts, runs, data folders, the digit judge, the report writer), then
one per paper: `vlae_claims`, `cmma_claims`, `disentangled_claims`, `vae_began_claims`.
"""
from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import common  # noqa: E402

from . import cmma_claims, disentangled_claims, vae_began_claims, vlae_claims  # noqa: E402

PAPERS = {"vlae": vlae_claims.claims_vlae, "cmma": cmma_claims.claims_cmma,
          "disentangled": disentangled_claims.claims_disentangled, "vae_began": vae_began_claims.claims_vae_began}
DEFAULT_SCALE = "small"  # the only scale whose report is committed


def parse_args(argv: list | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="claims", description=__doc__.split("\n\n")[0])
    parser.add_argument("paper", choices=sorted(PAPERS) + ["all"], help="the paper whose claims to measure, or all")
    parser.add_argument("--data-dir", default=os.path.relpath(os.path.join(ROOT, "..", "shared", "data")),
                        help="folder holding mnist/ (and celeba/, celeba_identities/ for faces)")
    parser.add_argument("--scale", default=DEFAULT_SCALE, choices=("small", "medium", "paper", "tiny"),
                        help="small: CPU minutes, the committed report; medium: ~3 minutes per paper on one H200; "
                             "paper: the paper's settings, a GPU job; tiny: a smoke run")
    parser.add_argument("--dry-run", action="store_true",
                        help="the scale's data, sizes and widths with the tiny scale's counts: its path end to end "
                             "on a CPU in minutes (the numbers mean nothing)")
    parser.add_argument("--skip-faces", action="store_true", help="vlae: the MNIST part only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default=None, help="where PAPER.md and its figures go (default: docs/claims at "
                                                    "the small scale, WORK/report at any other)")
    parser.add_argument("--work", default=None, help="where the training runs go (default: runs/claims/SCALE; "
                                                     "about 1 GB per paper at the small scale)")
    parser.add_argument("--reuse", action="store_true",
                        help="keep finished runs of the same steps in --work (re-measure and rewrite the report only)")
    parser.add_argument("--readme", action=argparse.BooleanOptionalAction, default=None,
                        help="also write the table and main figures into README.md's claims section (default: "
                             "only at the small scale with the default --out)")
    args = parser.parse_args(argv)
    args.work = args.work or os.path.join(ROOT, "runs", "claims", args.scale)
    committed = args.scale == DEFAULT_SCALE and args.out is None
    args.out = args.out or (os.path.join(ROOT, "docs", "claims") if committed else os.path.join(args.work, "report"))
    args.readme = committed if args.readme is None else args.readme
    return args


def main(argv: list | None = None) -> None:
    args = parse_args(argv)
    print(f"claims {args.paper} at the {args.scale} scale: runs in {args.work}, report in {args.out}"
          + (", README.md's section too" if args.readme else ""))
    with common.user_errors():
        device = common.pick_device(args.device)
        for paper in PAPERS if args.paper == "all" else [args.paper]:
            common.seed_everything(args.seed)
            PAPERS[paper](args, device)
