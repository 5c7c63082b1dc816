import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import types

import numpy as np
import pytest
import torch

import common
import vlae

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the faces run keeps the reference's BatchNorm momentum (0.001): eval must not depend on it
FAST_FACES = ["--image-size", "16", "--batch-size", "16", "--eval-images", "40"]
FAST_MNIST = ["--dataset", "mnist", "--batch-size", "8", "--bn-momentum", "0.05", "--eval-images", "50",
              "--bn-images", "200"]


def small_config(dataset="celeba", **kw):
    return vlae.resolve_defaults(vlae.Config(dataset=dataset, image_size=32 if dataset != "mnist" else 0, **kw))


@pytest.mark.parametrize("dataset,layers,dim,channels,size", [("celeba", 4, 10, 3, 32), ("mnist", 3, 2, 1, 28)])
def test_every_latent_layer_reaches_the_output(dataset, layers, dim, channels, size):
    torch.manual_seed(0)
    model = vlae.build_model(small_config(dataset)).eval()
    x = torch.rand(4, channels, size, size) * 2 - 1
    out = model(x)
    assert out["x_hat"].shape == x.shape and len(out["z"]) == layers
    assert all(z.shape == (4, dim) for z in out["z"])
    assert out["x_hat"].abs().max() <= 1.0
    zs = [torch.randn(2, dim, requires_grad=True) for _ in range(layers)]
    grads = torch.autograd.grad(model.decode(zs).sum(), zs, allow_unused=True)
    for layer, g in enumerate(grads):
        assert g is not None and g.abs().sum() > 0, f"z_{layer} does not reach the output"


@pytest.mark.parametrize("dataset", ["celeba", "mnist"])
def test_each_code_enters_the_decoder_at_its_own_depth_top_first(dataset):
    """The ladder v_l must receive z_l, f_{L-1} z_{L-1}, and the decoder blocks must run top down;
    every layer has the same width, so a reversed order raises no shape error."""
    model = vlae.build_model(small_config(dataset)).eval()
    n_layers = len(model.latent_dims)
    seen, order = {}, []
    for l, ladder in enumerate(model.ladders):
        ladder.register_forward_hook(lambda m, inp, out, l=l: seen.__setitem__(l, inp[0].clone()))
    for l, block in enumerate(model.decoders):
        block.register_forward_hook(lambda m, inp, out, l=l: order.append((l, inp[0].clone())))
    zs = [torch.full((2, model.latent_dims[l]), float(l + 1)) for l in range(n_layers)]
    model.decode(zs)
    for l in range(n_layers - 1):
        assert torch.equal(seen[l], zs[l]), f"ladder v_{l} was fed another layer's code"
    assert [l for l, _ in order] == list(reversed(range(n_layers)))
    assert torch.equal(order[0][1], zs[-1])  # f_{L-1} takes z_{L-1} alone


@pytest.mark.parametrize("dataset", ["celeba", "mnist"])
def test_each_head_reads_its_own_depth_of_the_trunk(dataset):
    """e_0 reads x itself, e_l reads g_{l-1}(...g_0(x)): hooks on the heads' inputs."""
    model = vlae.build_model(small_config(dataset)).eval()
    seen = {}
    for l, head in enumerate(model.heads):
        head.register_forward_hook(lambda m, inp, out, l=l: seen.__setitem__(l, inp[0].clone()))
    x = torch.rand(2, 1 if dataset == "mnist" else 3, *(2 * [28 if dataset == "mnist" else 32])) * 2 - 1
    model.encode(x)
    h = x
    for l in range(len(model.heads)):
        assert torch.equal(seen[l], h), f"head e_{l} read the wrong trunk depth"
        h = model.trunk[l](h) if l < len(model.trunk) else h


def test_sigma_is_floored_at_one_thousandth():
    """sigma = sigmoid(.) + 0.001: with the sigma logits forced to -100 every sigma is 0.001."""
    model = vlae.build_model(small_config()).eval()
    for head in model.heads:
        nn_sigma = head.sigma
        torch.nn.init.zeros_(nn_sigma.weight)
        torch.nn.init.constant_(nn_sigma.bias, -100.0)
    _, logvars = model.encode(torch.rand(3, 3, 32, 32) * 2 - 1)
    for logvar in logvars:
        assert torch.allclose(torch.exp(0.5 * logvar), torch.full_like(logvar, 1e-3), rtol=1e-5)


