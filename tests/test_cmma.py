import dataclasses
import math
import os

import numpy as np
import pytest
import torch
from torch.distributions import Normal
from PIL import Image

import cmma
import common
import data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CELEBA = os.path.join(ROOT, "tests", "data", "celeba")
SMALL_EVAL = ["--eval-images", "4", "--valid-images", "4", "--parzen-samples", "8", "--is-samples", "4"]


def test_parzen_estimate_matches_a_direct_mixture_density():
    torch.manual_seed(0)
    x, samples, sigmas = torch.rand(2, 3, 3), torch.rand(5, 2, 3, 3), torch.tensor([0.1, 0.3, 1.0])
    got = cmma.parzen_log_likelihood(x, samples, sigmas)
    for s, value in zip(sigmas, got):
        components = torch.distributions.Normal(samples.flatten(1).double(), s.double())
        log_p = components.log_prob(x.flatten().double()).sum(1)          # (K,)
        expected = torch.logsumexp(log_p, 0) - math.log(len(samples))
        assert value.item() == pytest.approx(expected.item(), rel=1e-9)


def small_model(kind="cmma", **kw):
    torch.manual_seed(0)
    cfg = cmma.resolve_defaults(cmma.Config(model=kind, attributes=40, **kw))
    return cfg, cmma.build_model(cfg, 40).eval()


def test_generate_draws_z_from_p_f_with_its_standard_deviation():
    """Fig. 5's draw z = f_mu(y) + noise * eps * exp(f_logvar(y) / 2), decoded by g: with the prior
    network's output fixed to a known (mu, logvar) the decoder must see exactly that z (a draw
    scaled by the variance, or by no noise, would not), for CMMA and the CVAE (z = noise * eps)."""
    _, model = small_model()
    mu, logvar = torch.full((2, 500), 0.5), torch.full((2, 500), math.log(4.0))  # sd 2
    eps, seen = torch.randn(2, 500, generator=torch.Generator().manual_seed(0)), []
    model.prior = lambda y: (mu, logvar)
    model.decode = lambda z, y: seen.append(z) or (torch.zeros(len(z), 3, 64, 64), None)
    model.generate(torch.zeros(2, 40), noise=0.5, eps=eps)
    assert torch.allclose(seen[-1], 0.5 + 0.5 * eps * 2.0)
    _, cvae = small_model("cvae")
    cvae.decode = lambda z, y: seen.append(z) or (torch.zeros(len(z), 3, 64, 64), None)
    cvae.generate(torch.zeros(2, 40), noise=0.5, eps=eps[:, :cvae.latent_dim])
    assert torch.allclose(seen[-1], 0.5 * eps[:, :cvae.latent_dim])


def test_edit_is_h_mu_plus_the_attribute_code_difference():
    _, model = small_model()
    x, y0 = torch.rand(3, 3, 64, 64), torch.randint(0, 2, (3, 40)).float()
    y1 = y0.clone()
    y1[:, 15] = 1 - y1[:, 15]
    with torch.no_grad():
        z = model.h(x)[0] + model.f(y1)[0] - model.f(y0)[0]
        assert torch.allclose(model.edit(x, y0, y1), model.g(z)[0], atol=1e-6)
        assert torch.allclose(model.edit(x, y0, y0), model.g(model.h(x)[0])[0], atol=1e-6)
        assert not torch.allclose(model.edit(x, y0, y1), model.edit(x, y0, y0))
    _, cvae = small_model("cvae")
    with torch.no_grad():
        expected = cvae.g(torch.cat([cvae.h(x, y0)[0], y1], 1))[0]
        assert torch.allclose(cvae.edit(x, y0, y1), expected, atol=1e-6)


def test_bound_terms_and_their_constants():
    _, model = small_model()
    x, y = torch.rand(2, 3, 64, 64), torch.randint(0, 2, (2, 40)).float()
    with torch.no_grad():
        terms = model(x, y)
    assert terms["elbo"].shape == (2,) and (terms["kl"] >= 0).all()
    assert torch.allclose(terms["elbo"], terms["log_px"] - terms["kl"])
    constants = 0.5 * math.log(2 * math.pi) * 3 * 64 * 64 - 0.5 * 500
    assert torch.allclose(terms["elbo_no_constants"] - terms["elbo"], torch.tensor(constants), atol=1e-2)
    g_mu, g_logvar = model.g(torch.zeros(1, 500))
    assert g_mu.shape == (1, 3, 64, 64) and 0 <= g_mu.min() and g_mu.max() <= 1
    assert g_logvar.min() >= -9 and g_logvar.max() <= 3


