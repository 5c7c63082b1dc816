import dataclasses
import math
import os
import pickle

import numpy as np
import pytest
import torch

import common
import data
import vae_began

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CELEBA = os.path.join(ROOT, "tests", "data", "celeba")
TINY = ["--image-size", "32", "--filters", "8", "--latent-dim", "16"]


def test_controller_matches_a_hand_computation_and_is_clipped():
    c = vae_began.Controller.start((1e-1, 1e-2, 1e-3), "cpu")
    errors, k, e1, e2 = [0.5, 0.2, -0.1, 3.0, -40.0], 0.0, 0.0, 0.0
    for e in errors:
        k = min(1.0, max(0.0, k + 1e-1 * e + 1e-2 * (e - e1) + 1e-3 * (e - 2 * e1 + e2)))
        e2, e1 = e1, e
        assert c.update(torch.tensor(e, dtype=torch.float64)).item() == pytest.approx(k, abs=1e-12)
    assert k == 0.0  # the last error drove it below 0: clipped


def test_proportional_controller_is_beganss_update():
    cfg = vae_began.resolve_defaults(vae_began.Config(controller="p"))
    c = vae_began.Controller.start(vae_began.gains(cfg), "cpu")
    k = 0.0
    for l_d, l_g in [(0.4, 0.1), (0.3, 0.2), (0.5, 0.05)]:
        k = min(1.0, max(0.0, k + 1e-3 * (0.5 * l_d - l_g)))  # BEGAN: k += lambda_k (gamma L(x) - L(G(z)))
        assert c.update(torch.tensor(0.5 * l_d - l_g, dtype=torch.float64)).item() == pytest.approx(k, abs=1e-12)


def tiny_model(**kw):
    cfg = vae_began.resolve_defaults(vae_began.Config(image_size=32, filters=8, latent_dim=16, **kw))
    torch.manual_seed(0)
    return cfg, vae_began.VAEBEGAN(cfg)


def test_backbone_shapes_at_every_size():
    for size, scales in ((32, 3), (64, 4), (128, 5)):
        enc, dec = vae_began.Encoder(size, 4, 8), vae_began.Decoder(size, 4, 8)
        h = enc(torch.zeros(2, 3, size, size))
        assert h.shape == (2, 8) and dec(h).shape == (2, 3, size, size)
        assert len(dec.blocks) == scales  # a conv pair per scale, 8x8 first
        skip = vae_began.Decoder(size, 4, 8, skips=True)
        assert skip(h).shape == (2, 3, size, size) and skip.blocks[1][0][0].in_channels == 8  # n + n from h0


def test_losses_on_a_tiny_case():
    cfg, model = tiny_model(eta=0.75)  # eta != 1, so that a dropped eta shows in M_global
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    torch.manual_seed(1)
    t = vae_began.losses(model, x, torch.tensor(0.25), cfg)
    fake = t["L_g"] + 0.3 * t["L_v"]
    assert t["L_dis"].item() == pytest.approx((t["L_d"] - 0.25 * fake).item(), rel=1e-6)
    assert t["L_gen"].item() == pytest.approx((fake + 0.1 * t["L_s"] + 0.1 * t["L_e"]).item(), rel=1e-6)
    # eq. 15 with L_n's weight 1 (the default), and M_global at eta 0.75
    assert t["L_enc"].item() == pytest.approx((t["L_n"] + 0.1 * t["L_s"] + 0.1 * t["L_e"]).item(), rel=1e-6)
    assert t["m_global"].item() == pytest.approx((t["L_d"] + (0.75 * t["L_d"] - fake).abs()).item(), rel=1e-6)
    _, x_d = model.discriminator(x)
    assert t["L_d"].item() == pytest.approx((x - x_d).abs().mean().item(), rel=1e-6)
    assert vae_began.l1(x, x).item() == 0.0