def test_prior_draws_are_standard_normal_and_independent_across_layers():
    model = vlae.build_model(small_config())
    zs = vlae.prior_draw(model, 20_000, torch.Generator().manual_seed(0), "cpu")
    assert [z.shape for z in zs] == [(20_000, 10)] * 4
    flat = torch.cat(zs, dim=1)
    assert flat.mean(0).abs().max() < 0.04 and (flat.std(0) - 1).abs().max() < 0.03
    corr = torch.corrcoef(flat.T) - torch.eye(40)
    assert corr.abs().max() < 0.05  # no dim, within or across layers, repeats another


def test_fig3_redraws_only_its_layer_from_one_shared_base(monkeypatch):
    model = vlae.build_model(small_config()).eval()
    g = torch.Generator().manual_seed(0)
    base = vlae.prior_draw(model, 1, g, "cpu")
    calls = []
    real_decode = model.decode
    monkeypatch.setattr(model, "decode", lambda zs: calls.append([z.clone() for z in zs]) or real_decode(zs))
    for layer in range(4):
        vlae.fig_resample_layer(model, layer, base, g, "cpu", n=3)
    for layer, zs in enumerate(calls):
        for l, z in enumerate(zs):
            if l == layer:
                assert len(torch.unique(z, dim=0)) == 9, "the shown layer is not redrawn in every cell"
            else:
                assert torch.equal(z, base[l].expand(9, -1)), f"panel {layer} changed layer {l} or its base"


def test_draw_figures_gives_every_fig3_panel_the_same_base(mnist_dir, tmp_path, monkeypatch):
    cfg = small_config("mnist", data_dir=mnist_dir, out=str(tmp_path))
    model = vlae.build_model(cfg).eval()
    bases = []
    real = vlae.fig_resample_layer
    monkeypatch.setattr(vlae, "fig_resample_layer",
                        lambda m, layer, base, *a, **k: bases.append(base) or real(m, layer, base, *a, **k))
    vlae.draw_figures(cfg, model, "cpu")
    assert len(bases) == 3 and all(all(torch.equal(a, b) for a, b in zip(bases[0], other)) for other in bases)


def test_denoise_corrupts_in_the_references_pixel_range():
    """trainer.py's noise: x * Bernoulli(0.9) + Bernoulli(0.1) + N(0, 0.1^2), clipped, in [0, 1]
    for MNIST and [-1, 1] for faces. On black pixels (x = -1 here) the salt turns 10% of MNIST
    pixels white, but lifts face pixels from -1 only to about 0 (1% reach 1, where keep fails too)."""
    torch.manual_seed(0)
    black = -torch.ones(64, 1, 28, 28)
    mnist = vlae.corrupt(black, "mnist")
    faces = vlae.corrupt(black, "celeba")
    assert mnist.min() >= -1 and mnist.max() <= 1 and faces.min() >= -1 and faces.max() <= 1
    assert abs((mnist > 0.5).float().mean().item() - 0.1) < 0.01
    assert abs((faces > 0.5).float().mean().item() - 0.01) < 0.004
    assert abs((faces.abs() < 0.5).float().mean().item() - 0.18) < 0.01  # keep xor salt: 0.09 + 0.09


def test_denoise_feeds_the_noisy_input_and_scores_against_the_clean_one(monkeypatch):
    cfg = small_config("mnist", denoise=True)
    model = vlae.build_model(cfg)
    x = torch.rand(4, 1, 28, 28) * 2 - 1
    fed, scored = [], []
    real_forward, real_loss = model.forward, vlae.vlae_loss
    monkeypatch.setattr(model, "forward", lambda inp: fed.append(inp) or real_forward(inp))
    monkeypatch.setattr(vlae, "vlae_loss", lambda out, target, *a: scored.append(target) or real_loss(out, target, *a))
    opt = torch.optim.Adam(model.parameters())
    vlae.train_step(model, opt, common.make_grad_scaler(torch.device("cpu"), False), [x], cfg, 0, torch.device("cpu"))
    assert not torch.equal(fed[0], x) and torch.equal(scored[0], x)


