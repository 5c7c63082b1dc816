import json
import math
import os

import numpy as np
import pytest
import torch

import common
import data
import disentangled_vae as dv

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MNIST = os.path.join(ROOT, "tests", "data", "mnist")
IDENTITIES = os.path.join(ROOT, "tests", "data", "celeba_identities")
CELEBA = os.path.join(ROOT, "tests", "data", "celeba")


def test_lgm_loss_matches_a_direct_computation():
    torch.manual_seed(0)
    K, D, B = 4, 3, 6
    z, mu, logvar = torch.randn(B, D), torch.randn(K, D), 0.5 * torch.randn(K, D)
    c = torch.tensor([0, 1, 2, 3, 1, 0])
    for margin in (0.0, 0.1):
        t = dv.lgm_loss(z, c, mu, logvar, margin=margin, lambda_lkd=0.1)
        l_cls = l_lkd = 0.0
        for i in range(B):
            var = logvar.exp()
            d = [0.5 * float(((z[i] - mu[k]) ** 2 / var[k]).sum()) for k in range(K)]
            logdet = [float(logvar[k].sum()) for k in range(K)]
            scores = [math.exp(-(1 + margin * (k == c[i])) * d[k] - 0.5 * logdet[k]) for k in range(K)]
            l_cls -= math.log(scores[c[i]] / sum(scores))
            # -log N(z; mu_c, Sigma_c) without the 2 pi constant
            log_density = torch.distributions.Normal(mu[c[i]], var[c[i]].sqrt()).log_prob(z[i]).sum().item()
            l_lkd -= log_density + 0.5 * D * math.log(2 * math.pi)
        assert t["L_cls"].item() == pytest.approx(l_cls / B, rel=1e-5)
        assert t["L_lkd"].item() == pytest.approx(l_lkd / B, rel=1e-5)
        assert t["L_GM"].item() == pytest.approx((l_cls + 0.1 * l_lkd) / B, rel=1e-5)


def test_mixture_samples_have_the_class_mean_and_covariance():
    torch.manual_seed(0)
    prior = dv.GaussianMixturePrior(3, 2)
    prior.set_logvar(torch.tensor([[0.0, -2.0], [1.0, 0.5], [-1.0, 0.0]]))
    c = torch.full((200_000,), 1)
    z = prior.sample(c)
    assert torch.allclose(z.mean(0), prior.mu[1].detach(), atol=0.02)
    cov = torch.cov(z.T)
    assert torch.allclose(cov.diagonal(), torch.tensor([math.e, math.exp(0.5)]), rtol=0.02)
    assert abs(cov[0, 1].item()) < 0.02  # diagonal Sigma


def tiny(**kw):
    """A small MNIST model at the paper's reading (q(z_s|x) a point, KL and adversary weights 1,
    Sigma's lr the code's, one adversary step) unless kw says otherwise."""
    kw = {"z_s_posterior": "point", "kl_weight": 1.0, "adv_weight": 1.0, "sigma_lr_scale": 1.0, "c_steps": 1, **kw}
    cfg = dv.resolve_defaults(dv.Config(dataset="mnist", z_s_dim=4, z_u_dim=6, **kw))
    torch.manual_seed(0)
    return cfg, dv.DisentangledVAE(cfg, 10).eval()


def test_figure_shapes():
    cfg, model = tiny()
    g = torch.Generator().manual_seed(0)
    x, c = torch.rand(3, 1, 28, 28) * 2 - 1, torch.tensor([1, 2, 3])
    assert dv.swap_grid(model, (x, c), (x[:2], c[:2])).shape == (4 * 3, 1, 28, 28)
    assert dv.interpolate_z_s(model, [0, 1], 5, g, "cpu").shape == (10, 1, 28, 28)
    assert dv.interpolate_z_u(model, [0, 1, 2], 4, g, "cpu").shape == (12, 1, 28, 28)
    assert dv.inpaint(model, x, c, ["right_half", "eyes"]).shape == (3 * 5, 1, 28, 28)
    assert dv.class_samples(model, [0, 9], 3, g, "cpu").shape == (6, 1, 28, 28)


def test_swap_grid_takes_z_s_from_rows_and_z_u_from_columns():
    cfg, model = tiny()
    x, c = torch.rand(3, 1, 28, 28) * 2 - 1, torch.tensor([1, 2, 3])
    grid = dv.swap_grid(model, (x[:2], c[:2]), (x[1:], c[1:])).view(3, 3, 1, 28, 28)
    with torch.no_grad():
        expected = model.decode(model.code_s(x[1:2]), model.encode_u(x[2:3])[0])  # row image 1, column image 2
    assert torch.allclose(grid[2, 2], expected[0], atol=1e-5)
    assert torch.equal(grid[0, 1:], x[1:]) and torch.equal(grid[1:, 0], x[:2])


def test_inpainting_keeps_the_visible_pixels():
    cfg, model = tiny()
    x, c = torch.rand(2, 1, 28, 28) * 2 - 1, torch.tensor([0, 1])
    out = dv.inpaint(model, x, c, ["bottom_half"]).view(2, 3, 1, 28, 28)
    assert torch.equal(out[:, 2, :, :14], x[:, :, :14])  # top half kept
    assert torch.equal(out[:, 1, :, 14:], torch.zeros_like(x[:, :, 14:]))  # hidden half shown grey


class NoStep:
    def step(self):
        pass


