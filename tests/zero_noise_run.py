"""Run a script's main() with every noise draw set to zero, so runs that split a batch
differently (ranks, micro-batches) see the same numbers: python zero_noise_run.py SCRIPT ARGS."""
import importlib
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def zero_noise() -> None:
    randn = torch.randn
    torch.randn = lambda *a, **k: torch.zeros_like(randn(*a, **k))
    torch.randn_like = lambda t, **k: torch.zeros_like(t, **k)


if __name__ == "__main__":
    zero_noise()
    importlib.import_module(sys.argv[1]).main(sys.argv[2:])