def test_reference_balance_is_the_default_per_dataset():
    """The reference weighs MNIST's error on [0, 1] pixels, half ours: lambda 1 there is 2 here,
    its KL loss_ratio 8.0 is 4.0 here; CelebA (in [-1, 1] there too) keeps 1 and 0.5."""
    mnist, faces = small_config("mnist"), small_config("celeba")
    assert (mnist.mmd_weight, mnist.kl_recon_weight) == (2.0, 4.0)
    assert (faces.mmd_weight, faces.kl_recon_weight) == (1.0, 0.5)
    torch.manual_seed(0)
    x = torch.rand(5, 1, 28, 28) * 2 - 1
    out = {"x_hat": torch.zeros_like(x), "mu": [torch.zeros(5, 2)] * 3, "logvar": [torch.zeros(5, 2)] * 3}
    terms = vlae.vlae_loss(out, x, small_config("mnist", reg="kl"), step=0)
    # reference: 8.0 * 784 * mean|x_hat - x| on [0, 1] pixels
    assert terms["loss"].item() == pytest.approx(8.0 * 784 * ((x + 1) / 2 - 0.5).abs().mean().item(), rel=1e-5)


def test_sigma_head_is_sigmoid_plus_floor_and_the_relu_quirk_is_a_flag():
    torch.manual_seed(0)
    x = torch.rand(8, 3, 32, 32) * 2 - 1
    mus, logvars = vlae.build_model(small_config()).encode(x)
    sigma = torch.exp(0.5 * torch.cat(logvars))
    assert sigma.min() > 1e-3 and sigma.max() < 1.001 + 1e-6
    assert (mus[3] < 0).any()  # faithful default: the top mu is linear
    quirk_mus, _ = vlae.build_model(small_config(relu_top_heads=True)).encode(x)
    assert (quirk_mus[3] >= 0).all() and (quirk_mus[0] < 0).any()


def test_mmd_loss_is_the_reference_weighting():
    torch.manual_seed(0)
    cfg = small_config(mmd_weight=2.0)
    x = torch.rand(6, 3, 32, 32) * 2 - 1
    out = {"x_hat": torch.zeros_like(x), "z": [torch.randn(6, 10) for _ in range(4)]}
    torch.manual_seed(1)
    terms = vlae.vlae_loss(out, x, cfg, step=0)
    assert terms["recon"].item() == pytest.approx(x.abs().mean().item(), rel=1e-6)
    regs = sum(terms[f"mmd_{l}"] for l in range(4))
    assert terms["loss"].item() == pytest.approx(100 * (terms["recon"] + 2.0 * regs).item(), rel=1e-6)
    kl_cfg = small_config(reg="kl")
    out.update(mu=[torch.zeros(6, 10)] * 4, logvar=[torch.zeros(6, 10)] * 4)
    kl_terms = vlae.vlae_loss(out, x, kl_cfg, step=0)
    assert kl_terms["kl_0"].item() == 0.0  # q = p
    assert kl_terms["loss"].item() == pytest.approx(0.5 * 3 * 32 * 32 * x.abs().mean().item(), rel=1e-5)


def test_face_arithmetic_with_b_equal_to_a_reconstructs_c():
    torch.manual_seed(0)
    model = vlae.build_model(small_config()).eval()
    a, c = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    grid = vlae.fig_arithmetic(model, a, a, c)
    assert grid.shape == (8, 3, 32, 32)
    recon_c = model.decode(model.encode(c)[0])
    assert torch.allclose(grid[3::4], recon_c, atol=1e-5)
    assert torch.equal(grid[0::4], a)


@pytest.fixture(scope="module")
def faces_run(tmp_path_factory):
    """20 steps on the bundled real faces at 16x16, with figures and eval at the end."""
    out = str(tmp_path_factory.mktemp("faces"))
    vlae.main(["--dataset", "celeba", "--data-dir", os.path.join(ROOT, "tests", "data", "celeba"), "--out", out,
               "--steps", "20", "--log-every", "5", "--ckpt-every", "10"] + FAST_FACES)
    return out