def test_stage2_step_routes_each_objective_to_its_own_networks(monkeypatch):
    """stage2_step itself, on a tiny model with z_u = mu_u (no noise): each group's .grad must be
    the gradient of its own objective, written out here from the paper's equations:
    E_u: 10 L_rec + L_KL (eq. 3, averaged over dims) + L_adv (eq. 5, C fooled: uniform target);
    E_s: 10 L_rec + L_lkd; G: 10 L_rec + L_GD; C: L_C on detached z_u; Dis: L_Dis."""
    cfg, model = tiny()
    model.train()
    monkeypatch.setattr(common, "reparameterize", lambda mu, logvar: mu)
    x, c = torch.rand(4, 1, 28, 28) * 2 - 1, torch.tensor([0, 1, 2, 3])
    captured = {}

    def forward(model_, x_, c_, cfg_):
        captured.update(dv.stage2_losses(model_, x_, c_, cfg_))
        return captured
    groups = model.groups()
    dv.stage2_step(model, {name: NoStep() for name in groups}, [(x, c)], cfg, torch.device("cpu"), forward)
    got = {name: [p.grad.clone() for p in ps] for name, ps in groups.items()}

    mu_u, logvar_u = model.encode_u(x)
    z_s = model.encoder_s(x)
    l_rec = (model.decode(z_s, mu_u) - x).pow(2).mean()
    l_kl = (0.5 * (mu_u ** 2 + logvar_u.exp() - 1 - logvar_u).sum(1)).mean() / cfg.z_u_dim
    l_adv = -torch.log_softmax(model.classifier(mu_u), 1).mean()           # CE against 1/K
    l_c = torch.nn.functional.cross_entropy(model.classifier(mu_u.detach()), c)
    mu, logvar = model.prior.mu.detach(), model.prior.raw.detach()  # log Sigma, unclamped here
    l_lkd = (0.5 * ((z_s - mu[c]) ** 2 / logvar[c].exp()).sum(1) + 0.5 * logvar[c].sum(1)).mean()

    def check(name, loss):
        want = torch.autograd.grad(loss, groups[name], retain_graph=True, allow_unused=True)
        for g, w in zip(got[name], want):
            w = torch.zeros_like(g) if w is None else w
            assert torch.allclose(g, w, atol=1e-5, rtol=1e-4), name
    check("encoder_u", 10 * l_rec + l_kl + l_adv)
    check("encoder_s", 10 * l_rec + l_lkd)
    check("classifier", l_c)
    # G and Dis see prior samples drawn inside the step: their objectives are the step's own
    # L_GD and L_Dis, and G's gradient must hold L_GD on top of the reconstruction
    check("decoder", 10 * captured["L_rec"] + captured["L_GD"])
    check("discriminator", captured["L_Dis"])
    assert torch.allclose(captured["L_rec"], l_rec) and torch.allclose(captured["L_KL"], l_kl)


def test_feature_matching_is_the_squared_distance_of_batch_means_per_class():
    real = torch.tensor([[1.0, 2.0], [3.0, 4.0], [10.0, 0.0], [0.0, 0.0]])
    fake = torch.tensor([[0.0, 0.0], [0.0, 2.0], [4.0, 4.0], [6.0, 0.0]])
    # all four: means (3.5, 1.5) vs (2.5, 1.5) -> ((1)^2 + 0^2) / 2
    assert dv.feature_matching(real, fake).item() == pytest.approx(0.5)
    # class 0 = rows 0, 1: (2, 3) vs (0, 1) -> (4 + 4) / 2 = 4; class 1 = rows 2, 3: (5, 0) vs (5, 2) -> 2
    assert dv.feature_matching(real, fake, torch.tensor([0, 0, 1, 1])).item() == pytest.approx(3.0)


def test_the_baseline_encoder_reads_the_label_and_each_loss_reaches_its_own_networks():
    """The cvae-gan (Bao et al.'s CVAE-GAN): E_u(x, c); the image classifier learns only L_aux (its cross-entropy on real
    images); E_u takes 10 L_rec + L_KL + L_pair, G that plus the feature matching L_GD, Dis L_Dis."""
    cfg, model = tiny(model="cvae-gan")
    x, c = torch.rand(4, 1, 28, 28) * 2 - 1, torch.tensor([0, 1, 1, 3])
    with pytest.raises(ValueError, match="pass c"):
        model.encode_u(x)
    assert not torch.allclose(model.encode_u(x, c)[0], model.encode_u(x, (c + 1) % 10)[0])
    model.train()
    captured = {}

    def forward(model_, x_, c_, cfg_):
        captured.update(dv.stage2_losses(model_, x_, c_, cfg_))
        return captured
    groups = model.groups()
    assert set(groups) == {"encoder_u", "decoder", "discriminator", "image_classifier"}
    dv.stage2_step(model, {name: NoStep() for name in groups}, [(x, c)], cfg, torch.device("cpu"), forward)
    got = {name: [p.grad.clone() for p in ps] for name, ps in groups.items()}

    def check(name, loss):
        want = torch.autograd.grad(loss, groups[name], retain_graph=True, allow_unused=True)
        for g, w in zip(got[name], want):
            assert torch.allclose(g, torch.zeros_like(g) if w is None else w, atol=1e-5, rtol=1e-4), name
    l_aux = torch.nn.functional.cross_entropy(model.image_classifier(x)[0], c)
    assert torch.allclose(captured["L_aux"], l_aux)
    check("image_classifier", l_aux)
    check("encoder_u", 10 * captured["L_rec"] + captured["L_KL"] + captured["L_pair"])
    check("decoder", 10 * captured["L_rec"] + captured["L_pair"] + captured["L_GD"])
    check("discriminator", captured["L_Dis"])
    with pytest.raises(ValueError, match="needs the discriminator: drop --no-gan"):
        dv.resolve_defaults(dv.Config(dataset="mnist", model="cvae-gan", gan=False))