def make_lfw(root, n=30):
    """An LFW-layout sample (lfwcrop_color/faces/*.ppm + lfw_attributes.txt) from bundled faces."""
    faces = root / "lfwcrop_color" / "faces"
    faces.mkdir(parents=True)
    files = sorted(os.listdir(os.path.join(CELEBA, "img_align_celeba")))[:n]
    names = ["Male", "Asian", "Eyeglasses", "Big Nose"]
    lines = ["# Kumar et al. attribute classifier outputs", "#\tperson\timagenum\t" + "\t".join(names)]
    rng = np.random.default_rng(0)
    for i, f in enumerate(files):
        person, number = f"Person {i % 7}", i // 7 + 1
        Image.open(os.path.join(CELEBA, "img_align_celeba", f)).resize((64, 64)).save(
            faces / f"Person_{i % 7}_{number:04d}.ppm")
        lines.append(f"{person}\t{number}\t" + "\t".join(f"{v:.4f}" for v in rng.normal(size=len(names))))
    (root / "lfw_attributes.txt").write_text("\n".join(lines) + "\n")
    return lines


def test_lfw_reader_joins_faces_and_real_valued_attributes(tmp_path):
    lines = make_lfw(tmp_path)
    train = data.load_dataset("lfw", str(tmp_path), "train", 64)
    test = data.load_dataset("lfw", str(tmp_path), "test", 64)
    assert train.images.shape == (24, 64, 64, 3) and len(test) == 3
    assert train.files[:2] == ["Person_0_0001", "Person_1_0001"] and train.names["attributes"][3] == "Big Nose"
    assert train.labels["attributes"].dtype == np.float32
    assert train.labels["attributes"][0, 0] == pytest.approx(float(lines[2].split("\t")[2]), abs=1e-4)
    (tmp_path / "lfw_attributes.txt").write_text("\n".join(lines + ["Nobody Here\t1\t0\t0\t0\t0"]) + "\n")
    with pytest.raises(ValueError, match="Nobody_Here_0001, which is not in"):
        data.load_dataset("lfw", str(tmp_path), "train", 64)
    (tmp_path / "lfw_attributes.txt").write_text("\n".join(lines[:2] + [lines[2].rsplit("\t", 1)[0]]) + "\n")
    with pytest.raises(ValueError, match="line 3: 3 values for 4 attributes"):
        data.load_dataset("lfw", str(tmp_path), "train", 64)
    with pytest.raises(FileNotFoundError, match="lfw_attributes.txt"):
        data.load_dataset("lfw", str(tmp_path / "missing"), "train", 64)


@pytest.fixture(scope="module")
def three_runs(tmp_path_factory):
    """12 steps of each VAE (20 of the GAN) on the bundled real faces, at half the paper's conv
    widths (the full networks are the unit tests' and the lr 1e-3 test's)."""
    out = tmp_path_factory.mktemp("cmma")
    for kind in ("cmma", "cvae", "cgan"):
        cmma.main(["--model", kind, "--data-dir", CELEBA, "--out", str(out / kind), "--batch-size", "8", "--width", "0.5",
                   "--steps", "20" if kind == "cgan" else "12", "--log-every", "2" if kind == "cgan" else "3"]
                  + SMALL_EVAL)
    return out


def test_each_model_learns_on_real_faces(three_runs):
    for kind in ("cmma", "cvae"):
        rows = common.read_jsonl(str(three_runs / kind / "metrics.jsonl"))
        assert [r["step"] for r in rows] == [3, 6, 9, 12]
        assert rows[-1]["loss"] < 0.8 * rows[0]["loss"], kind
        assert os.path.exists(three_runs / kind / "figures" / f"fig6_{kind}.png")
    rows = common.read_jsonl(str(three_runs / "cgan" / "metrics.jsonl"))
    assert np.mean([r["d_loss"] for r in rows[1:]]) < 2 * math.log(2)  # D does better than chance
    assert os.path.exists(three_runs / "cgan" / "figures" / "fig4_cgan.png")