def test_loss_falls_on_real_faces_and_every_output_is_written(faces_run):
    rows = common.read_jsonl(os.path.join(faces_run, "metrics.jsonl"))
    assert [r["step"] for r in rows] == list(range(5, 21, 5))
    assert {"loss", "recon", "mmd_0", "mmd_3", "images_per_s", "seconds"} <= set(rows[0])
    assert rows[-1]["loss"] < 0.7 * rows[0]["loss"] and rows[-1]["recon"] < rows[0]["recon"]
    figures = set(os.listdir(os.path.join(faces_run, "figures")))
    assert {"curves.png", "samples.png", "fig3_layers.png", "reconstructions.png",
            "fig4_arithmetic_pale.png", "fig4_arithmetic_smile.png"} <= figures
    result = json.load(open(os.path.join(faces_run, "eval.json")))
    assert len(result["mmd_heldout_unbiased"]) == 4
    assert 0 < result["recon_l1_per_element"] < 1 and result["heldout_images"] == 40
    assert result["bn_stats_images"] == 160  # all 160 training faces
    assert all(0 <= n <= 10 for n in result["active_units"]) and len(result["active_units"]) == 4
    config = json.load(open(os.path.join(faces_run, "config.json")))
    assert config["latent_dim"] == 10 and config["steps"] == 20


def test_heldout_error_matches_training_error_with_recomputed_batchnorm(faces_run):
    """20 steps at the reference's BatchNorm momentum (0.001): the running statistics are still
    near their initial values, so evaluating with them (--bn-images 0) reconstructs far worse than
    training did; the population statistics bring the held-out error back near the training one."""
    train_l1 = np.mean([r["recon"] for r in common.read_jsonl(os.path.join(faces_run, "metrics.jsonl"))[-3:]])
    recomputed = json.load(open(os.path.join(faces_run, "eval.json")))["recon_l1_per_element"]
    assert abs(recomputed - train_l1) < 0.15 * train_l1
    cfg, model, _ = vlae.load_run(vlae.Config(checkpoint=faces_run, bn_images=0), {"bn_images"}, "cpu")
    cfg = dataclasses.replace(cfg, bn_images=160)
    x, _ = vlae.heldout_images(cfg, 40, "cpu")
    with torch.no_grad():
        running_l1 = (model.decode(model.encode(x)[0]) - x).abs().mean().item()  # the training-time statistics
        assert vlae.refresh_batchnorm(cfg, model, "cpu") == 160
        refreshed_l1 = (model.decode(model.encode(x)[0]) - x).abs().mean().item()
    assert running_l1 > 1.3 * train_l1 and refreshed_l1 == pytest.approx(recomputed, rel=5e-3)


def test_sample_figures_and_eval_need_only_the_checkpoint(faces_run, tmp_path, capsys):
    ckpt = os.path.join(faces_run, "checkpoint.pt")
    vlae.main(["sample", "--checkpoint", ckpt, "--out", str(tmp_path)])
    assert os.path.exists(tmp_path / "figures" / "samples.png")
    assert "replaced" not in capsys.readouterr().out
    vlae.main(["sample", "--checkpoint", ckpt, "--out", str(tmp_path)])
    assert "it replaced the file that was there" in capsys.readouterr().out  # said, not silent
    vlae.main(["eval", "--checkpoint", ckpt, "--out", str(tmp_path), "--eval-images", "20"])
    printed = capsys.readouterr().out.splitlines()  # a summary and where the rest is, not the ~90-line record
    assert printed[-1] == f"all numbers: {tmp_path / 'eval.json'}" and len(printed) < 10
    result = json.load(open(tmp_path / "eval.json"))
    assert result["heldout_images"] == 20 and len(result["mmd_heldout_unbiased"]) == 4
    assert "probe_accuracy" not in result and len(result["active_units"]) == 4
    capsys.readouterr()
    vlae.main(["figures", "--checkpoint", ckpt, "--out", str(tmp_path)])
    assert os.path.exists(tmp_path / "figures" / "fig3_layers.png")
    out, err = capsys.readouterr()  # progress starts at 0 and counts the files it lists (no curves: no log here)
    listed = next(l for l in out.splitlines() if l.startswith("figures: ")).split(": ")[1].split(", ")
    assert f"figures: 0/{len(listed)} figures" in err and "curves.png" not in " ".join(listed)
    assert sorted(os.listdir(tmp_path / "figures")) == sorted(os.path.basename(p) for p in listed)
    with pytest.raises(SystemExit) as e:
        vlae.main(["eval", "--checkpoint", ckpt, "--latent-dim", "3"])
    assert e.value.code == 2 and "--latent-dim is a training flag: `eval` takes the model's settings from its " \
                                 "checkpoint" in capsys.readouterr().err