def test_uniform_cross_entropy_is_log_k_for_equal_logits_and_kl_is_per_dimension():
    assert dv.uniform_cross_entropy(torch.zeros(3, 7)).item() == pytest.approx(math.log(7))
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    expected = -np.mean(np.log(np.exp([2.0, 0.0, -1.0]) / np.exp([2.0, 0.0, -1.0]).sum()))
    assert dv.uniform_cross_entropy(logits).item() == pytest.approx(expected, rel=1e-6)
    cfg, model = tiny()
    mu_u = torch.tensor([[1.0, 0.0, 0.0, 0.0, 0.0, 2.0]])
    logvar_u = torch.tensor([[0.0, math.log(2.0), 0.0, 0.0, 0.0, 0.0]])
    # KL(N(mu, var) || N(0, 1)) = 1/2 (mu^2 + var - 1 - log var): 0.5 + 0.5 (1 - log 2) + 2, over 6 dims
    expected_kl = (0.5 + 0.5 * (1 - math.log(2.0)) + 2.0) / 6
    model.encode_u = lambda x, c=None: (mu_u, logvar_u)
    t = dv.stage2_losses(model, torch.zeros(1, 1, 28, 28), torch.tensor([0]), cfg)
    assert t["L_KL"].item() == pytest.approx(expected_kl, rel=1e-5)


def test_class_samples_draw_z_s_with_the_class_covariance():
    _, model = tiny()
    with torch.no_grad():
        model.prior.set_logvar(torch.cat([model.prior.params()[1][:2], torch.tensor([[-1.0, 0.0, 0.5, 1.0]]),
                                          model.prior.params()[1][3:]]))
    seen = {}
    model.decode = lambda z_s, z_u: seen.update(z_s=z_s, z_u=z_u) or z_s
    dv.class_samples(model, [2], 20_000, torch.Generator().manual_seed(0), "cpu")
    assert torch.allclose(seen["z_s"].mean(0), model.prior.mu[2].detach(), atol=0.05)
    assert torch.allclose(seen["z_s"].var(0), torch.tensor([-1.0, 0.0, 0.5, 1.0]).exp(), rtol=0.05)
    assert torch.allclose(seen["z_u"].var(0), torch.ones(6), rtol=0.05)


def test_celeba_identities_reader_keeps_frequent_identities(tmp_path):
    train = data.load_celeba_identities(CELEBA, "train", 32, None, str(tmp_path), min_images=4, verbose=False)
    test = data.load_celeba_identities(CELEBA, "test", 32, None, str(tmp_path), min_images=4, verbose=False)
    ids = dict(line.split() for line in open(os.path.join(CELEBA, "identity_CelebA.txt")))
    counts = np.unique(list(ids.values()), return_counts=True)
    assert len(train.names["class"]) == (counts[1] >= 4).sum()
    assert set(train.files).isdisjoint(test.files)
    assert set(test.labels["class"]) == set(train.labels["class"])  # every identity in both splits
    for f, k in zip(train.files + test.files, list(train.labels["class"]) + list(test.labels["class"])):
        assert ids[f] == train.names["class"][k]
    with pytest.raises(ValueError, match="--min-class-images"):
        data.load_celeba_identities(CELEBA, "train", 32, None, str(tmp_path), min_images=1000, verbose=False)


def rows(out):
    return common.read_jsonl(os.path.join(out, "metrics.jsonl"))


def test_mnist_run_losses_fall_then_eval_and_figures(tmp_path, capsys):
    out = str(tmp_path / "mnist")
    dv.main(["--dataset", "mnist", "--data-dir", MNIST, "--out", out, "--steps", "12", "--batch-size", "16",
             "--z-s-dim", "8", "--z-u-dim", "16", "--log-every", "4", "--bn-momentum", "0.1", "--eval-images", "200",
             "--bn-images", "320", "--diversity-classes", "2", "--diversity-samples", "4"])
    r = rows(out)
    assert r[-1]["L_rec"] < 0.7 * r[0]["L_rec"] and r[-1]["L_GM"] < r[0]["L_GM"]
    result = json.load(open(os.path.join(out, "eval.json")))
    assert result["acc_z_s_nearest_component"] > 0.5  # 10 classes: chance is 0.1
    assert 0 <= result["ms_ssim_within_class"] <= 1 and result["active_units_z_u"] <= 16
    # 200 stratified held-out digits hold every class (the first 200 of the class-sorted split would not)
    assert result["classes_present"] == 10 and result["chance_accuracy"] == pytest.approx(0.1)
    assert 0 < result["majority_accuracy"] < 0.2
    for name in ("samples_per_class", "fig4a_interpolate_z_s", "fig4b_interpolate_z_u", "fig6_swap", "fig7_inpainting"):
        assert os.path.exists(os.path.join(out, "figures", name + ".png"))


def test_identity_folder_run_baseline_and_comparison(tmp_path, capsys, tiny_extractor):
    tiny_faces = ["--dataset", "folder", "--data-dir", IDENTITIES, "--filters", "8", "--image-size",
                  "32", "--z-s-dim", "16", "--z-u-dim", "16", "--batch-size", "8", "--log-every", "10",
                  "--bn-momentum", "0.1", "--diversity-classes", "2", "--diversity-samples", "3"]
    ours, base = str(tmp_path / "ours"), str(tmp_path / "base")
    dv.main(tiny_faces + ["--out", ours, "--steps", "30"])
    dv.main(tiny_faces + ["--out", base, "--steps", "90", "--model", "cvae-gan"])  # one batch a step, not 3
    r = rows(ours)
    assert r[-1]["L_rec"] < r[0]["L_rec"] and r[-1]["L_GM"] < r[0]["L_GM"]
    assert np.mean([row["L_rec"] for row in rows(base)[-3:]]) < rows(base)[0]["L_rec"]
    capsys.readouterr()
    dv.main(["eval", "--checkpoint", f"{ours}/checkpoint.pt,{base}/checkpoint.pt"])
    table = capsys.readouterr().out
    assert "lr-livae" in table and "cvae-gan" in table and "ms_ssim_within_class" in table
    import fidelity
    for run in (ours, base):
        fidelity.main(["disentangled_vae", "--checkpoint", run, "--kid", "--feature-extractor", tiny_extractor,
                       "--fidelity-samples", "40"])
        result = json.load(open(os.path.join(run, "fidelity.json")))
        assert "class frequencies" in result["samples"]["labels"] and result["kid"]["subset_size"] == min(40, result["real"]["images"])
    assert os.path.exists(os.path.join(base, "figures", "fig7_inpainting.png"))