def test_fidelity_samples_take_attribute_rows_of_the_held_out_faces(three_runs, tiny_extractor, monkeypatch, capsys):
    drawn = []
    generate = cmma.CMMA.generate
    monkeypatch.setattr(cmma.CMMA, "generate", lambda self, y, noise=1.0, eps=None: drawn.append(y) or
                        generate(self, y, noise, eps))
    import fidelity
    fidelity.main(["cmma", "--checkpoint", str(three_runs / "cmma"), "--fid", "--isc", "--feature-extractor",
                   tiny_extractor, "--fidelity-samples", "400"])
    assert "FID" in capsys.readouterr().out
    import json
    result = json.load(open(three_runs / "cmma" / "fidelity.json"))
    assert "test faces" in result["samples"]["labels"] and result["isc"]["mean"] >= 1.0
    y = torch.cat(drawn).cpu().numpy()
    held = cmma.load_split(cmma.resolve_defaults(cmma.Config(data_dir=CELEBA)), "test", verbose=False)
    rows = {tuple(r) for r in np.asarray(held.labels["attributes"], np.float32)}
    assert len(y) >= 400 and all(tuple(r) in rows for r in y)  # whole rows: correlations kept
    assert np.abs(y.mean(0) - np.mean(held.labels["attributes"], 0)).max() < 0.15  # the held-out frequencies


def test_eval_figures_and_edit_over_the_three_checkpoints(three_runs, tmp_path, capsys):
    ckpts = ",".join(str(three_runs / k / "checkpoint.pt") for k in ("cmma", "cvae", "cgan"))
    cmma.main(["eval", "--checkpoint", ckpts] + SMALL_EVAL)
    printed = capsys.readouterr().out
    assert "Table 2" in printed and "Table 3" in printed and "cgan" in printed
    import json
    result = json.load(open(three_runs / "cmma" / "eval.json"))
    assert {"elbo_nats_per_face", "elbo_no_constants_nats_per_face", "parzen_test_nats_per_face",
            "is_log_p_x_given_y_nats_per_face"} <= set(result)
    assert "elbo_nats_per_face" not in json.load(open(three_runs / "cgan" / "eval.json"))
    assert len(result["parzen_grid"]) == 21 and result["parzen_sigma"] == result["parzen_grid"][result["parzen_sigma_index"]]
    assert result["parzen_sigma_at_grid_edge"] == (result["parzen_sigma_index"] in (0, 20))
    valid = result["parzen_valid_nats_per_face"]  # the window is the one best on the validation faces
    assert len(set(valid)) > 1 and result["parzen_sigma_index"] == int(np.argmax(valid))
    assert "this run: CelebA test" in printed and "4 test faces, 4 validation faces, K = 8" in printed
    assert "the paper's, on LFW" in printed
    cmma.main(["figures", "--checkpoint", ckpts, "--out", str(tmp_path)])
    assert {"fig4_compare.png", "fig6_compare.png", "fig7_compare.png"} <= set(os.listdir(tmp_path / "figures"))
    face = os.path.join(CELEBA, "img_align_celeba", "000002.jpg")
    cmma.main(["edit", "--checkpoint", ckpts, "--image", face, "--set", "Eyeglasses=1", "--out", str(tmp_path)])
    edited = Image.open(tmp_path / "figures" / "edit_000002.png")
    assert edited.size == (3 * 66 + 2, 2 * 66 + 2)  # input, reconstruction, edit; CMMA and CVAE rows
    with pytest.raises(SystemExit):
        cmma.main(["edit", "--checkpoint", ckpts, "--image", face, "--set", "Wings=1"])
    assert "'Wings'" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # not an image: one line, no PIL traceback
        cmma.main(["edit", "--checkpoint", ckpts, "--image", os.path.join(ROOT, "README.md"), "--set", "Eyeglasses=1"])
    assert "cannot decode it as an image" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a folder: named as such, not "not found"
        cmma.main(["edit", "--checkpoint", ckpts, "--image", CELEBA, "--set", "Eyeglasses=1"])
    assert "is a folder: pass one aligned face photo" in capsys.readouterr().err
    for sets, message in (([], "edit needs at least one --set"),
                          (["--set", "Eyeglasses=1", "--set", "Eyeglasses=0"], "--set gives Eyeglasses more than once")):
        with pytest.raises(SystemExit):
            cmma.main(["edit", "--checkpoint", ckpts, "--image", face, *sets])
        assert message in capsys.readouterr().err


