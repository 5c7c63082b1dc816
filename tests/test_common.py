import argparse
import dataclasses
import math
import os
import signal

import numpy as np
import pytest
import torch
from torch.distributions import Normal, kl_divergence

import common


def test_kl_to_standard_normal_matches_torch_distributions():
    torch.manual_seed(0)
    mu, logvar = torch.randn(5, 7), torch.randn(5, 7)
    expected = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0)).sum(-1)
    assert torch.allclose(common.kl_normal_std(mu, logvar), expected, atol=1e-5)


def test_kl_between_diagonal_gaussians_matches_torch_distributions():
    torch.manual_seed(1)
    mq, lq, mp, lp = (torch.randn(4, 6) for _ in range(4))
    expected = kl_divergence(Normal(mq, (0.5 * lq).exp()), Normal(mp, (0.5 * lp).exp())).sum(-1)
    assert torch.allclose(common.kl_normal(mq, lq, mp, lp), expected, atol=1e-5)
    assert torch.allclose(common.kl_normal(mq, lq, mq, lq), torch.zeros(4), atol=1e-6)


def test_reparameterize_has_the_right_moments():
    torch.manual_seed(3)
    mu, logvar = torch.full((200_000, 1), 2.0), torch.full((200_000, 1), math.log(0.25))
    z = common.reparameterize(mu, logvar)
    assert abs(z.mean().item() - 2.0) < 0.01 and abs(z.std().item() - 0.5) < 0.01


def test_image_grid_places_each_image_and_saves_png(tmp_path):
    images = torch.stack([torch.full((3, 4, 4), v) for v in (-1.0, 0.0, 1.0)])
    grid = common.make_grid(common.to_uint8(images), nrow=2, padding=1)
    assert grid.shape == (2 * 5 + 1, 2 * 5 + 1, 3)
    assert grid[1, 1, 0] == 0 and grid[1, 6, 0] == 128 and grid[6, 1, 0] == 255
    assert grid[0, 0, 0] == 255 and grid[7, 7, 0] == 255  # padding and the empty cell
    path = tmp_path / "g.png"
    common.save_grid(images, str(path), nrow=3)
    from PIL import Image
    assert Image.open(path).size == (3 * 6 + 2, 6 + 2)
    with pytest.raises(ValueError):
        common.make_grid(np.zeros((0, 4, 4, 3), np.uint8), 2)


def test_checkpoint_round_trip_and_clear_errors(tmp_path):
    path = str(tmp_path / "checkpoint.pt")
    common.save_checkpoint(path, "vlae", step=7, model={"w": torch.ones(2)}, rng=[common.rng_state()])
    state = common.load_checkpoint(path, "vlae")
    assert state["step"] == 7 and torch.equal(state["model"]["w"], torch.ones(2))
    assert common.load_checkpoint(str(tmp_path), "vlae")["step"] == 7  # a folder works too
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temp file left
    with pytest.raises(ValueError, match="written by vlae.py, not cmma.py"):
        common.load_checkpoint(path, "cmma")
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        common.load_checkpoint(str(tmp_path / "missing.pt"), "vlae")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        common.load_checkpoint(str(tmp_path / "junk.pt"), "vlae")
    (tmp_path / "cut.pt").write_bytes(open(path, "rb").read()[:200])  # a copy cut short
    with pytest.raises(ValueError, match="not a readable checkpoint.*--fresh starts over"):
        common.load_checkpoint(str(tmp_path / "cut.pt"), "vlae")


def test_rng_state_round_trip_reproduces_draws():
    common.seed_everything(11)
    state = common.rng_state()
    a = (torch.rand(3), np.random.rand(3))
    common.set_rng_state(state)
    b = (torch.rand(3), np.random.rand(3))
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_config_parser_marks_explicit_flags_and_merge_refuses_conflicts(capsys):
    import dataclasses

    @dataclasses.dataclass
    class C:
        steps: int = common.arg(10, "steps")
        lr: float = common.arg(0.1, "learning rate")
        amp: bool = common.arg(True, "autocast")
        name: str = common.arg("a", "name", choices=("a", "b"))

    parser = argparse.ArgumentParser(prog="p.py")
    common.add_fields(parser.add_subparsers(dest="command").add_parser("train"), C)
    _, cfg, explicit, _ = common.parse(parser, C, ["--steps", "5", "--no-amp"])
    assert (cfg.steps, cfg.lr, cfg.amp, cfg.name) == (5, 0.1, False, "a") and explicit == {"steps", "amp"}
    assert common.parse(parser, C, ["--steps=7", "--lr", "0.1"])[2] == {"steps", "lr"}  # given, even at its default
    with pytest.raises(SystemExit):
        common.parse(parser, C, ["train", "--help"])
    assert "(default: 0.1)" in capsys.readouterr().out
    saved = {"steps": 3, "lr": 0.5, "amp": True, "name": "b"}
    merged = common.merge_saved_config(cfg, saved, {"steps"}, {"steps"}, "ckpt")
    assert (merged.steps, merged.lr, merged.name) == (5, 0.5, "b")
    with pytest.raises(ValueError, match="trained with --lr 0.5, not 0.2"):
        common.merge_saved_config(C(lr=0.2), saved, {"lr"}, {"steps"}, "ckpt")


