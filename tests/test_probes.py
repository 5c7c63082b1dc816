"""benchmarks/probes.py: the probes, effect scores and biased-MMD floor that the claims read and
the papers do not report."""
import json
import os

import pytest
import torch

import common
import probes
import vlae

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_biased_mmd_floor_is_the_estimators_mean_when_q_equals_p():
    """Closed form (1/n + 1/m)(1 - (1 + 4/sigma2)^(-D/2)) against 400 draws of the estimator,
    and the hand values 0.0036 (D = 10) and 0.01 (D = 2) at n = m = 100."""
    assert probes.biased_mmd_floor(100, 100, 10) == pytest.approx(0.02 * (1 - 1.04 ** -5))
    assert probes.biased_mmd_floor(100, 100, 2) == pytest.approx(0.01)
    torch.manual_seed(0)
    for n, m, d in ((100, 100, 10), (50, 200, 2)):
        draws = torch.tensor([vlae.mmd(torch.randn(n, d), torch.randn(m, d)).item() for _ in range(400)])
        assert draws.mean().item() == pytest.approx(probes.biased_mmd_floor(n, m, d), rel=0.05)


def test_linear_probe_reads_a_linear_label_and_not_noise():
    torch.manual_seed(0)
    y = torch.randint(3, (600,))
    centres = torch.tensor([[3.0, 0.0], [0.0, 3.0], [-3.0, -3.0]])
    codes = centres[y] + 0.5 * torch.randn(600, 2)
    assert probes.probe_accuracy(codes[:400], y[:400], codes[400:], y[400:], 3) > 0.97
    noise = torch.randn(600, 2)
    assert probes.probe_accuracy(noise[:400], y[:400], noise[400:], y[400:], 3) < 0.45


def test_probes_fitted_together_equal_probes_fitted_alone():
    torch.manual_seed(0)
    y = torch.randint(3, (300,))
    sets = [torch.randn(300, 2) + y[:, None].float(), torch.randn(300, 5)]
    torch.manual_seed(1)
    together = probes.probe_accuracy(sets, y, sets, y, 3, steps=100)
    alone = []
    for s in sets:
        torch.manual_seed(1)
        alone.append(probes.probe_accuracy(s, y, s, y, 3, steps=100))
    assert together[0] > 0.6 and together[1] < 0.6
    assert together == pytest.approx(alone, abs=0.01)


def test_mlp_probe_reads_a_label_that_a_linear_probe_cannot():
    g = torch.Generator().manual_seed(0)
    codes = torch.rand(1200, 2, generator=g) * 2 - 1
    labels = ((codes[:, 0] > 0) ^ (codes[:, 1] > 0)).long()      # XOR: no line separates it
    train, test = slice(0, 1000), slice(1000, None)
    linear = probes.probe_accuracy(codes[train], labels[train], codes[test], labels[test], 2)
    mlp = probes.mlp_probe_accuracy(codes[train], labels[train], codes[test], labels[test], 2)
    assert linear < 0.7 and mlp > 0.9, (linear, mlp)


def test_vlae_probes_effect_scores_and_training_mmd_floor_of_a_run(tmp_path, celeba_dir):
    """probes.py vlae on a short CelebA run: a probe per layer for each attribute, an effect score
    per layer, and the last training MMD beside the biased estimator's q = p floor."""
    out = tmp_path / "run"
    vlae.main(["--data-dir", celeba_dir, "--out", str(out), "--steps", "4", "--log-every", "2", "--image-size", "16",
               "--batch-size", "16", "--eval-images", "20", "--bn-images", "40"])
    result = probes.main(["vlae", "--checkpoint", str(out), "--eval-images", "20", "--probe-images", "60",
                          "--effect-bases", "2"])
    assert json.load(open(out / "probes.json")) == json.loads(json.dumps(result))
    assert result["heldout_images"] == 20 and result["probe_train_images"] == 60
    assert set(result["probe_accuracy"]) == set(probes.PROBE_ATTRIBUTES)
    assert all(len(a) == 4 and all(0 <= v <= 1 for v in a) for a in result["probe_accuracy"].values())
    assert len(result["effect_score"]) == 4 and min(result["effect_score"]) > 0
    rows = common.read_jsonl(out / "metrics.jsonl")
    assert result["mmd_train_biased"] == [rows[-1][f"mmd_{l}"] for l in range(4)]
    assert result["mmd_train_biased_at_q_eq_p"] == [pytest.approx(probes.biased_mmd_floor(16, 100, 10))] * 4


def test_disentangled_z_u_probes_of_a_toy_run(tmp_path):
    """probes.py disentangled_vae: linear and MLP probes on mu_u of the toy's three classes, with
    chance 1/3, written to RUN/probes.json."""
    import disentangled_vae
    out = tmp_path / "toy"
    disentangled_vae.main(["--dataset", "toy", "--toy-points", "300", "--batch-size", "32", "--steps", "5",
                           "--out", str(out), "--eval-images", "90", "--log-every", "5"])
    result = probes.main(["disentangled_vae", "--checkpoint", str(out)])
    assert result["heldout"] == 90 and result["chance_accuracy"] == pytest.approx(1 / 3)
    assert 0 <= result["acc_z_u_probe"] <= 1 and 0 <= result["acc_z_u_mlp_probe"] <= 1
    assert json.load(open(out / "probes.json"))["acc_z_u_probe"] == result["acc_z_u_probe"]