def test_tuned_gan_resume_is_exact(tmp_path):
    """benchmarks/tune_cgan.py (sec. 4.4) picks the candidate with the best validation Parzen LL,
    trains it, and a resumed run reuses its tune.json and continues to the bit."""
    import tune_cgan
    args = ["--grid", "init_std=0,0.02", "--tune-steps", "1", "--data-dir", CELEBA, "--batch-size", "4",
            "--log-every", "1", "--width", "0.5"] + SMALL_EVAL
    tune_cgan.main(args + ["--out", str(tmp_path / "a"), "--steps", "4"])
    tune_cgan.main(args + ["--out", str(tmp_path / "b"), "--steps", "2"])
    tune_cgan.main(args + ["--out", str(tmp_path / "b"), "--steps", "4"])
    a, b = (common.load_checkpoint(str(tmp_path / k), "cmma") for k in "ab")
    assert all(torch.equal(a["models"]["model"][k], b["models"]["model"][k]) for k in a["models"]["model"])
    assert set(a["optimizers"]) == {"generator", "discriminator"} and a["config"]["model"] == "cgan"
    tuned = tune_cgan.read_tuning(str(tmp_path / "b"))
    best = max(tuned["candidates"], key=lambda c: c["valid_parzen_nats_per_face"])
    assert [c["init_std"] for c in tuned["candidates"]] == [0.0, 0.02]
    assert tuned["chosen"] == {"init_std": best["init_std"]} and a["config"]["init_std"] == best["init_std"]
    # another grid or optimizer tunes again into the same folder, each candidate started over
    # (the old candidates' checkpoints were trained with other flags)
    def tune(grid, *extra):
        cfg, explicit = common.parse_train_flags(cmma.Config, args[4:] + ["--out", str(tmp_path / "b"), "--steps", "4",
                                                                         "--model", "cgan", *extra])
        return tune_cgan.tune(cmma.resolve_defaults(cfg), explicit, grid, 1)
    tune("lr=1e-3,3e-3")
    assert [c["lr"] for c in tune_cgan.read_tuning(str(tmp_path / "b"))["candidates"]] == [1e-3, 3e-3]
    tune("lr=1e-3,3e-3", "--gan-optimizer", "adam")
    assert tune_cgan.read_tuning(str(tmp_path / "b"))["settings"]["gan_optimizer"] == "adam"
    assert not tune_cgan.read_tuning(str(tmp_path / "b"))["settings"]["d_projection"]
    tune("lr=1e-3,3e-3", "--gan-optimizer", "adam", "--d-projection")  # a new D: tuned again
    assert tune_cgan.read_tuning(str(tmp_path / "b"))["settings"]["d_projection"]
    written = os.stat(tmp_path / "b" / "tune.json").st_mtime_ns
    tune("lr=1e-3,3e-3", "--gan-optimizer", "adam", "--d-projection", "--log-every", "2")  # nothing that tunes
    assert os.stat(tmp_path / "b" / "tune.json").st_mtime_ns == written  # reused, not tuned again
    tune("lr=1e-3,3e-3", "--gan-optimizer", "adam", "--d-projection", "--latent-dim", "8")  # any other setting
    assert tune_cgan.read_tuning(str(tmp_path / "b"))["settings"]["latent_dim"] == 8


def test_adagrad_at_lr_1e3_trains_without_the_early_log_variance_spike():
    """Adagrad's first steps move each weight by about lr. With a clamped log-variance head, lr 1e-3
    sent g's log-variance to -9 at step 2 and the loss up ~700x (6.7M nats), and the clamp's zero
    gradient kept it there; the squashed head must keep the loss within a few times its start."""
    cfg = cmma.resolve_defaults(cmma.Config(data_dir=CELEBA, batch_size=16, attributes=40, lr=1e-3))
    train_set = cmma.load_split(cfg, "train", verbose=False)
    torch.manual_seed(0)
    model = cmma.build_model(cfg, 40)
    optimizers, device = cmma.make_optimizers(model, cfg), torch.device("cpu")
    scaler = common.make_grad_scaler(device, False)
    batches = data.Batches(train_set, cfg.batch_size, 0, device, 0, 1, ("attributes",))
    x0, y0 = cmma.faces_and_attributes(train_set, np.arange(32), device)

    def held_loss():  # -bound on 32 fixed faces, the same z noise each time
        torch.manual_seed(1)
        with torch.no_grad():
            return -model(x0, y0)["elbo"].mean().item()
    losses, start = [], held_loss()
    for step in range(6):
        x, labels = batches.get(step)
        terms = cmma.train_step(model, optimizers, scaler, [((x + 1) / 2, labels["attributes"].float())],
                                cfg, device)
        losses.append(terms["loss"].item())
    assert max(losses) < 5 * losses[0] and held_loss() < 0.8 * start, losses