def test_curves_plot_and_jsonl(tmp_path):
    path = str(tmp_path / "metrics.jsonl")
    for step in range(1, 6):
        common.append_jsonl(path, {"step": step, "loss": torch.tensor(10.0 / step), "recon": 1.0})
    common.truncate_jsonl(path, 3)
    assert [r["step"] for r in common.read_jsonl(path)] == [1, 2, 3]
    png = str(tmp_path / "figures" / "curves.png")
    assert common.plot_curves(path, png, ["loss", "recon", "missing"])
    from PIL import Image
    img = np.asarray(Image.open(png))
    assert img.shape[1] == 2 * 300 and (img != 255).any()
    # the x ticks stand where the line starts and ends (steps 1 and 3), not past them
    line_cols = np.nonzero((img[:, :300] == (31, 119, 180)).all(-1).any(0))[0]
    tick_rows = img[190 - 32 + 2:190 - 32 + 4, :300]  # just below the panel's frame (and the line)
    tick_cols = np.nonzero((tick_rows == (90, 90, 90)).all(-1).all(0))[0]
    assert abs(tick_cols.min() - line_cols.min()) <= 1 and abs(tick_cols.max() - line_cols.max()) <= 1
    assert not common.plot_curves(str(tmp_path / "none.jsonl"), str(tmp_path / "none.png"), ["loss"])
    assert not os.path.exists(tmp_path / "none.png")  # --steps 0: no curves, and none listed


def test_stop_signal_turns_sigterm_into_a_flag():
    with common.StopSignal() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.raised == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_stop_signal_turns_sighup_into_a_flag_too():
    """A closed terminal (SIGHUP) saves as SIGTERM does, instead of killing the run unsaved."""
    with common.StopSignal() as stop:
        os.kill(os.getpid(), signal.SIGHUP)
        assert stop.raised == "SIGHUP"
    assert signal.getsignal(signal.SIGHUP) is signal.SIG_DFL


def test_active_units_counts_dims_whose_mean_varies():
    mu = torch.zeros(1000, 4)
    mu[:, 0] = torch.linspace(-1, 1, 1000)      # variance 0.33: active
    mu[:, 1] = 0.05 * torch.linspace(-1, 1, 1000)  # variance 0.0008: inactive
    mu[:, 3] = 0.2 * torch.linspace(-1, 1, 1000)   # variance 0.013: active
    assert common.active_units(mu) == 2 and common.active_units(mu, threshold=0.5) == 0


def test_recompute_batchnorm_gives_the_population_statistics():
    """update_bn's rule: the running mean becomes the mean over the batches (equal sizes), the
    running var the mean of the batches' unbiased variances; the momentum and mode come back."""
    torch.manual_seed(0)
    bn = torch.nn.BatchNorm1d(3, momentum=0.001)
    model = torch.nn.Sequential(bn).eval()
    x = torch.randn(400, 3) * torch.tensor([1.0, 2.0, 3.0]) + torch.tensor([5.0, -1.0, 0.0])
    batches = x.split(100)
    assert common.recompute_batchnorm(model, batches) == 400
    assert torch.allclose(bn.running_mean, x.mean(0), atol=1e-5)
    assert torch.allclose(bn.running_var, torch.stack([b.var(0) for b in batches]).mean(0), atol=1e-4)
    assert bn.momentum == 0.001 and not model.training
    assert common.recompute_batchnorm(torch.nn.Linear(2, 2), [torch.zeros(1, 2)]) == 0


def test_device_names_are_checked_and_unwritable_paths_give_one_line(capsys, tmp_path):
    for name in ("gpu", "cuda:x", "tpu"):
        with pytest.raises(ValueError, match="auto, cpu, cuda or cuda:N"):
            common.pick_device(name)
    assert common.pick_device("cpu") == torch.device("cpu")
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(SystemExit) as stop:
        with common.user_errors():
            os.makedirs(blocker / "run")  # --out under a regular file
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot write to") and str(blocker) in err and "--out" in err and len(err.splitlines()) == 1