def test_toy_run_resumes_exactly(tmp_path):
    toy = ["--dataset", "toy", "--toy-points", "100", "--batch-size", "16", "--log-every", "5", "--eval-images", "30"]
    whole, split = str(tmp_path / "whole"), str(tmp_path / "split")
    dv.main(toy + ["--out", whole, "--steps", "12"])
    dv.main(toy + ["--out", split, "--steps", "5"])
    dv.main(toy + ["--out", split, "--steps", "12"])
    a = torch.load(os.path.join(whole, "checkpoint.pt"), weights_only=False)["models"]["model"]
    b = torch.load(os.path.join(split, "checkpoint.pt"), weights_only=False)["models"]["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert os.path.exists(os.path.join(whole, "figures", "fig2_toy.png"))


def test_bad_flags_are_named():
    with pytest.raises(ValueError, match="--image-size 28"):
        dv.resolve_defaults(dv.Config(dataset="mnist", image_size=32))
    with pytest.raises(ValueError, match="multiple of 32"):
        dv.resolve_defaults(dv.Config(dataset="folder", image_size=48))


def test_mixture_moments_are_the_mean_and_variance_of_the_whole_mixture():
    torch.manual_seed(0)
    prior = dv.GaussianMixturePrior(3, 2)
    prior.set_logvar(torch.tensor([[0.0, -2.0], [1.0, 0.5], [-1.0, 0.0]]))
    mu_bar, var_bar = dv.mixture_moments(prior)
    k = torch.randint(3, (300_000,))          # draw from the mixture: a component, then its Gaussian
    z = prior.sample(k)
    assert torch.allclose(mu_bar, z.mean(0), atol=0.01) and torch.allclose(var_bar, z.var(0), rtol=0.02)


def test_unseen_classes_are_held_out_of_training_then_finetuned_without_labels(tmp_path, capsys):
    toy = ["--dataset", "toy", "--toy-points", "100", "--batch-size", "16", "--log-every", "5", "--eval-images", "30"]
    out = str(tmp_path / "toy")
    dv.main(toy + ["--out", out, "--steps", "8", "--unseen-classes", "right"])
    trained = torch.load(os.path.join(out, "checkpoint.pt"), weights_only=False)
    assert trained["extra"]["class_names"] == ["left", "middle"] and trained["extra"]["n_classes"] == 2
    dv.main(["finetune", "--checkpoint", os.path.join(out, "checkpoint.pt"), "--finetune-steps", "6"])
    tuned = torch.load(os.path.join(out, "finetune", "checkpoint.pt"), weights_only=False)
    assert tuned["extra"]["finetuned_on"] == ["right"]
    before, after = trained["models"]["model"], tuned["models"]["model"]
    for k in before:   # the mixture and C keep their training; E_s, E_u and G learn the new class
        same = torch.equal(before[k], after[k])
        if k.startswith(("prior.", "classifier.")):
            assert same, k
    assert not all(torch.equal(before[k], after[k]) for k in before if k.startswith("encoder_s."))
    cfg = dv.resolve_defaults(dv.Config(dataset="toy", toy_points=100, unseen_classes="right"))
    seen, unseen = dv.load_split(cfg, "train"), dv.load_split(cfg, "train", which="unseen")
    assert set(seen.labels["class"]) == {0, 1} and set(unseen.labels["class"]) == {0}
    assert len(seen) + len(unseen) == len(dv.load_split(dv.resolve_defaults(dv.Config(dataset="toy", toy_points=100)),
                                                         "train"))
    with pytest.raises(ValueError, match="--unseen-classes up: not classes of this data set"):
        dv.load_split(dataclasses_replace(cfg, unseen_classes="up"), "train")
    plain = str(tmp_path / "plain")   # a run without unseen classes has nothing to finetune on
    dv.main(toy + ["--out", plain, "--steps", "2"])
    with pytest.raises(SystemExit):
        dv.main(["finetune", "--checkpoint", os.path.join(plain, "checkpoint.pt")])
    assert "--unseen-classes" in capsys.readouterr().err


def dataclasses_replace(cfg, **kw):
    import dataclasses
    return dataclasses.replace(cfg, **kw)


def test_face_part_masks_follow_the_crop_in_use():
    # at the default crop (50, 25, 128, 128) the eyes box is rows 96-124, columns 40-138 of the source
    top, bottom, left, right = dv.mask_box("eyes", dv.CELEBA_CROP)
    assert (top, bottom) == pytest.approx(((96 - 50) / 128, (124 - 50) / 128))
    assert (left, right) == pytest.approx(((40 - 25) / 128, (138 - 25) / 128))
    # a looser crop puts the same source pixels at other fractions of the image
    top2, bottom2, left2, right2 = dv.mask_box("eyes", (40, 19, 140, 140))
    assert top2 == pytest.approx((96 - 40) / 140) and left2 == pytest.approx((40 - 19) / 140)
    assert dv.mask_box("right_half", (40, 19, 140, 140)) == (0.0, 1.0, 0.5, 1.0)   # halves stay halves
    m = dv.mask_for("eyes", (1, 3, 128, 128), "cpu", dv.CELEBA_CROP)
    assert m[0, 0, 96 - 50, 40 - 25] == 0 and m[0, 0, 96 - 50 - 1, 40 - 25] == 1 and m.sum() == 128 * 128 - 28 * 98


def test_eval_bn_batch_keeps_the_codes_batchnorm_in_training_mode_without_touching_its_statistics():
    x = torch.rand(6, 1, 28, 28) * 2 - 1
    for mode in ("population", "batch"):
        cfg, model = tiny(eval_bn=mode)
        model.train()
        dv.evaluation_mode(cfg, model)
        norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        before = [m.running_mean.clone() for m in norms]
        with torch.no_grad():
            alone, together = model.encode_u(x[:2])[0], model.encode_u(x)[0][:2]
        assert all(torch.equal(b, m.running_mean) for b, m in zip(before, norms))
        # population statistics: an image's code does not depend on its batch; batch statistics: it does
        assert torch.allclose(alone, together, atol=1e-5) == (mode == "population"), mode


def test_traversal_ranks_z_u_dimensions_by_their_effect():
    cfg, model = tiny()
    x, c = torch.rand(3, 1, 28, 28) * 2 - 1, torch.tensor([1, 2, 3])
    with torch.no_grad():   # make z_u dim 4 the only one the decoder reads, then dim 1 weakly
        first = next(m for m in model.decoder.modules() if isinstance(m, torch.nn.Linear))
        first.weight[:, cfg.z_s_dim:] = 0
        first.weight[:, cfg.z_s_dim + 4] = 1.0
        first.weight[:, cfg.z_s_dim + 1] = 0.1
    effects = dv.z_u_effects(model, x, c)
    assert effects.argmax().item() == 4 and effects[1] > effects[0] == 0
    images, dims = dv.traverse_z_u(model, x, c, top=2, steps=5)
    assert dims == [4, 1] and images.shape == (10, 1, 28, 28)
    assert not torch.allclose(images[0], images[4])     # the sweep changes the image


def test_batch_size_zero_is_a_flag_error_not_a_division():
    for dataset in ("mnist", "toy"):
        with pytest.raises(ValueError, match="--batch-size must be >= 2"):  # BatchNorm needs two
            dv.resolve_defaults(dv.Config(dataset=dataset, batch_size=0))


def test_a_folder_of_one_class_is_refused_for_a_label_conditioned_model(tmp_path):
    from PIL import Image
    (tmp_path / "only").mkdir()
    for i in range(3):
        Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(tmp_path / "only" / f"{i}.jpg")
    cfg = dv.resolve_defaults(dv.Config(dataset="folder", data_dir=str(tmp_path), image_size=32,
                                        cache_dir=str(tmp_path / "cache")))
    with pytest.raises(ValueError, match="needs at least 2"):
        dv.load_all_classes(cfg, "train", verbose=False)


def test_hinge_losses_score_real_as_real_and_both_fakes_as_fake():
    """Eq. 10-11, hinge form, on hand-picked scores: L_Dis = E relu(1 - D(x)) + E relu(1 + D(x_hat))
    + E relu(1 + D(x_tilde)) = 0.25 + 0.9 + 1.25; L_GD = -E D(x_hat) - E D(x_tilde) = 0.1 + 0.25."""
    d_real, d_rec, d_gen = torch.tensor([0.5, 2.0]), torch.tensor([-0.5, 0.3]), torch.tensor([-2.0, 1.5])
    l_dis, l_gd = dv.hinge_losses(d_real, d_rec, d_gen)
    assert l_dis.item() == pytest.approx(2.4) and l_gd.item() == pytest.approx(0.35)


def test_stage1_trains_the_mixture_means_and_variances_with_e_s():
    """Stage 1 (sec. 3.5) steps L_GM on E_s, mu_k and Sigma_k: the gradients reaching mu and
    Sigma's parameter (here the code's precision) are those of eq. 8-9 written out here, and
    nothing else moves."""
    cfg, model = tiny(sigma_param="precision")
    model.train()
    opts = dv.make_optimizers(model, cfg, torch.device("cpu"))
    x, c = torch.rand(6, 1, 28, 28) * 2 - 1, torch.tensor([0, 1, 2, 3, 4, 5])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    dv.stage1_step(model, opts, [(x, c)], cfg, torch.device("cpu"))
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert {"prior.mu", "prior.raw"} <= moved
    assert all(n.startswith(("encoder_s.", "prior.")) for n in moved), moved
    # the mixture's gradient is eq. 8-9's: L_cls + 0.1 L_lkd through mu and the code's precision
    # parameter v, Sigma = 1 / softplus(v) = 1 / log(1 + e^v)
    model.load_state_dict({n: before[n] for n in before}, strict=False)
    mu, raw = model.prior.mu, model.prior.raw
    logvar = -torch.log(torch.log1p(raw.exp()))
    z_s = model.encoder_s(x).detach()
    d = 0.5 * ((z_s[:, None] - mu[None]) ** 2 / logvar.exp()[None]).sum(-1)
    logits = -d - 0.5 * logvar.sum(-1)
    want = torch.nn.functional.cross_entropy(logits, c) + 0.1 * (d[torch.arange(6), c] + 0.5 * logvar[c].sum(1)).mean()
    g_mu, g_logvar = torch.autograd.grad(want, [mu, raw])
    for p in model.parameters():
        p.grad = None
    got = dv.lgm_loss(z_s, c, *model.prior.params(), cfg.margin, cfg.lambda_lkd)["L_GM"]
    got_mu, got_logvar = torch.autograd.grad(got, [model.prior.mu, model.prior.raw])
    assert torch.allclose(got_mu, g_mu, atol=1e-6) and torch.allclose(got_logvar, g_logvar, atol=1e-6)
    assert g_mu.abs().sum() > 0 and g_logvar.abs().sum() > 0


def test_sigma_learning_rate_rules_fall_with_the_epochs_never_rise():
    """Sigma's rules (code: x0.1 every 10 epochs; paper B.4: x0.01 from epoch 2; fixed), here with
    10 outer iterations per epoch and --sigma-lr-scale multiplying each."""
    rate = lambda rule, step, scale=1.0: dv.sigma_learning_rate(dv.Config(lr=1e-3, sigma_lr=rule, sigma_lr_scale=scale),
                                                                  step, 10)
    assert [rate("code", s) for s in (0, 99, 100, 200)] == pytest.approx([1e-3, 1e-3, 1e-4, 1e-5])
    assert [rate("paper", s) for s in (0, 19, 20, 500)] == pytest.approx([1e-3, 1e-3, 1e-5, 1e-5])
    assert [rate("fixed", s) for s in (0, 10_000)] == pytest.approx([1e-3, 1e-3])
    assert rate("code", 100, scale=10) == pytest.approx(1e-3)


def test_sigma_is_the_codes_softplus_precision_or_a_clamped_log_variance():
    """--sigma-param precision, the code's: s = softplus(v), v from 0.54 (s = 1.0), Sigma = 1 / s,
    samples mu + eps / sqrt(s), no clamp; the default logvar: log Sigma = v from 0, clamped to +-8."""
    prior = dv.GaussianMixturePrior(2, 3, "precision")
    assert torch.all(prior.raw == 0.54)
    s = torch.log1p(torch.exp(torch.tensor(0.54)))  # softplus written out
    assert s.item() == pytest.approx(1.0, abs=0.002)
    assert torch.allclose(prior.params()[1], -torch.log(s).expand(2, 3))
    with torch.no_grad():
        prior.raw.copy_(torch.tensor([[-20.0, 0.0, 3.0], [0.54, 1.0, 30.0]]))
    s = torch.log1p(torch.exp(prior.raw.detach()))
    assert torch.allclose(prior.params()[1], -torch.log(s), rtol=1e-5)  # unclamped: log Sigma ~ 20 at v = -20
    eps = torch.randn(2, 3)
    c = torch.tensor([0, 1])
    assert torch.allclose(prior.sample(c, eps), prior.mu.detach()[c] + eps / s.sqrt(), rtol=1e-5, atol=1e-6)
    want = torch.tensor([[-3.0, 0.0, 2.5], [1.0, -0.5, 0.1]])
    prior.set_logvar(want)
    assert torch.allclose(prior.params()[1], want, atol=1e-5)
    old = dv.GaussianMixturePrior(2, 3)
    assert torch.all(old.raw == 0)
    old.set_logvar(torch.tensor([[-9.0, 0.0, 9.0], [1.0, 2.0, 3.0]]))
    assert torch.equal(old.params()[1], torch.tensor([[-8.0, 0.0, 8.0], [1.0, 2.0, 3.0]]))  # the clamp


def test_a_checkpoint_from_before_sigma_param_loads_its_log_variance():
    """Checkpoints written before --sigma-param hold prior.logvar: it loads as the logvar mode's raw."""
    prior = dv.GaussianMixturePrior(2, 3)
    old = {"mu": torch.zeros(2, 3), "logvar": torch.tensor([[-1.0, 0.0, 1.0], [2.0, -2.0, 0.5]])}
    prior.load_state_dict(old)
    assert torch.equal(prior.params()[1], old["logvar"])


def test_finetune_saves_on_sigterm_resumes_exactly_and_a_finished_one_is_not_replaced(tmp_path, capsys, monkeypatch):
    import signal
    toy = ["--dataset", "toy", "--toy-points", "100", "--batch-size", "16", "--log-every", "5", "--eval-images", "30"]
    out = str(tmp_path / "toy")
    dv.main(toy + ["--out", out, "--steps", "4", "--unseen-classes", "right"])
    tune = ["finetune", "--checkpoint", out, "--finetune-steps", "6"]
    dv.main(tune)
    straight = torch.load(os.path.join(out, "finetune", "checkpoint.pt"), weights_only=False)
    with pytest.raises(SystemExit):
        dv.main(tune)  # a finished finetune is not replaced without --fresh
    assert "already holds a finetune of 6 steps: pass --fresh" in capsys.readouterr().err
    step = dv.stage2_step
    calls = []

    def terminated_at_3(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return step(*args, **kwargs)
    monkeypatch.setattr(dv, "stage2_step", terminated_at_3)
    with pytest.raises(SystemExit) as stop:
        dv.main(tune + ["--fresh"])
    assert stop.value.code == 143 and "stopped by SIGTERM at finetune step 3; checkpoint saved" in capsys.readouterr().out
    assert torch.load(os.path.join(out, "finetune", "checkpoint.pt"), weights_only=False)["step"] == 3
    monkeypatch.setattr(dv, "stage2_step", step)
    dv.main(tune)
    assert "resumed at step 3" in capsys.readouterr().out
    resumed = torch.load(os.path.join(out, "finetune", "checkpoint.pt"), weights_only=False)
    for k, v in straight["models"]["model"].items():
        assert torch.equal(v, resumed["models"]["model"][k]), k


@pytest.mark.parametrize("posterior", ["gaussian", "detached"])
def test_z_s_posterior_modes_give_e_s_their_own_objective(posterior, monkeypatch):
    """--z-s-posterior gaussian: E_s gives (m, log s); G decodes a draw of N(m, s) (here its mean:
    the noise is patched out) and E_s' stage-2 objective is 10 L_rec + KL(N(m, s) || N(mu_c,
    Sigma_c)), the KL from torch.distributions. detached: E_s gets L_lkd alone (no L_rec)."""
    cfg, model = tiny(z_s_posterior=posterior)
    model.train()
    monkeypatch.setattr(common, "reparameterize", lambda mu, logvar: mu)
    x, c = torch.rand(4, 1, 28, 28) * 2 - 1, torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        model.prior.raw.copy_(torch.randn_like(model.prior.raw) * 0.3)
    groups = model.groups()
    dv.stage2_step(model, {name: NoStep() for name in groups}, [(x, c)], cfg, torch.device("cpu"))
    got = [p.grad.clone() for p in groups["encoder_s"]]
    h = model.encoder_s(x)
    mu_u = model.encode_u(x)[0]
    mu, logvar = model.prior.mu.detach(), model.prior.raw.detach()
    if posterior == "gaussian":
        m, log_s = h.chunk(2, dim=1)
        assert torch.equal(model.code_s(x), m)
        q = torch.distributions.Normal(m, (0.5 * log_s).exp())
        p = torch.distributions.Normal(mu[c], (0.5 * logvar[c]).exp())
        want = 10 * (model.decode(m, mu_u) - x).pow(2).mean() + torch.distributions.kl_divergence(q, p).sum(1).mean()
    else:
        want = (0.5 * ((h - mu[c]) ** 2 / logvar[c].exp()).sum(1) + 0.5 * logvar[c].sum(1)).mean()
    for g, w in zip(got, torch.autograd.grad(want, groups["encoder_s"], allow_unused=True)):
        assert torch.allclose(g, torch.zeros_like(g) if w is None else w, atol=1e-5, rtol=1e-4)


def test_extra_adversary_steps_train_c_alone_on_the_batch_codes():
    cfg, model = tiny(c_steps=6)
    model.train()
    x, c = torch.rand(8, 1, 28, 28) * 2 - 1, torch.arange(8) % 4
    before = {k: v.clone() for k, v in model.state_dict().items() if not k.endswith(("running_mean", "running_var",
                                                                                        "num_batches_tracked"))}
    opt = torch.optim.Adam(model.classifier.parameters(), lr=1e-2)
    with torch.no_grad():
        mu = model.encode_u(x)[0]
    loss_before = torch.nn.functional.cross_entropy(model.classifier(mu), c).item()
    dv.adversary_steps(model, opt, [(x, c)], cfg)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("classifier.") for k in changed)
    assert torch.nn.functional.cross_entropy(model.classifier(mu), c).item() < loss_before


def test_defaults_are_the_measured_recipe_for_lr_livae_and_the_code_for_the_baseline():
    """Lr-LiVAE: q(z_s|x) Gaussian, KL and adversary weights 10, Sigma's lr x20 (x1 on the toy),
    one adversary step (the code's); the cVAE-GAN: the code's 1, 1, 1 and 1. An explicit value, 0
    included, is kept."""
    resolved = lambda **kw: dv.resolve_defaults(dv.Config(**kw))
    pick = lambda c: (c.z_s_posterior, c.kl_weight, c.adv_weight, c.sigma_lr_scale, c.c_steps)
    assert pick(resolved(dataset="mnist")) == ("gaussian", 10.0, 10.0, 20.0, 1)
    assert pick(resolved(dataset="folder")) == ("gaussian", 10.0, 10.0, 20.0, 1)
    assert pick(resolved(dataset="toy")) == ("gaussian", 10.0, 10.0, 1.0, 1)
    assert pick(resolved(dataset="mnist", model="cvae-gan")) == ("point", 1.0, 1.0, 1.0, 1)
    assert pick(resolved(dataset="mnist", z_s_posterior="point", kl_weight=0.0, adv_weight=0.0, sigma_lr_scale=2.0,
                         c_steps=5)) == ("point", 0.0, 0.0, 2.0, 5)


@pytest.mark.parametrize("posterior", ["gaussian", "point"])
def test_finetune_lkd_is_against_the_total_gaussian_for_either_posterior(posterior):
    """Sec. 3.6's L_lkd on unlabelled images, against N(mu_bar, var_bar): with a Gaussian q(z_s|x)
    the exact KL (torch.distributions), as stage 2 uses; with a point code -log N(z_s; mu_bar,
    var_bar) up to its constant."""
    cfg, model = tiny(z_s_posterior=posterior)
    x = torch.rand(5, 1, 28, 28) * 2 - 1
    mu_bar, var_bar = torch.randn(4), torch.rand(4) + 0.5
    torch.manual_seed(1)
    with torch.no_grad():
        t = dv.finetune_losses(model, x, cfg, mu_bar, var_bar)
        mean_s, logvar_s = model.encode_s(x)
    total = torch.distributions.Normal(mu_bar, var_bar.sqrt())
    if posterior == "gaussian":
        q = torch.distributions.Normal(mean_s, (0.5 * logvar_s).exp())
        expected = torch.distributions.kl_divergence(q, total).sum(1).mean()
    else:
        expected = -(total.log_prob(mean_s).sum(1) + 0.5 * 4 * math.log(2 * math.pi)).mean()
    assert t["L_lkd"].item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-5)