def test_parzen_grid_flag_reaches_below_the_papers_window_and_refuses_bad_grids():
    sigmas = cmma.parzen_sigmas("0.01,1,21")
    assert len(sigmas) == 21 and sigmas[0].item() == pytest.approx(0.01) and sigmas[-1].item() == pytest.approx(1.0)
    assert torch.allclose(sigmas[1:] / sigmas[:-1], torch.full((20,), 10 ** 0.1), rtol=1e-5)  # log-spaced
    for bad in ("0.1,0.01,5", "0,1,5", "0.01,1", "a,b,c", "0.01,1,1"):
        with pytest.raises(ValueError, match="--parzen-grid"):
            cmma.parzen_sigmas(bad)


def normal(mu, logvar):
    return torch.distributions.Normal(mu.double(), (0.5 * logvar.double()).exp())


def test_kl_is_q_against_the_learned_prior_as_torch_distributions():
    """KL(q_h(z|x) || p_f(z|y)) on the model's own posterior and prior (not KL(p || q), not
    without its -1): torch.distributions as the independent value."""
    _, model = small_model()
    x, y = torch.rand(3, 3, 64, 64), torch.randint(0, 2, (3, 40)).float()
    with torch.no_grad():
        terms = model(x, y)
        q, p = normal(*model.posterior(x, y)), normal(*model.prior(y))
    expected = torch.distributions.kl_divergence(q, p).sum(-1)
    assert torch.allclose(terms["kl"].double(), expected, rtol=1e-4)
    assert not torch.allclose(expected, torch.distributions.kl_divergence(p, q).sum(-1), rtol=1e-2)


def test_log_px_uses_the_decoders_learned_variance(monkeypatch):
    """With z = mu (no noise) and g's log-variance head fixed at -2, log p(x|z) is the Gaussian
    density with variance e^-2 per pixel, not a unit-variance one."""
    _, model = small_model()
    torch.nn.init.zeros_(model.g.logvar.weight)
    lo, hi = model.g.logvar_range  # the head's output is squashed: lo + (hi - lo) * sigmoid(.)
    torch.nn.init.constant_(model.g.logvar.bias, math.log((-2.0 - lo) / (hi + 2.0)))
    monkeypatch.setattr(common, "reparameterize", lambda mu, logvar: mu)
    x, y = torch.rand(2, 3, 64, 64), torch.randint(0, 2, (2, 40)).float()
    with torch.no_grad():
        terms = model(x, y)
        g_mu, _ = model.decode(model.posterior(x, y)[0], y)
    expected = normal(g_mu, torch.full_like(g_mu, -2.0)).log_prob(x.double()).flatten(1).sum(1)
    assert torch.allclose(terms["log_px"].double(), expected, rtol=1e-5)


def test_importance_estimate_is_the_weight_formula_whatever_the_chunk(monkeypatch):
    """With z = mu every weight is log p(x|mu) + log p(mu|y) - log q(mu|x), so the estimate equals
    it exactly, decoded in chunks of 3 or all 7 at once."""
    _, model = small_model()
    monkeypatch.setattr(common, "reparameterize", lambda mu, logvar: mu)
    x, y = torch.rand(2, 3, 64, 64), torch.randint(0, 2, (2, 40)).float()
    with torch.no_grad():
        mu, logvar = model.posterior(x, y)
        g_mu, g_logvar = model.decode(mu, y)
        expected = (normal(g_mu, g_logvar).log_prob(x.double()).flatten(1).sum(1)
                    + normal(*model.prior(y)).log_prob(mu.double()).sum(1) - normal(mu, logvar).log_prob(mu.double()).sum(1))
    for chunk in (3, 250):
        got = cmma.importance_log_likelihood(model, x, y, 7, chunk=chunk)
        assert torch.allclose(got, expected, rtol=1e-6)