def test_fid_of_samples_drawn_on_every_layer(faces_run, tmp_path, tiny_extractor, monkeypatch):
    seen = []
    decode = vlae.VLAE.decode
    monkeypatch.setattr(vlae.VLAE, "decode", lambda self, zs: seen.append([z.shape[1] for z in zs]) or decode(self, zs))
    import fidelity as fidelity_module
    fidelity_module.main(["vlae", "--checkpoint", faces_run, "--out", str(tmp_path), "--fid", "--feature-extractor",
                          tiny_extractor, "--fidelity-samples", "30"])
    fidelity = json.load(open(tmp_path / "fidelity.json"))
    assert fidelity["fid"] > 0 and fidelity["samples"]["images"] == 30 and "greyscale" not in fidelity
    assert fidelity["real"]["split"] == "test" and fidelity["real"]["images"] == 40  # the bundled CelebA test split
    assert [10, 10, 10, 10] in seen  # the 40-dim draw is cut into the four layers' codes


def test_resume_is_exact_to_the_bit(mnist_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(vlae, "finish", lambda *a: None)  # figures and eval come after the last checkpoint
    # --denoise too: its noise and the reparameterisation's both come from the checkpointed RNG
    common_args = ["--data-dir", mnist_dir, "--log-every", "1", "--ckpt-every", "100", "--denoise"] + FAST_MNIST
    vlae.main(common_args + ["--out", str(tmp_path / "straight"), "--steps", "6"])
    vlae.main(common_args + ["--out", str(tmp_path / "resumed"), "--steps", "3"])
    vlae.main(common_args + ["--out", str(tmp_path / "resumed"), "--steps", "6"])
    a = common.load_checkpoint(str(tmp_path / "straight"), "vlae")
    b = common.load_checkpoint(str(tmp_path / "resumed"), "vlae")
    assert a["step"] == b["step"] == 6
    for key in a["models"]["model"]:
        assert torch.equal(a["models"]["model"][key], b["models"]["model"][key]), key
    moments = lambda s: [v["exp_avg"] for v in s["optimizers"]["optimizer"]["state"].values()]
    assert all(torch.equal(x, y) for x, y in zip(moments(a), moments(b)))
    rows = common.read_jsonl(str(tmp_path / "resumed" / "metrics.jsonl"))
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert rows[3]["seconds"] > rows[2]["seconds"]  # wall time adds up across the resume
    assert rows[-1]["loss"] == common.read_jsonl(str(tmp_path / "straight" / "metrics.jsonl"))[-1]["loss"]


def test_kl_baseline_trains(mnist_dir, tmp_path):
    vlae.main(["--data-dir", mnist_dir, "--out", str(tmp_path), "--steps", "2", "--log-every", "1",
               "--reg", "kl"] + FAST_MNIST)
    rows = common.read_jsonl(str(tmp_path / "metrics.jsonl"))
    assert "kl_2" in rows[-1] and "mmd_0" not in rows[-1]
    assert "fig2_manifold.png" in os.listdir(tmp_path / "figures")


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(mnist_dir, tmp_path, monkeypatch, capsys):
    real_loss = vlae.vlae_loss

    def poisoned(out, x, cfg, step):
        terms = real_loss(out, x, cfg, step)
        if step >= 3:
            terms["loss"] = terms["loss"] * float("nan")
        return terms

    monkeypatch.setattr(vlae, "vlae_loss", poisoned)
    with pytest.raises(SystemExit) as e:
        vlae.main(["--data-dir", mnist_dir, "--out", str(tmp_path), "--steps", "10", "--log-every", "1",
                   "--ckpt-every", "2"] + FAST_MNIST)
    assert e.value.code == 2 and "NaN or inf at or before step 4" in capsys.readouterr().err
    assert common.load_checkpoint(str(tmp_path), "vlae")["step"] == 2


@pytest.mark.parametrize("argv,message", [
    (["--batch-size", "0"], "--batch-size must be >= 2"),
    (["--data-dir", "/nonexistent/celeba"], "does not exist"),
    (["--crop", "1,2,3"], "--crop must be four integers"),
])
def test_bad_arguments_get_one_clear_line(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        vlae.main(["--out", "/tmp/never-written", "--steps", "1"] + argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and "Traceback" not in err


def test_unknown_dataset_and_foreign_checkpoint_are_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        vlae.main(["--dataset", "imagenet"])
    assert e.value.code == 2 and "invalid choice: 'imagenet'" in capsys.readouterr().err
    common.save_checkpoint(str(tmp_path / "checkpoint.pt"), "cmma", step=1, config={})
    with pytest.raises(SystemExit):
        vlae.main(["eval", "--checkpoint", str(tmp_path / "checkpoint.pt")])
    assert "written by cmma.py, not vlae.py" in capsys.readouterr().err


def run_script(args, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable] + args, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


def test_sigterm_saves_a_checkpoint_and_the_same_command_resumes(mnist_dir, tmp_path):
    args = ["vlae.py", "--data-dir", mnist_dir, "--out", str(tmp_path), "--steps", "100000",
            "--log-every", "1"] + FAST_MNIST
    proc = run_script(args)
    for line in proc.stdout:
        if line.startswith("step 2/"):
            proc.send_signal(signal.SIGTERM)
            break
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 128 + signal.SIGTERM and "stopped by SIGTERM" in output  # not success
    step = common.load_checkpoint(str(tmp_path), "vlae")["step"]
    assert 2 <= step < 100000
    resumed = run_script(args[:5] + ["--steps", str(step + 1)] + args[7:])
    text = resumed.communicate(timeout=120)[0]
    assert resumed.returncode == 0 and f"resuming" in text and f"step {step + 1}/{step + 1}" in text


def test_torchrun_two_cpu_processes_train_and_save_once(mnist_dir, tmp_path):
    proc = run_script(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "vlae.py",
                       "--data-dir", mnist_dir, "--out", str(tmp_path), "--steps", "4", "--log-every", "2",
                       "--device", "cpu"] + FAST_MNIST)
    output = proc.communicate(timeout=240)[0]
    assert proc.returncode == 0, output
    state = common.load_checkpoint(str(tmp_path), "vlae")
    assert state["step"] == 4 and state["world_size"] == 2 and len(state["rng"]) == 2
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])  # per-rank seeds
    assert [r["step"] for r in common.read_jsonl(str(tmp_path / "metrics.jsonl"))] == [2, 4]  # rank 0 alone
    assert output.count("step 4/4") == 1 and "2 process(es)" in output
    assert "global batch 16 (8 per process x 1 micro-batches x 2 processes): 4 steps are 0.1 epochs" in output