class _RunsCode:
    """A pickle payload that would create a marker file when unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_checkpoint_that_would_run_code_is_refused_and_runs_nothing(tmp_path):
    marker, path = tmp_path / "pwned", tmp_path / "checkpoint.pt"
    torch.save({"script": "vlae", "version": 2, "config": _RunsCode(str(marker))}, path)
    with pytest.raises(ValueError, match="refusing to load"):
        common.load_checkpoint(str(path), "vlae")
    assert not marker.exists()
    # the project's own checkpoints load with the safe loader, RNG states included
    common.seed_everything(3)
    common.save_checkpoint(str(path), "vlae", step=1, rng=[common.rng_state()])
    expected = np.random.rand()
    state = common.load_checkpoint(str(path), "vlae")
    common.set_rng_state(state["rng"][0])
    assert np.random.rand() == expected


def test_progress_is_silent_for_short_jobs_and_prints_rate_and_eta_one_line_per_update_in_a_log(capsys):
    quick = common.Progress("probe", 3, "steps")  # ends within 5 s: says nothing
    for _ in range(3):
        quick.update()
    assert capsys.readouterr().err == ""
    long = common.Progress("Parzen", 2, "faces", announce=True)  # a job known to be long: its size at once, and the end
    long.update()
    long.update()
    announced = capsys.readouterr().err.splitlines()
    assert announced[0] == "Parzen: 0/2 faces" and announced[1].startswith("Parzen: 2/2 faces (") and len(announced) == 2
    p = common.Progress("Parzen", 3, "faces", every=0.0)
    for _ in range(3):
        p.update()
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 3 and "\r" not in "".join(lines)  # not a tty: a line per update
    assert lines[0].startswith("Parzen: 1/3 faces (") and "ETA" in lines[0]
    assert lines[-1].startswith("Parzen: 3/3 faces (") and "faces/s, ETA 0s)" in lines[-1]


def test_a_full_disk_mid_checkpoint_keeps_the_last_good_one_and_says_so(tmp_path, monkeypatch):
    path = str(tmp_path / "checkpoint.pt")
    common.save_checkpoint(path, "vlae", step=7)

    def full_disk(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")
    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(common.CheckpointWriteError, match="disk full"):
        common.save_checkpoint(path, "vlae", step=8)
    assert common.load_checkpoint(path, "vlae")["step"] == 7
    assert os.listdir(tmp_path) == ["checkpoint.pt"]  # no temp file left


def test_stale_temporary_files_of_dead_writers_are_removed_and_nothing_else(tmp_path, capsys):
    """A kill -9 mid-write leaves `.NAME.PID.tmp` (a 442 MB checkpoint, say): the next run removes
    it, but never a live writer's temporary file nor a finished file."""
    import subprocess
    import sys
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    names = [f".checkpoint.pt.{dead.pid}.tmp", f".samples.png.{os.getpid()}.tmp", "checkpoint.pt", "a.b.1.tmp"]
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    common.remove_stale_writes(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == sorted(names[1:])
    assert f"{names[0]}, left by an interrupted write" in capsys.readouterr().out


def test_each_subcommand_parses_and_lists_only_its_own_flags(capsys):
    """`prog` alone trains; `prog eval --help` lists eval's flags, not the model's; a training flag
    given to eval, or an unknown one, is one error line; a subcommand's own flags come back apart."""
    @dataclasses.dataclass
    class C:
        steps: int = common.arg(10, "steps")
        out: str = common.arg("", "output folder")
        amp: bool = common.arg(True, "autocast")
    parser = argparse.ArgumentParser(prog="p.py")
    sub = parser.add_subparsers(dest="command")
    common.add_fields(sub.add_parser("train"), C)
    common.add_fields(sub.add_parser("eval"), C, {"out"})
    common.add_fields(sub.add_parser("edit"), C, {"out"}).add_argument("--set", action="append", default=[])
    assert common.parse(parser, C, ["--steps", "5"])[:3] == ("train", C(steps=5), {"steps"})
    assert common.parse(parser, C, ["edit", "--set", "a=1", "--set", "b=0", "--out", "o"]) == \
        ("edit", C(out="o"), {"out"}, {"set": ["a=1", "b=0"]})
    for argv in (["eval", "--help"], ["--help"]):
        with pytest.raises(SystemExit):
            common.parse(parser, C, argv)
        text = capsys.readouterr().out
        assert ("--out" in text and "--steps" not in text) if argv[0] == "eval" else "{train,eval,edit}" in text
    with pytest.raises(SystemExit):  # no abbreviations: --step is not --steps
        common.parse(parser, C, ["--step", "3"])
    assert "unrecognized arguments for `train`: --step 3" in capsys.readouterr().err
    for argv, message in ((["eval", "--no-amp"], "--no-amp is a training flag: `eval` takes"),
                          (["eval", "--bogus", "1"], "unrecognized arguments for `eval`: --bogus 1"),
                          (["evaluate", "--out", "o"], "`evaluate` is not a subcommand: the subcommands are train, "
                                                       "eval, edit"),
                          (["--out", "o", "eval"], "the subcommand `eval` must come first: python p.py eval")):
        with pytest.raises(SystemExit) as stop:
            common.parse(parser, C, argv)
        assert stop.value.code == 2 and message in capsys.readouterr().err