def test_importance_estimate_is_the_log_mean_of_the_weights_over_distinct_draws(monkeypatch):
    """With k = 5 distinct draws z_k = mu + sigma eps_k (eps fixed and recorded), the estimate is
    log (1/k) sum_k w_k, written out with torch.distributions: not the mean of log w_k (the
    ELBO), not without its log k, not with z drawn from the prior."""
    cfg, model = small_model()
    eps = torch.randn(5, cfg.latent_dim, generator=torch.Generator().manual_seed(3))
    monkeypatch.setattr(common, "reparameterize", lambda mu, logvar: mu + (0.5 * logvar).exp() * eps[:len(mu)])
    x, y = torch.rand(1, 3, 64, 64), torch.randint(0, 2, (1, 40)).float()
    with torch.no_grad():
        mu, logvar = model.posterior(x, y)
        z = mu + (0.5 * logvar).exp() * eps
        g_mu, g_logvar = model.decode(z, y.expand(5, -1))
        log_w = (normal(g_mu, g_logvar).log_prob(x.double()).flatten(1).sum(1)
                 + normal(*model.prior(y)).log_prob(z.double()).sum(1) - normal(mu, logvar).log_prob(z.double()).sum(1))
        got = cmma.importance_log_likelihood(model, x, y, 5)
    assert log_w.std() > 1  # the weights differ, so the log-mean and the mean of logs differ
    expected = torch.log(torch.exp(log_w - log_w.max()).mean()) + log_w.max()
    assert got.item() == pytest.approx(expected.item(), rel=1e-6, abs=1e-6)
    assert got.item() > log_w.mean().item() + 0.01  # Jensen: above the ELBO of the same draws


def test_a_training_step_moves_the_prior_network_f():
    cfg, model = small_model()
    model.train()
    before = [p.detach().clone() for p in model.f.parameters()]
    optimizers = cmma.make_optimizers(model, cfg)
    x, y = torch.rand(4, 3, 64, 64), torch.randint(0, 2, (4, 40)).float()
    cmma.train_step(model, optimizers, common.make_grad_scaler(torch.device("cpu"), False), [(x, y)], cfg,
                    torch.device("cpu"))
    assert all(not torch.equal(b, p) for b, p in zip(before, model.f.parameters())), "f did not learn"


def test_cmma_generates_from_its_prior_network_not_from_n01():
    _, model = small_model()
    y = torch.randint(0, 2, (3, 40)).float()
    with torch.no_grad():
        expected = model.g(model.f(y)[0])[0]
        assert torch.allclose(model.generate(y, noise=0.0), expected, atol=1e-6)
        assert not torch.allclose(model.generate(y, noise=0.0), model.g(torch.zeros(3, 500))[0], atol=1e-3)


def test_discriminator_tiles_y_into_its_first_convolution():
    """D's first layer equals one unpadded convolution over [x, y tiled as constant maps], with
    the y kernels spreading each tiled weight evenly over the 5x5 window."""
    torch.manual_seed(0)
    features = cmma.ConvFeatures(3, 32, width=0.25, condition=4)
    x, y = torch.rand(2, 3, 32, 32), torch.rand(2, 4)
    conv = torch.nn.Conv2d(7, features.conv1.out_channels, 5)
    with torch.no_grad():
        conv.weight[:, :3] = features.conv1.weight
        conv.weight[:, 3:] = features.tiled_y.weight[:, :, None, None] / 25
        conv.bias.copy_(features.conv1.bias)
        tiled = torch.cat([x, y[:, :, None, None].expand(-1, -1, 32, 32)], 1)
        assert torch.allclose(features(x, y), features.rest(conv(tiled)), atol=1e-5)
        assert not torch.allclose(features(x, y), features(x, torch.zeros_like(y)))


def test_eval_subsets_are_seeded_and_disjoint_when_one_split_serves_both():
    cfg = cmma.resolve_defaults(cmma.Config(dataset="mnist", data_dir=os.path.join(ROOT, "tests", "data", "mnist"),
                                            image_size=32, eval_images=150, valid_images=60))
    test, valid = cmma.load_split(cfg, "test", verbose=False), cmma.load_split(cfg, "valid", verbose=False)
    assert test.files == valid.files and test.labels["attributes"].shape == (len(test), 10)
    assert (test.labels["attributes"].argmax(1) == test.labels["class"]).all()
    t, v = cmma.eval_subsets(cfg, test, valid)
    assert len(v) == 60 and len(t) == min(150, len(test) - 60) and not set(t) & set(v)
    assert len(set(test.labels["class"][v])) >= 8  # not the first 60 of a class-sorted list
    again = cmma.eval_subsets(cfg, test, valid)
    assert np.array_equal(t, again[0]) and np.array_equal(v, again[1])