def test_each_objective_changes_only_its_own_network():
    cfg, model = tiny_model()
    opts = vae_began.make_optimizers(model, cfg, torch.device("cpu"))
    before = {k: [p.detach().clone() for p in n.parameters()] for k, n in model.networks().items()}
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    torch.manual_seed(2)
    t = vae_began.losses(model, x, torch.tensor(0.3), cfg)
    expected = {name: torch.autograd.grad(t[obj], list(model.networks()[name].parameters()), retain_graph=True,
                                          allow_unused=True) for name, obj in vae_began.OBJECTIVES.items()}
    # routing matters: L_dis would push G another way than L_gen does
    g_dis_to_gen = torch.autograd.grad(t["L_dis"], list(model.generator.parameters()), retain_graph=True)
    assert not all(torch.equal(a, b) for a, b in zip(g_dis_to_gen, expected["generator"]))
    torch.manual_seed(2)
    controller = vae_began.Controller.start((1e-3, 0, 0), "cpu")
    controller.k = torch.tensor(0.3, dtype=torch.float64)
    vae_began.train_step(model, opts, controller, [x], cfg, torch.device("cpu"))
    for name, net in model.networks().items():
        for p, g in zip(net.parameters(), expected[name]):
            assert torch.equal(p.grad, g), name  # the gradient of its own objective, nothing else
        assert any(not torch.equal(a, b) for a, b in zip(before[name], net.parameters())), name


def test_vae_alone_has_no_discriminator_and_trains_its_two_networks_on_l_e_and_l_n():
    cfg, model = tiny_model(gan=False)
    assert model.discriminator is None and set(model.networks()) == {"encoder", "generator"}
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    t = vae_began.losses(model, x, torch.tensor(0.0), cfg)
    assert t["L_d"].item() == t["L_g"].item() == t["L_s"].item() == 0.0
    assert t["L_gen"].item() == pytest.approx(0.1 * t["L_e"].item())
    assert t["L_enc"].item() == pytest.approx(t["L_n"].item() + 0.1 * t["L_e"].item())  # eq. 15: L_n's weight 1
    _, small = tiny_model(gan=False, kl_weight=0.003125)
    t = vae_began.losses(small, x, torch.tensor(0.0), dataclasses.replace(cfg, kl_weight=0.003125))
    assert t["L_enc"].item() == pytest.approx(0.003125 * t["L_n"].item() + 0.1 * t["L_e"].item())
    with pytest.raises(ValueError, match="nothing to train"):
        vae_began.resolve_defaults(vae_began.Config(vae=False, gan=False))


def test_no_vae_ablation_has_no_encoder():
    cfg, model = tiny_model(vae=False)
    assert model.encoder is None and set(model.networks()) == {"generator", "discriminator"}
    t = vae_began.losses(model, torch.rand(4, 3, 32, 32) * 2 - 1, torch.tensor(0.0), cfg)
    assert t["L_v"].item() == 0.0 and t["L_s"].item() > 0


def test_short_run_on_real_faces_discriminator_learns_and_k_moves(tmp_path):
    beta1 = 0.1 * 16 / (3 * 32 * 32)  # L_n's weight for beta = 1 against the summed L1 of L_e
    vae_began.main(["--data-dir", CELEBA, "--out", str(tmp_path), "--steps", "30", "--batch-size", "16",
                    "--log-every", "5", "--lr", "2e-4", "--eval-images", "20", "--kl-weight", str(beta1)] + TINY)
    rows = common.read_jsonl(str(tmp_path / "metrics.jsonl"))
    assert rows[-1]["L_d"] < rows[0]["L_d"]
    assert rows[0]["k_t"] > 0 and rows[-1]["k_t"] != rows[0]["k_t"]
    assert {"k_t", "m_global"} <= set(rows[-1])
    figures = set(os.listdir(tmp_path / "figures"))
    assert {"samples.png", "fig4_reconstructions.png", "fig6_interpolation.png", "curves.png"} <= figures
    import json
    result = json.load(open(tmp_path / "eval.json"))
    assert {"k_t", "m_global", "L_d_real", "L_d_generated",
            "recon_l1_per_element", "kl_per_dim_nats"} <= set(result)
    # beta = 1 per pixel keeps the encoder informative in 30 steps (eq. 15's weight 1 collapses it
    # there: KL ~ 1e-6 nats per dim; a longer run recovers, see vae_began's docstring)
    assert result["kl_beta_per_pixel"] == pytest.approx(1.0) and result["active_units"] > 0
    assert rows[-1]["active_units"] > 0
    state = common.load_checkpoint(str(tmp_path), "vae_began")
    assert state["extra"]["controller"]["k"] == pytest.approx(rows[-1]["k_t"], rel=1e-6)
    vae_began.main(["eval", "--checkpoint", str(tmp_path / "checkpoint.pt"), "--eval-images", "10"])
    assert json.load(open(tmp_path / "eval.json"))["heldout_images"] == 10