def test_the_training_mmd_compares_codes_with_standard_normal_draws(monkeypatch):
    """Eq. 1-2's p(z) = N(0, I): the draws mmd_per_layer hands to the MMD have mean 0 and
    variance 1 in every dim (U(0, 1) has mean 1/2, 2 N(0, I) variance 4), and a layer's own width."""
    seen = []
    monkeypatch.setattr(vlae, "mmd", lambda q, p, *a, **k: seen.append(p) or (q.sum() * 0))
    torch.manual_seed(0)
    vlae.mmd_per_layer([torch.zeros(8, 3), torch.zeros(8, 5)], 40_000)
    assert [p.shape for p in seen] == [(40_000, 3), (40_000, 5)]
    for p in seen:
        assert p.mean(0).abs().max() < 0.03 and (p.var(0) - 1).abs().max() < 0.05
        assert (p < 0).float().mean() == pytest.approx(0.5, abs=0.01)


def test_kl_baseline_warms_its_kl_weight_up_from_0_to_1():
    """--reg kl: loss = r C H W recon + (1 - exp(-step / 2000)) sum_l KL_l, the KL written out from
    torch.distributions: weight 0 at step 0, 1 - 1/e at 2000, about 1 long after (a reversed
    schedule, exp(-step / 2000), would start at 1)."""
    torch.manual_seed(0)
    cfg = small_config(reg="kl")
    x = torch.rand(6, 3, 32, 32) * 2 - 1
    mu, logvar = [torch.randn(6, 10) for _ in range(4)], [0.3 * torch.randn(6, 10) for _ in range(4)]
    out = {"x_hat": torch.zeros_like(x), "mu": mu, "logvar": logvar}
    normal = torch.distributions.Normal
    kl = sum(torch.distributions.kl_divergence(normal(m, (0.5 * lv).exp()), normal(0.0, 1.0)).sum(1).mean()
             for m, lv in zip(mu, logvar)).item()
    recon = cfg.kl_recon_weight * 3 * 32 * 32 * x.abs().mean().item()
    for step, weight in ((0, 0.0), (2000, 1 - math.exp(-1)), (200_000, 1.0)):
        assert vlae.vlae_loss(out, x, cfg, step)["loss"].item() == pytest.approx(recon + weight * kl, rel=1e-5)