def test_stratified_subset_covers_every_class_of_a_class_sorted_split():
    labels = np.repeat(np.arange(10), 50)            # stored class by class, as split_per_class does
    index = dv.stratified_subset(labels, 30, seed=0)
    assert len(index) == 30 and (np.diff(index) > 0).all()
    assert (np.bincount(labels[index], minlength=10) == 3).all()
    assert np.array_equal(index, dv.stratified_subset(labels, 30, seed=0))
    assert not np.array_equal(index, dv.stratified_subset(labels, 30, seed=1))
    assert len(dv.stratified_subset(labels, 10_000, seed=0)) == 500
    uneven = np.array([0] * 5 + [1] * 100)
    assert np.bincount(uneven[dv.stratified_subset(uneven, 20, seed=0)]).tolist() == [5, 15]


def test_ms_ssim_is_one_for_identical_images_and_falls_with_noise():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 64, 64, generator=g)
    x = dv.gaussian_filter(torch.nn.functional.pad(x, (5, 5, 5, 5), mode="reflect"), 11, 3.0)  # smooth, in [0, 1]
    assert torch.allclose(dv.ms_ssim(x, x), torch.ones(2), atol=1e-6)
    scores = [dv.ms_ssim(x, (x + s * torch.randn(x.shape, generator=g)).clamp(0, 1)).mean().item()
              for s in (0.025, 0.1, 0.25)]
    assert 1 > scores[0] > scores[1] > scores[2] > 0