def test_resume_is_exact_with_the_controller(tmp_path):
    args = ["--data-dir", CELEBA, "--batch-size", "4", "--log-every", "1", "--eval-images", "4"] + TINY
    vae_began.main(args + ["--out", str(tmp_path / "a"), "--steps", "4"])
    vae_began.main(args + ["--out", str(tmp_path / "b"), "--steps", "2"])
    vae_began.main(args + ["--out", str(tmp_path / "b"), "--steps", "4"])
    a, b = (common.load_checkpoint(str(tmp_path / k), "vae_began") for k in "ab")
    assert all(torch.equal(a["models"]["model"][k], b["models"]["model"][k]) for k in a["models"]["model"])
    assert a["extra"]["controller"] == b["extra"]["controller"]


def test_cifar10_reader(tmp_path, tiny_extractor):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (10, 3072), dtype=np.uint8), b"labels": list(range(10))}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
    train = data.load_dataset("cifar10", str(tmp_path), "train")
    assert train.images.shape == (50, 32, 32, 3) and train.labels["class"][:3].tolist() == [0, 1, 2]
    with open(folder / "data_batch_1", "rb") as f:
        first = pickle.load(f)[b"data"][0]
    assert np.array_equal(train.images[0][..., 0].flatten(), first[:1024])  # red plane first
    # the real-image IS of CIFAR-10 reads its train split by default, as the protocol does
    import fidelity
    fidelity.main(["vae_began", "--real-isc", "--dataset", "cifar10", "--data-dir", str(tmp_path), "--image-size", "32",
                   "--out", str(tmp_path / "out"), "--feature-extractor", tiny_extractor])
    import json
    assert json.load(open(tmp_path / "out" / "eval_real_isc.json"))["real"]["images"] == 50
    (folder / "data_batch_3").write_bytes(b"junk")
    with pytest.raises(ValueError, match="data_batch_3: not a CIFAR-10 python batch"):
        data.load_dataset("cifar10", str(tmp_path), "train")


def test_each_loss_is_its_formula_replayed_from_the_same_draws():
    """Eq. 2, 3, 7 and 9 written out here, on the same z_g and eps as `losses` draws: catches the
    eq. 7 misprint (|x - D(x_g)|), a summed KL, and L_s against the wrong code (D's code of x_g)."""
    cfg, model = tiny_model()
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    torch.manual_seed(3)
    t = vae_began.losses(model, x, torch.tensor(0.25), cfg)
    torch.manual_seed(3)
    with torch.no_grad():
        x_g = model.generator(torch.randn(4, 16))                         # the draws in losses' order
        h_x, _ = model.discriminator(x)
        _, x_gd = model.discriminator(x_g)
        mu, logvar = model.encoder(x).chunk(2, dim=1)
        x_v = model.generator(mu + torch.exp(0.5 * logvar) * torch.randn(4, 16))
        h_v, x_vd = model.discriminator(x_v)
    mean_abs = lambda a, b: (a - b).abs().mean().item()
    assert t["L_g"].item() == pytest.approx(mean_abs(x_g, x_gd), rel=1e-5)          # eq. 7, |x_g - D(x_g)|
    assert t["L_v"].item() == pytest.approx(mean_abs(x_v, x_vd), rel=1e-5)          # eq. 7
    assert t["L_e"].item() == pytest.approx(mean_abs(x, x_v), rel=1e-5)             # eq. 2
    assert t["L_s"].item() == pytest.approx(mean_abs(h_x, h_v), rel=1e-5)           # eq. 9, Enc_D(x) vs Enc_D(x_v)
    # eq. 3: KL(N(mu, var) || N(0, I)) per image, averaged over the N = 16 dims and the batch
    kl = 0.5 * (mu ** 2 + logvar.exp() - 1 - logvar).sum(1)
    assert t["L_n"].item() == pytest.approx(kl.mean().item() / 16, rel=1e-5)