def test_eval_of_one_checkpoint_repeats_to_the_bit_whatever_ran_before(mnist_dir, tmp_path):
    """Every draw of eval (the BatchNorm refresh's codes, the MMD's prior draws) is seeded from
    --seed: two evals of one checkpoint, with other random work between them, write the same
    eval.json."""
    vlae.main(["--data-dir", mnist_dir, "--out", str(tmp_path / "run"), "--steps", "2",
               "--log-every", "1"] + FAST_MNIST)
    ckpt, results = str(tmp_path / "run" / "checkpoint.pt"), []
    for i in range(2):
        torch.rand(1000 * (i + 1))  # the global RNG is somewhere else each time
        out = tmp_path / str(i)
        vlae.main(["eval", "--checkpoint", ckpt, "--out", str(out), "--eval-images", "50", "--bn-images", "100"])
        results.append(json.load(open(out / "eval.json")))
    assert results[0] == results[1]


def test_output_piped_into_a_reader_that_closes_does_not_kill_the_run(mnist_dir, tmp_path):
    """`python vlae.py ... | head -1`: once head has gone, the log lines are dropped and the run
    trains on to its last step and checkpoint, exit 0, with no BrokenPipeError."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "vlae.py", "--data-dir", mnist_dir, "--out", str(tmp_path), "--steps", "3",
                             "--log-every", "1"] + FAST_MNIST, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline()  # the first line, then the reader goes, as head's does
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=300) == 0 and "Traceback" not in err and "BrokenPipe" not in err, err
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=False)["step"] == 3


def test_heldout_mmd_compares_draws_of_q_with_standard_normal_draws():
    """eval's held-out MMD reads z ~ q(z|x), not the means: codes whose q is N(0, I) itself score
    ~0, the same means with a tiny variance (mu alone, all 0) score far above it, and draws of p
    that are U(0, 1) or N(0, 4) instead of N(0, I) would move the first away from 0."""
    torch.manual_seed(0)
    n, dims = 2000, (3, 10)
    zeros = [torch.zeros(n, d) for d in dims]
    prior = lambda: vlae.prior_draw(types.SimpleNamespace(latent_dims=dims), n, torch.Generator().manual_seed(1), "cpu")
    at_prior = vlae.heldout_mmd(zeros, zeros, prior())
    means_only = vlae.heldout_mmd(zeros, [torch.full((n, d), -20.0) for d in dims], prior())
    for d, same, point in zip(dims, at_prior, means_only):
        # a point at 0 against N(0, I) under k = exp(-|a-b|^2 / D^2) (eq. 1-2): E_qq k = 1, and as
        # |z|^2 ~ chi^2_D and |z - z'|^2 ~ 2 chi^2_D, E_qp k = (1 + 2/D^2)^(-D/2), E_pp k = (1 + 4/D^2)^(-D/2)
        point_expected = 1 + (1 + 4 / d ** 2) ** (-d / 2) - 2 * (1 + 2 / d ** 2) ** (-d / 2)
        assert abs(same) < 0.1 * point and point == pytest.approx(point_expected, rel=0.15)


def test_mmd_of_a_sample_with_itself_is_zero_and_shifted_samples_score_higher():
    torch.manual_seed(4)
    q = torch.randn(300, 10)
    assert vlae.mmd(q, q).item() == pytest.approx(0.0, abs=1e-6)
    same = vlae.mmd(q, torch.randn(300, 10), unbiased=True).item()
    shifted = vlae.mmd(q, torch.randn(300, 10) + 1.5, unbiased=True).item()
    assert abs(same) < 0.005
    assert shifted > 0.05 > 10 * abs(same)


def test_mmd_default_bandwidth_is_the_reference_dimension_scaled_kernel():
    # reference: k(a, b) = exp(-mean_d (a_d - b_d)^2 / D)  ==  exp(-||a - b||^2 / D^2)
    torch.manual_seed(5)
    a, b = torch.randn(20, 10), torch.randn(30, 10)
    ref = lambda x, y: torch.exp(-((x[:, None] - y[None]) ** 2).mean(-1) / x.shape[1])
    expected = ref(a, a).mean() + ref(b, b).mean() - 2 * ref(a, b).mean()
    assert vlae.mmd(a, b).item() == pytest.approx(expected.item(), abs=1e-6)
    assert torch.allclose(vlae.gaussian_kernel(a, b, 100.0), ref(a, b), atol=1e-6)


def test_unbiased_mmd_known_value_in_one_dimension():
    q, p = torch.tensor([[0.0], [1.0]]), torch.tensor([[0.0], [2.0]])
    k = lambda d2: math.exp(-d2)  # D = 1: sigma^2 = 1
    expected = k(1) + k(4) - 2 * (k(0) + k(4) + k(1) + k(1)) / 4
    assert vlae.mmd(q, p, unbiased=True).item() == pytest.approx(expected, abs=1e-6)
    with pytest.raises(ValueError):
        vlae.mmd(q[:1], p, unbiased=True)
    with pytest.raises(ValueError):
        vlae.mmd(q, torch.zeros(2, 3))


@pytest.mark.parametrize("stride,size,expected", [(2, 64, 32), (1, 8, 8), (2, 14, 7)])
def test_conv_same_gives_tensorflow_output_sizes(stride, size, expected):
    conv = vlae.conv_same(3, 5, stride)
    assert conv(torch.zeros(1, 3, size, size)).shape == (1, 5, expected, expected)
    deconv = vlae.conv_transpose_same(5, 3, stride)
    assert deconv(torch.zeros(1, 5, expected, expected)).shape[-1] == expected * stride


def test_stride_one_transposed_conv_is_the_adjoint_of_the_same_conv():
    torch.manual_seed(6)
    conv, deconv = vlae.conv_same(2, 3, 1), vlae.conv_transpose_same(3, 2, 1)
    deconv.conv.weight.data.copy_(conv[1].weight.data)
    x, y = torch.randn(1, 2, 6, 6), torch.randn(1, 3, 6, 6)
    lhs = (torch.nn.functional.conv2d(conv[0](x), conv[1].weight) * y).sum()
    rhs = (x * torch.nn.functional.conv_transpose2d(y, deconv.conv.weight)[..., 1:7, 1:7]).sum()
    assert lhs.item() == pytest.approx(rhs.item(), rel=1e-5)
    out = deconv(y) - deconv.conv.bias.view(1, -1, 1, 1)
    assert (x * out).sum().item() == pytest.approx(lhs.item(), rel=1e-5)


def test_heldout_mmd_is_the_unbiased_u_statistic_written_out():
    """eval's held-out MMD per layer: codes q (posterior sd ~0, so z = mu) against prior draws p,
    the U-statistic with k = exp(-||a - b||^2 / D^2), diagonals of K_qq and K_pp dropped, written
    out pair by pair (the biased V-statistic, diagonals kept, is larger by about 2 / n here)."""
    g = torch.Generator().manual_seed(0)
    q, p = torch.randn(6, 3, generator=g), torch.randn(5, 3, generator=g) + 0.5
    k = lambda a, b: math.exp(-float((a - b).pow(2).sum()) / 3 ** 2)
    mean_off = lambda x: sum(k(x[i], x[j]) for i in range(len(x)) for j in range(len(x)) if i != j) / (
        len(x) * (len(x) - 1))
    expected = mean_off(q) + mean_off(p) - 2 * sum(k(a, b) for a in q for b in p) / (len(q) * len(p))
    got = vlae.heldout_mmd([q], [torch.full_like(q, -60.0)], [p])
    assert got[0] == pytest.approx(expected, abs=1e-6)