def flat(*values, side=64):
    return torch.tensor(values, dtype=torch.float32).view(1, -1, 1, 1).expand(1, len(values), side, side).clone()


def test_ms_ssim_of_a_constant_shift_is_the_closed_form_luminance_term():
    # flat images: every contrast-structure term is (0 + C2) / (0 + C2) = 1, so MS-SSIM is the
    # luminance term raised to the coarsest scale's weight (3 scales at 64 px), per channel
    c1 = 0.01 ** 2
    lum = lambda p, q: (2 * p * q + c1) / (p * p + q * q + c1)
    w = dv.MS_SSIM_WEIGHTS[2] / sum(dv.MS_SSIM_WEIGHTS[:3])
    # the [-1, 1] pair +-0.05 read in [0, 1]: 0.475 vs 0.525 is nearly the same grey
    assert dv.ms_ssim(flat(0.475), flat(0.525)).item() == pytest.approx(lum(0.475, 0.525) ** w, rel=1e-6)
    assert dv.ms_ssim(flat(0.475), flat(0.525)).item() > 0.99
    # channels are scored on their own and averaged (one identical channel, one shifted)
    got = dv.ms_ssim(flat(0.3, 0.6), flat(0.3, 0.2)).item()
    assert got == pytest.approx((1 + lum(0.6, 0.2) ** w) / 2, rel=1e-6)
    # 2 scales at 32 px
    w32 = dv.MS_SSIM_WEIGHTS[1] / sum(dv.MS_SSIM_WEIGHTS[:2])
    assert dv.ms_ssim(flat(0.2, side=32), flat(0.7, side=32)).item() == pytest.approx(lum(0.2, 0.7) ** w32, rel=1e-6)