def test_figure_base_is_the_training_mode_and_edit_reads_the_faces_own_attributes():
    cfg = cmma.resolve_defaults(cmma.Config(data_dir=CELEBA))
    names, attributes = data.read_celeba_attributes(os.path.join(CELEBA, "list_attr_celeba.txt"))
    train = cmma.load_split(cfg, "train", verbose=False)
    base, off, on = cmma.attribute_levels(cfg, train.labels["attributes"])
    expected = (train.labels["attributes"].mean(0) > 0.5).astype(np.float32)
    assert np.array_equal(base, expected) and base[names.index("No_Beard")] == 1 and base[names.index("Young")] == 1
    assert (off == 0).all() and (on == 1).all()
    plain, _ = cmma.pick_faces(cfg, train, names)  # Fig. 6 edits men (its Mustache row), none with a row attribute
    rows = [names.index(n) for n in cmma.FIG6_ROWS if n]
    assert len(plain) == 6 and (train.labels["attributes"][plain, names.index("Male")] == 1).all()
    assert (train.labels["attributes"][plain][:, rows] == 0).all()
    face = os.path.join(CELEBA, "img_align_celeba", "000002.jpg")
    assert np.array_equal(cmma.own_attributes(cfg, face), attributes["000002.jpg"])
    assert cmma.own_attributes(cfg, "elsewhere/me.jpg") is None


def test_tune_grid_lists_every_combination_and_refuses_unknown_settings():
    import tune_cgan
    grid = tune_cgan.tune_grid("lr=1e-4,1e-3;init_std=0,0.02")
    assert grid == [{"lr": 1e-4, "init_std": 0.0}, {"lr": 1e-4, "init_std": 0.02},
                    {"lr": 1e-3, "init_std": 0.0}, {"lr": 1e-3, "init_std": 0.02}]
    with pytest.raises(ValueError, match="unknown setting 'beta'"):
        tune_cgan.tune_grid("beta=1,2")
    with pytest.raises(ValueError, match="NAME=number"):
        tune_cgan.tune_grid("lr=fast")


def test_cgan_losses_are_the_non_saturating_bce_written_out_and_g_pushes_d_up():
    """Mirza & Osindero's CGAN: d_loss = softplus(-D(x)) + softplus(D(fake)), g_loss =
    softplus(-D(fake)) (target 1: G is scored as if its fakes were real), and G's gradient raises
    D's score of its fakes. A discriminator whose logit is the mean pixel makes every value exact."""
    class MeanPixel(torch.nn.Module):
        def forward(self, x, y):
            return x.flatten(1).mean(1)
    x, y = torch.full((2, 3, 4, 4), 0.8), torch.zeros(2, 5)
    fake = torch.full((2, 3, 4, 4), 0.3, requires_grad=True)
    d_loss, g_loss = cmma.gan_losses(MeanPixel(), x, y, fake)
    softplus = lambda v: math.log1p(math.exp(v))
    assert d_loss.item() == pytest.approx(softplus(-0.8) + softplus(0.3), abs=1e-6)
    assert g_loss.item() == pytest.approx(softplus(-0.3), abs=1e-6)
    g_loss.backward()
    assert (fake.grad < 0).all()  # descending g_loss brightens the fakes, which D scores higher


def test_d_projection_adds_the_class_row_of_v_dotted_with_the_features():
    """Miyato & Koyama's projection (eq. 3): logit(x, y) = out([phi(x, y), y]) + y^T V phi(x, y).
    With y one-hot, the term is V's column for the class dotted with phi: written out here from
    D's own parts, and absent without the flag (the same weights give the plain logit)."""
    torch.manual_seed(0)
    d = cmma.Discriminator(1, 32, 10, width=0.25, projection=True)
    x, y = torch.rand(4, 1, 32, 32), torch.eye(10)[[0, 3, 3, 9]]
    phi = d.features(x, y)
    plain = d.out(torch.cat([phi, y], 1)).squeeze(1)
    expected = plain + torch.stack([d.project.weight[:, c] @ phi[i] for i, c in enumerate([0, 3, 3, 9])])
    assert torch.allclose(d(x, y), expected, atol=1e-5)
    assert not torch.allclose(d(x, y), plain, atol=1e-3)
    without = cmma.Discriminator(1, 32, 10, width=0.25)
    without.load_state_dict({k: v for k, v in d.state_dict().items() if not k.startswith("project")})
    assert torch.allclose(without(x, y), plain, atol=1e-6)
    cfg = cmma.resolve_defaults(cmma.Config(dataset="mnist", model="cgan", image_size=32, width=0.25, channels=1,
                                            d_projection=True, init_std=0.02))
    gan = cmma.CGAN(cfg, 10)
    # the tuned weight scale (sec. 4.4) is the paper's layers'; V, ours, keeps PyTorch's U(+-1/sqrt(10)) init
    assert gan.discriminator.out.weight.std().item() == pytest.approx(0.02, rel=0.5)
    assert gan.discriminator.project.weight.std().item() == pytest.approx(1 / math.sqrt(30), rel=0.2)