@pytest.mark.parametrize("eq11, sign", [("restored", -1.0), ("printed", 1.0)])
def test_the_step_updates_k_from_eq11s_error_under_either_reading(eq11, sign):
    """Eq. 11 in the step: restored e = eta L_d - (L_g + alpha L_v), printed e = eta L_d - L_g +
    alpha L_v; with k_0 = 0.5 and l1 = 0.1 the step's k_t is 0.5 + 0.1 e from the step's losses."""
    cfg, model = tiny_model(eq11=eq11, eta=0.5)
    opts = vae_began.make_optimizers(model, cfg, torch.device("cpu"))
    controller = vae_began.Controller.start((0.1, 0.0, 0.0), "cpu")
    controller.k = torch.tensor(0.5, dtype=torch.float64)
    torch.manual_seed(4)
    out = vae_began.train_step(model, opts, controller, [torch.rand(4, 3, 32, 32) * 2 - 1], cfg, torch.device("cpu"))
    assert out["L_v"].item() > 0.01
    e = 0.5 * out["L_d"].item() - out["L_g"].item() + sign * 0.3 * out["L_v"].item()
    assert out["k_t"].item() == pytest.approx(0.5 + 0.1 * e, abs=1e-6)


def test_loss_scaling_gives_the_unscaled_step_and_skips_a_network_whose_gradients_overflow(tmp_path):
    """fp16's GradScaler in the hand-routed step (run here on CPU): with a finite loss the step
    equals the unscaled one; an inf in L_gen skips G's step only and halves the scale."""
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    results = []
    for scaler in (None, torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)):
        cfg, model = tiny_model()
        opts = vae_began.make_optimizers(model, cfg, torch.device("cpu"))
        torch.manual_seed(5)
        vae_began.train_step(model, opts, vae_began.Controller.start((1e-3, 0, 0), "cpu"), [x], cfg,
                             torch.device("cpu"), scaler=scaler)
        results.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*results))

    cfg, model = tiny_model()
    opts = vae_began.make_optimizers(model, cfg, torch.device("cpu"))
    before = {k: [p.detach().clone() for p in n.parameters()] for k, n in model.networks().items()}
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)

    def overflow(*args):
        t = vae_began.losses(*args)
        return {**t, "L_gen": t["L_gen"] * float("inf")}
    vae_began.train_step(model, opts, vae_began.Controller.start((1e-3, 0, 0), "cpu"), [x], cfg,
                         torch.device("cpu"), forward=overflow, scaler=scaler)
    changed = {k: any(not torch.equal(a, b) for a, b in zip(before[k], n.parameters()))
               for k, n in model.networks().items()}
    assert changed == {"encoder": True, "generator": False, "discriminator": True}
    assert scaler.get_scale() == 2.0 ** 9
    # the scale is part of the training state a checkpoint keeps and a resume restores
    common.save_training_state(dataclasses.replace(cfg, out=str(tmp_path)), "vae_began", 1, {"model": model}, opts,
                               scaler, [])
    restored = torch.amp.GradScaler("cpu", init_scale=1.0)
    common.restore_training_state(common.load_checkpoint(str(tmp_path), "vae_began"), {"model": model}, opts,
                                  restored, 0)
    assert restored.get_scale() == 2.0 ** 9