def test_ms_ssim_of_an_11_pixel_image_is_ssim_computed_by_hand():
    # one scale and one 11x11 window: SSIM = (2 mu_a mu_b + C1)(2 cov + C2) / ((mu_a^2 + mu_b^2 + C1)(var_a + var_b + C2))
    # with Gaussian-weighted (sd 1.5) means, variances and covariance
    rng = np.random.default_rng(0)
    a, b = rng.random((11, 11)), rng.random((11, 11))
    t = np.arange(11) - 5.0
    w = np.exp(-t ** 2 / (2 * 1.5 ** 2))
    w = np.outer(w, w) / np.outer(w, w).sum()
    mu_a, mu_b = (w * a).sum(), (w * b).sum()
    var_a, var_b = (w * a * a).sum() - mu_a ** 2, (w * b * b).sum() - mu_b ** 2
    cov = (w * a * b).sum() - mu_a * mu_b
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    ssim = (2 * mu_a * mu_b + c1) * (2 * cov + c2) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    got = dv.ms_ssim(torch.tensor(a).view(1, 1, 11, 11), torch.tensor(b).view(1, 1, 11, 11)).item()
    assert got == pytest.approx(max(ssim, 0.0), rel=1e-5)
    b2 = 0.7 * a + 0.3 * b   # a related pair, for a value well above 0
    cov2 = (w * a * b2).sum() - mu_a * (w * b2).sum()
    mu_b2, var_b2 = (w * b2).sum(), (w * b2 * b2).sum() - (w * b2).sum() ** 2
    ssim2 = (2 * mu_a * mu_b2 + c1) * (2 * cov2 + c2) / ((mu_a ** 2 + mu_b2 ** 2 + c1) * (var_a + var_b2 + c2))
    assert ssim2 > 0.5
    assert dv.ms_ssim(torch.tensor(a).view(1, 1, 11, 11), torch.tensor(b2).view(1, 1, 11, 11)).item() == \
        pytest.approx(ssim2, rel=1e-5)