def test_cgan_tuning_scores_candidates_on_the_validation_faces_never_the_test_faces(monkeypatch):
    """Sec. 4.4 chooses the CGAN's settings on the validation set: validation_parzen hands the
    validation subset of eval_faces to the Parzen scores, not the test subset."""
    import tune_cgan
    seen = []
    test_xy, valid_xy = (torch.zeros(2, 1), torch.zeros(2, 1)), (torch.ones(3, 1), torch.ones(3, 1))
    monkeypatch.setattr(cmma, "eval_faces", lambda cfg, device: (test_xy, valid_xy, None))
    monkeypatch.setattr(cmma, "parzen_scores", lambda model, x, y, k, sigmas: seen.append(x) or torch.tensor([1.0, 2.0]))
    assert tune_cgan.validation_parzen(cmma.Config(dataset="mnist"), None, torch.device("cpu")) == 2.0
    assert len(seen) == 1 and seen[0] is valid_xy[0]


def test_gaussian_log_likelihood_matches_normal_log_prob():
    torch.manual_seed(2)
    x, mu, logvar = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    expected = Normal(mu, (0.5 * logvar).exp()).log_prob(x).flatten(1).sum(1)
    assert torch.allclose(cmma.gaussian_log_likelihood(x, mu, logvar), expected, atol=1e-4)
    no_const = cmma.gaussian_log_likelihood(x, mu, logvar, with_constant=False)
    assert torch.allclose(no_const - expected, torch.full((3,), 0.5 * math.log(2 * math.pi) * 32), atol=1e-4)


def test_gan_optimizer_adam_gives_g_and_d_dcgans_adam_and_the_vaes_keep_adagrad():
    """--gan-optimizer adam: the CGAN's G at --lr and D at --lr-d each get Adam with betas (0.5,
    0.999) over their own parameters only; the default (and every VAE) keeps the paper's Adagrad."""
    cfg = cmma.resolve_defaults(cmma.Config(dataset="mnist", image_size=32, width=0.25, latent_dim=8, attributes=10,
                                            model="cgan", gan_optimizer="adam", lr=2e-4, lr_d=1e-4))
    model = cmma.build_model(cfg, 10)
    opt = cmma.make_optimizers(model, cfg)
    for name, net, lr in (("generator", model.generator, 2e-4), ("discriminator", model.discriminator, 1e-4)):
        assert isinstance(opt[name], torch.optim.Adam) and opt[name].defaults["betas"] == (0.5, 0.999)
        assert opt[name].defaults["lr"] == lr
        assert {id(p) for g in opt[name].param_groups for p in g["params"]} == {id(p) for p in net.parameters()}
    default = dataclasses.replace(cfg, gan_optimizer="adagrad")
    assert all(isinstance(o, torch.optim.Adagrad) for o in cmma.make_optimizers(model, default).values())
    vae = cmma.resolve_defaults(dataclasses.replace(cfg, model="cmma"))
    assert isinstance(cmma.make_optimizers(cmma.build_model(vae, 10), vae)["model"], torch.optim.Adagrad)


def test_kl_weight_scales_only_the_kl_in_the_training_loss():
    """--kl-weight w trains on -(log p(x|z) - w KL): CMMA's prior network f enters the loss only
    through the KL (eq. 7), so its gradient is 0 at w = 0 and exactly doubles from w = 1 to 2,
    while the decoder g, which only log p(x|z) reaches, keeps the same gradient (same z draw)."""
    x, y = torch.rand(4, 3, 64, 64), torch.randint(0, 2, (4, 40)).float()
    grads = {}
    for w in (0.0, 1.0, 2.0):
        cfg, model = small_model(kl_weight=w)  # .grad keeps the gradient the step used
        model.train()
        torch.manual_seed(1)
        cmma.train_step(model, cmma.make_optimizers(model, cfg), common.make_grad_scaler(torch.device("cpu"), False),
                        [(x, y)], cfg, torch.device("cpu"))
        grads[w] = (torch.cat([p.grad.flatten() for p in model.f.parameters()]),
                    torch.cat([p.grad.flatten() for p in model.g.parameters()]))
    assert grads[0.0][0].abs().max() == 0 and grads[1.0][0].abs().max() > 0
    assert torch.allclose(grads[2.0][0], 2 * grads[1.0][0], rtol=1e-4, atol=1e-7)
    assert torch.allclose(grads[2.0][1], grads[1.0][1], rtol=1e-4, atol=1e-6)