def test_fidelity_scores_samples_of_a_run_and_real_images_without_a_checkpoint(tmp_path, mnist_dir,
                                                                                      tiny_extractor, capsys,
                                                                                      monkeypatch):
    import json
    import sys
    import fidelity
    vae_began.main(["--dataset", "mnist", "--data-dir", mnist_dir, "--out", str(tmp_path), "--steps", "1",
                    "--eval-images", "20", "--noise", "uniform"] + TINY)
    metrics = ["--fid", "--kid", "--isc", "--feature-extractor", tiny_extractor, "--fidelity-samples", "64"]
    fidelity.main(["vae_began", "--checkpoint", str(tmp_path / "checkpoint.pt")] + metrics)
    result = json.load(open(tmp_path / "fidelity.json"))
    assert {"fid", "kid", "isc", "real", "samples", "greyscale", "torch_fidelity", "feature_extractor"} <= set(result)
    assert result["samples"]["images"] == 64 and result["kid"]["subset_size"] == 64  # min(1000, samples, real)
    assert result["real"]["split"] == "test" and result["samples"]["z"].startswith("uniform_0_1")
    assert result["isc"]["mean"] >= 1.0 and result["fid"] > 0
    capsys.readouterr()
    # the real images' IS, the protocol check, needs no checkpoint
    fidelity.main(["vae_began", "--real-isc", "--dataset", "mnist", "--data-dir", mnist_dir, "--image-size", "32",
                   "--out", str(tmp_path), "--feature-extractor", tiny_extractor, "--fidelity-split", "train"])
    real = json.load(open(tmp_path / "eval_real_isc.json"))
    assert real["real"]["split"] == "train" and real["real"]["images"] == 800 and real["isc"]["mean"] > 1.0
    assert json.loads(capsys.readouterr().out)["isc"] == real["isc"]
    # without the extra: one line naming the pip command, exit status 2
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)
    with pytest.raises(SystemExit) as e:
        fidelity.main(["vae_began", "--checkpoint", str(tmp_path / "checkpoint.pt"), "--isc"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "pip install -r requirements-metrics.txt" in err and len(err.strip().splitlines()) == 1
    # no metric asked for: one line that names them
    monkeypatch.undo()
    with pytest.raises(SystemExit) as e:
        fidelity.main(["vae_began", "--checkpoint", str(tmp_path)])
    assert e.value.code == 2 and "--fid, --kid, --isc or --real-isc" in capsys.readouterr().err


@pytest.mark.parametrize("noise,mean,var", [("uniform", 0.0, 1 / 3), ("normal", 0.0, 1.0)])
def test_prior_noise_is_u_minus_1_1_or_standard_normal(noise, mean, var):
    """z_g ~ U(-1, 1) (BEGAN, --noise uniform: mean 0, variance 1/3, range [-1, 1]) or N(0, I)
    (sec. 3.1), on the training path (device RNG) and the figures' path (a CPU generator)."""
    cfg = vae_began.Config(noise=noise, latent_dim=8)
    torch.manual_seed(0)
    for z in (vae_began.prior_noise(50_000, cfg, torch.device("cpu")),
              vae_began.prior_noise(50_000, cfg, torch.device("cpu"), torch.Generator().manual_seed(1))):
        assert z.shape == (50_000, 8)
        assert z.mean().item() == pytest.approx(mean, abs=0.01) and z.var().item() == pytest.approx(var, rel=0.02)
        if noise == "uniform":
            assert z.min() >= -1 and z.max() <= 1 and z.min() < -0.99 and z.max() > 0.99


def test_printed_eq11_adds_alpha_l_v_and_the_restored_one_subtracts_it():
    """--eq11 printed (the default): e_t = eta L_d - L_g + alpha L_v, the text as printed;
    --eq11 restored: eta L_d - (L_g + alpha L_v)."""
    l_d, l_g, l_v = torch.tensor(0.2), torch.tensor(0.05), torch.tensor(0.1)
    restored = vae_began.controller_error(l_d, l_g, l_v, vae_began.Config(eq11="restored", eta=0.75))
    printed = vae_began.controller_error(l_d, l_g, l_v, vae_began.Config(eta=0.75))
    assert restored.item() == pytest.approx(0.75 * 0.2 - 0.05 - 0.3 * 0.1)
    assert printed.item() == pytest.approx(0.75 * 0.2 - 0.05 + 0.3 * 0.1)


def test_defaults_are_the_measured_recipe():
    """The defaults that train on MNIST at 32 px (docstring: measured): eq. 11 as printed, eq. 15's
    L_n weight 1, eta 0.75, Adam lr 2e-4 (beta1 0.5), batch 32; the paper's alpha, beta, gamma
    and gains. --help names the paper's values beside them."""
    cfg = vae_began.Config()
    assert (cfg.eq11, cfg.kl_weight, cfg.eta, cfg.lr, cfg.batch_size, cfg.adam_beta1) == ("printed", 1.0, 0.75, 2e-4, 32, 0.5)
    assert (cfg.alpha, cfg.beta, cfg.gamma, cfg.gains) == (0.3, 0.1, 0.1, "1e-3,1e-5,1e-5")
    with pytest.raises(SystemExit):
        vae_began.main(["train", "--help"])


def test_pid_step_response_is_eq12_written_out():
    """k_t of eq. 12 under an error step e = 0.01 from k = 0: step 0 adds (l1 + l2 + l3) e (the
    derivative terms see e_{-1} = e_{-2} = 0), step 1 adds l1 e - l3 e, later steps l1 e."""
    import sys
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    from claims.vae_began_claims import step_response
    k = step_response((1e-3, 1e-5, 2e-5), error=0.01, steps=4)
    e = 0.01
    want = np.cumsum([(1e-3 + 1e-5 + 2e-5) * e, 1e-3 * e + 1e-5 * (e - e) + 2e-5 * (e - 2 * e + 0), 1e-3 * e, 1e-3 * e])
    assert np.allclose(k, want, rtol=1e-9, atol=1e-15)


def test_learning_rate_halves_every_interval_down_to_its_floor():
    """carpedm20's BEGAN schedule: lr, lr / 2 after --lr-halve-every steps, never below --lr-min."""
    cfg = vae_began.Config(lr=8e-5, lr_halve_every=100, lr_min=2e-5)
    assert [vae_began.learning_rate(cfg, s) for s in (0, 99, 100, 199, 200, 5000)] == [8e-5, 8e-5, 4e-5, 4e-5, 2e-5, 2e-5]


def test_eval_images_below_two_names_the_flag():
    """The unbiased MMD of eval needs two held-out images: --eval-images 1 is one line naming the flag."""
    with pytest.raises(ValueError, match="--eval-images must be >= 2, got 1"):
        vae_began.resolve_defaults(vae_began.Config(eval_images=1))


def test_kl_weight_0_is_the_former_default_beta_1_so_old_runs_resume_unchanged():
    """Runs saved before L_n's weight became 1 hold kl_weight 0, which meant gamma N / (C S^2):
    it still does (0.1 x 16 / (3 x 32 x 32) here), so resuming them keeps their objective."""
    cfg = vae_began.resolve_defaults(vae_began.Config(image_size=32, latent_dim=16, kl_weight=0.0))
    assert cfg.kl_weight == pytest.approx(0.1 * 16 / (3 * 32 * 32))


def test_the_backbone_is_begans_each_image_reconstructed_alone():
    """BEGAN's networks have no normalisation layer: in training mode D's reconstruction of an
    image does not depend on the other images of its batch (a BatchNorm anywhere in D would make
    it), and E and G hold no BatchNorm either."""
    cfg = vae_began.resolve_defaults(vae_began.Config(dataset="mnist", image_size=32, filters=4, latent_dim=8,
                                                      networks="began"))
    torch.manual_seed(0)
    model = vae_began.VAEBEGAN(cfg).train()
    norms = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.LayerNorm, torch.nn.GroupNorm)
    assert not any(isinstance(m, norms) for m in model.modules())
    x = torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    alone, mixed = model.discriminator(x[:1].repeat(4, 1, 1, 1))[1][0], model.discriminator(x)[1][0]
    assert torch.allclose(alone, mixed, atol=1e-6)


def test_eval_kl_is_per_dimension_in_nats_written_out(tmp_path):
    """eval.json's kl_per_dim_nats: KL(q(z|x) || N(0, I)) = 1/2 sum_d (mu^2 + e^logvar - 1 -
    logvar), averaged over the held-out images and divided by N; with the encoder's output fixed
    to a known (mu, logvar) the value is computed here by hand (N = 16: a sum over dims would be
    16x larger, a missing -1 or logvar term would shift it)."""
    cfg, model = tiny_model(data_dir=CELEBA, out=str(tmp_path), eval_images=4)
    mu, logvar = torch.linspace(-1, 1, 16), torch.linspace(-0.5, 0.5, 16)
    model.encode = lambda x: (mu.expand(len(x), -1), logvar.expand(len(x), -1))
    result = vae_began.evaluate(cfg, model.eval(), {"k": 0.0}, torch.device("cpu"))
    per_dim = [0.5 * (m * m + math.exp(v) - 1 - v) for m, v in zip(mu.tolist(), logvar.tolist())]
    assert result["kl_per_dim_nats"] == pytest.approx(sum(per_dim) / 16, rel=1e-5)


def began_networks():
    import sys
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import began_networks as bn
    return bn


def test_began_networks_swaps_only_the_named_network_under_plain_begans_objective():
    """benchmarks/began_networks.py: --generator port replaces G alone (D stays BEGAN's
    auto-encoder) and the objective is plain BEGAN's (no E, no L_s, BEGAN's k update and noise);
    the ports' G draws (B, 1, 32, 32) in [-1, 1] and their D reconstructs at that shape. With
    --model vae-began-lsm the objective is the script's own and E comes from the ports too."""
    bn = began_networks()
    args = lambda g, d, m="began": type("A", (), dict(data_dir=os.path.join(ROOT, "tests", "data"), filters=4,
                                                      latent_dim=8, seed=0, batch_size=0, eta=0.0, generator=g,
                                                      discriminator=d, model=m))()
    cfg, model = bn.build(args("port", "began"))
    assert isinstance(model.generator, vae_began.PortGenerator) and isinstance(model.discriminator, vae_began.AutoEncoder)
    assert model.encoder is None and (cfg.vae, cfg.lsm, cfg.controller, cfg.noise) == (False, False, "p", "uniform")
    x_g = model.generator(torch.randn(5, 8) * 10)
    assert x_g.shape == (5, 1, 32, 32) and x_g.abs().max() <= 1
    cfg, model = bn.build(args("began", "port"))
    assert isinstance(model.generator, vae_began.Decoder) and isinstance(model.discriminator, vae_began.PortAutoEncoder)
    h, x_d = model.discriminator(x_g.detach())
    assert h.shape == (5, 8) and x_d.shape == (5, 1, 32, 32)
    cfg, model = bn.build(args("port", "port", "vae-began-lsm"))  # the paper's model: E from the ports too
    assert (cfg.vae, cfg.lsm, cfg.controller, cfg.noise) == (True, True, "pid", "normal")
    mu, logvar = model.encode(x_g.detach())
    assert isinstance(model.encoder[0], torch.nn.Conv2d) and mu.shape == logvar.shape == (5, 8)


def test_the_ports_discriminator_reads_its_batch_and_without_batchnorm_does_not():
    """The ports' D normalises its decoder's first layer over each batch (train mode): an image's
    reconstruction changes with the other images of its batch; --discriminator port-no-bn
    reconstructs each image alone."""
    x = torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    for batchnorm in (True, False):
        torch.manual_seed(0)
        d = vae_began.PortAutoEncoder(8, 1, batchnorm).train()
        alone, mixed = d(x[:1].repeat(4, 1, 1, 1))[1][0], d(x)[1][0]
        assert torch.allclose(alone, mixed, atol=1e-5) != batchnorm


def test_networks_mnist_is_built_for_32_pixels():
    """--networks mnist (the MNIST BEGAN ports' G, E and D) holds 32x32 shapes: other sizes are refused by name."""
    with pytest.raises(ValueError, match="--networks mnist"):
        vae_began.resolve_defaults(vae_began.Config(networks="mnist", image_size=64))
    cfg = vae_began.resolve_defaults(vae_began.Config(dataset="mnist", networks="mnist", image_size=32, latent_dim=8))
    x_g = vae_began.VAEBEGAN(cfg).generator(torch.randn(3, 8))
    assert x_g.shape == (3, 1, 32, 32)


def test_mnist_defaults_to_the_ports_networks_and_other_data_to_begans():
    """The measured default: --dataset mnist builds the MNIST BEGAN ports' G and D (--networks
    mnist), CelebA and CIFAR-10 BEGAN's; --networks began still gives MNIST BEGAN's."""
    build = lambda **kw: vae_began.VAEBEGAN(vae_began.resolve_defaults(vae_began.Config(
        image_size=32, filters=4, latent_dim=8, **kw)))
    mnist = build(dataset="mnist")
    assert isinstance(mnist.generator, vae_began.PortGenerator) and isinstance(mnist.discriminator,
                                                                               vae_began.PortAutoEncoder)
    for model in (build(dataset="celeba"), build(dataset="cifar10"), build(dataset="mnist", networks="began")):
        assert isinstance(model.generator, vae_began.Decoder) and isinstance(model.discriminator, vae_began.AutoEncoder)


@pytest.mark.parametrize("networks", ["began", "mnist"])
def test_xavier_init_reaches_every_weight_layer_of_either_network_family(networks):
    """--init xavier (BEGAN's TF code): every convolution, transposed convolution (the ports' G and
    D) and linear layer gets zero biases and Xavier-uniform weights, within +-sqrt(6 / (fan_in + fan_out))."""
    cfg = vae_began.resolve_defaults(vae_began.Config(dataset="mnist", networks=networks, image_size=32, filters=4,
                                                      latent_dim=8, init="xavier"))
    layers = [m for m in vae_began.VAEBEGAN(cfg).modules()
              if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d, torch.nn.Linear))]
    assert (networks == "mnist") == any(isinstance(m, torch.nn.ConvTranspose2d) for m in layers)
    for m in layers:
        fan_in, fan_out = torch.nn.init._calculate_fan_in_and_fan_out(m.weight)
        assert m.bias.abs().max() == 0
        assert m.weight.abs().max() <= math.sqrt(6 / (fan_in + fan_out)) + 1e-6