def test_eval_reads_the_adversary_on_mu_u_and_on_draws_of_q_z_u(tmp_path, monkeypatch):
    """eval.json's adversary accuracies: on mu_u, and on z_u = mu_u + sd eps (eq. 4's input), with
    sd = exp(logvar / 2). A planted C reads the nearest of 0, 1, 2 in z_u's first coordinate, and
    mu_u's first coordinate is the class: 1.0 on mu_u; on draws with sd 2, the chance that the
    noise keeps the nearest class, written out with torch.distributions (an sd of exp(logvar) = 4
    would give 0.40, mu_u itself 1.0)."""
    cfg = dv.resolve_defaults(dv.Config(dataset="toy", toy_points=1500, eval_images=900, out=str(tmp_path)))
    torch.manual_seed(0)
    model = dv.DisentangledVAE(cfg, 3).eval()

    class Nearest(torch.nn.Module):
        def forward(self, z):
            return -(z[:, :1] - torch.arange(3.0)) ** 2
    model.classifier = Nearest()

    def codes(model_, x, c, chunk=250):
        mu_u = torch.stack([c.float(), torch.zeros(len(c))], 1)
        return torch.zeros(len(c), cfg.z_s_dim), mu_u, torch.full_like(mu_u, math.log(4.0))
    monkeypatch.setattr(dv, "encode_all", codes)
    r = dv.evaluate_run(cfg, model, torch.device("cpu"))
    phi = torch.distributions.Normal(0.0, 2.0).cdf
    edge, middle = phi(torch.tensor(0.5)).item(), (phi(torch.tensor(0.5)) - phi(torch.tensor(-0.5))).item()
    assert r["acc_z_u_adversary"] == 1.0
    assert abs(r["acc_z_u_adversary_sampled"] - (2 * edge + middle) / 3) < 0.03  # 4,500 draws: SE 0.007


def test_a_checkpoint_of_the_removed_dcgan_face_networks_gets_one_clear_line(tmp_path, capsys):
    """A run trained with the former --arch dcgan cannot fit the VGG16-BN networks: evaluating or
    resuming it names the flag, not a damaged file."""
    run = tmp_path / "old"
    dv.main(["--dataset", "toy", "--toy-points", "50", "--steps", "1", "--out", str(run), "--log-every", "1"])
    state = torch.load(run / "checkpoint.pt", weights_only=False)
    state["config"]["arch"] = "dcgan"
    torch.save(state, run / "checkpoint.pt")
    with pytest.raises(ValueError, match="--arch dcgan"):
        dv.load_run(dv.Config(checkpoint=str(run)), set(), torch.device("cpu"))
    capsys.readouterr()
    with pytest.raises(SystemExit):
        dv.main(["--dataset", "toy", "--toy-points", "50", "--steps", "2", "--out", str(run)])
    assert "was trained with --arch dcgan" in capsys.readouterr().err
