"""FID, KID and Inception Score through torch-fidelity (the metrics extra), tested with a tiny
registered feature extractor (conftest's tiny_extractor) in place of the Inception network: no
download, no GPU. What is pinned: FID of a set against itself, KID against the unbiased estimator
written out, IS of one repeated image, the real-feature cache, and the errors for a missing extra
or missing weights."""
import dataclasses
import os
import sys
import urllib.error

import numpy as np
import pytest
import torch

import data
import fidelity


def Cfg(**kwargs) -> fidelity.Options:
    return fidelity.Options(**{"dataset": "celeba", **kwargs})


def faces(celeba_dir, size=32):
    return data.load_dataset("celeba", celeba_dir, "all", size, verbose=False)


def subset(images: data.ImageSet, index) -> data.ImageSet:
    return data.ImageSet(images.images[index], {}, {}, [images.files[i] for i in index], f"{len(index)} faces")


def replay(images: np.ndarray, shift: float = 0.0):
    """A 'generator' that returns `images` in order, in [-1, 1] (moved by `shift`), whatever its z."""
    x = data.to_float_images(torch.from_numpy(np.array(images))) + shift
    state = {"next": 0}

    def generate(z):
        i = state["next"]
        state["next"] += len(z)
        return x[i:i + len(z)]
    return generate


def test_fid_of_a_set_against_itself_is_about_zero_and_grows_with_a_shift(celeba_dir, tiny_extractor, tmp_path):
    real = faces(celeba_dir)
    cfg = Cfg(fid=True, fidelity_samples=len(real), feature_extractor=tiny_extractor, cache_dir=str(tmp_path))
    same = fidelity.sample_quality(cfg, replay(real.images), 8, real, torch.device("cpu"))
    shifted = fidelity.sample_quality(cfg, replay(real.images, 0.3), 8, real, torch.device("cpu"))
    assert abs(same["fid"]) < 1e-4  # the quantisation round trip is exact, so the features are too
    assert shifted["fid"] > 1e3 * max(abs(same["fid"]), 1e-6) and shifted["fid"] > 1e-2
    assert same["real"] == {"split": "test", "images": len(real), "description": real.description}
    assert same["samples"]["images"] == len(real) and "isc" not in same and "kid" not in same
    assert same["feature_extractor"] == tiny_extractor and same["torch_fidelity"] == "0.4.0"
    assert "50,000" in same["note"]  # fewer samples than the protocol's are flagged


def test_kid_is_the_unbiased_polynomial_mmd(celeba_dir, tiny_extractor, tmp_path):
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY
    real = faces(celeba_dir)
    order = np.random.default_rng(0).permutation(len(real))
    a, b = order[:100], order[100:]
    cfg = Cfg(kid=True, fidelity_samples=100, feature_extractor=tiny_extractor, cache_dir=str(tmp_path))
    result = fidelity.sample_quality(cfg, replay(real.images[np.sort(a)]), 8, subset(real, np.sort(b)),
                                   torch.device("cpu"))["kid"]
    extractor = FEATURE_EXTRACTORS_REGISTRY[tiny_extractor](tiny_extractor, ["16"])
    u8 = lambda idx: torch.from_numpy(np.array(real.images[np.sort(idx)])).permute(0, 3, 1, 2)  # noqa: E731
    x, y = (extractor(u8(idx))[0].double() for idx in (a, b))
    k = lambda p, q: (p @ q.T / p.shape[1] + 1) ** 3  # noqa: E731  (Binkowski et al.: degree 3, gamma 1/d, c 1)
    m = len(x)
    off_diagonal = lambda K: (K.sum() - K.trace()) / (m * (m - 1))  # noqa: E731
    unbiased = (off_diagonal(k(x, x)) + off_diagonal(k(y, y)) - 2 * k(x, y).mean()).item()
    biased = (k(x, x).mean() + k(y, y).mean() - 2 * k(x, y).mean()).item()
    # every subset of 100 of 100 is the whole set: one value, the estimator itself
    assert result["subset_size"] == 100 and result["std"] < 1e-4 * abs(result["mean"])  # float32 sums only
    assert result["mean"] == pytest.approx(unbiased, rel=1e-3, abs=1e-6)
    assert abs(biased - unbiased) > 20 * abs(result["mean"] - unbiased)  # not the biased V-statistic
    assert result["estimator"] == "unbiased" and result["subsets"] == 100


def test_inception_score_of_one_repeated_image_is_one(celeba_dir, tiny_extractor, tmp_path):
    real = faces(celeba_dir)
    cfg = Cfg(isc=True, fidelity_samples=100, feature_extractor=tiny_extractor, cache_dir=str(tmp_path))
    one = fidelity.sample_quality(cfg, replay(np.repeat(real.images[:1], 100, 0)), 8, real, torch.device("cpu"))
    many = fidelity.sample_quality(cfg, replay(real.images[:100]), 8, real, torch.device("cpu"))
    assert one["isc"]["mean"] == pytest.approx(1.0, abs=1e-6) and one["isc"]["splits"] == 10
    assert many["isc"]["mean"] > 1.01 and many["isc"]["std"] > 0
    assert "fid" not in one and "input2" not in str(one)


def test_real_features_are_cached_per_split_and_reused(celeba_dir, tiny_extractor, tmp_path, monkeypatch):
    real = faces(celeba_dir)
    reads = []
    original = fidelity._RealImages.__getitem__
    monkeypatch.setattr(fidelity._RealImages, "__getitem__", lambda self, i: reads.append(i) or original(self, i))
    cfg = Cfg(fid=True, fidelity_samples=50, feature_extractor=tiny_extractor, cache_dir=str(tmp_path))
    first = fidelity.sample_quality(cfg, replay(real.images), 8, real, torch.device("cpu"))
    assert set(reads) == set(range(len(real)))
    before = len(reads)
    second = fidelity.sample_quality(cfg, replay(real.images), 8, real, torch.device("cpu"))
    assert len(reads) == before and second["fid"] == first["fid"]  # no real image read again
    cached = os.listdir(tmp_path / "fidelity")
    assert any(name.startswith(f"celeba-test-32px-{len(real)}-") for name in cached)
    # another size, split or file list is another entry, never the wrong statistics
    names = {fidelity.real_cache_name(r, "celeba", "test") for r in (real, faces(celeba_dir, 16), subset(real, [0, 1]))}
    assert len(names) == 3


def test_greyscale_is_replicated_to_three_channels(mnist_dir, tiny_extractor, tmp_path):
    digits = data.load_dataset("mnist", mnist_dir, "test", 28)
    cfg = Cfg(dataset="mnist", fid=True, fidelity_samples=len(digits), feature_extractor=tiny_extractor,
              cache_dir=str(tmp_path))
    result = fidelity.sample_quality(cfg, replay(digits.images), 8, digits, torch.device("cpu"))
    assert abs(result["fid"]) < 1e-4 and "replicated to 3 channels" in result["greyscale"]


def test_missing_extra_names_the_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)  # as if not installed
    with pytest.raises(ValueError, match=r"pip install -r requirements-metrics.txt"):
        fidelity.import_torch_fidelity()


def test_an_unknown_feature_extractor_is_refused_with_the_known_ones(tiny_extractor):
    with pytest.raises(ValueError, match="inception-v3-compat") as e:
        fidelity.check_fidelity_ready(Cfg(fid=True, feature_extractor="inception-v4"))
    assert "--feature-extractor inception-v4" in str(e.value) and tiny_extractor in str(e.value)
    fidelity.check_fidelity_ready(Cfg(fid=True, feature_extractor=tiny_extractor))  # known, and needs no weights


def test_a_torchvision_built_for_another_torch_is_named(tmp_path, monkeypatch):
    fake = tmp_path / "torch_fidelity"
    fake.mkdir()  # fails at import as torchvision does beside a torch it was not built for
    (fake / "__init__.py").write_text("raise RuntimeError('operator torchvision::nms does not exist')\n")
    monkeypatch.delitem(sys.modules, "torch_fidelity", raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError, match="torchvision does not match torch") as e:
        fidelity.import_torch_fidelity()
    assert "torchvision::nms" in str(e.value) and "requirements-metrics.txt" in str(e.value)


def test_missing_or_wrong_inception_weights_say_where_to_get_them(tmp_path, monkeypatch):
    cfg = Cfg(fid=True)
    assert cfg.feature_extractor == fidelity.INCEPTION  # the default is the TF Inception of the papers

    def offline(url, dst, **kwargs):
        raise urllib.error.URLError("Name or service not known")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(ValueError, match="could not be downloaded") as e:
        fidelity.inception_weights(cfg)
    assert fidelity.INCEPTION_URL in str(e.value) and "--inception-weights" in str(e.value)
    with pytest.raises(FileNotFoundError, match="no such file"):
        fidelity.inception_weights(dataclasses.replace(cfg, inception_weights=str(tmp_path / "absent.pth")))
    wrong = tmp_path / "weights.pth"
    wrong.write_bytes(b"not the weights")
    with pytest.raises(ValueError, match="SHA-256 starts"):
        fidelity.inception_weights(dataclasses.replace(cfg, inception_weights=str(wrong)))
    # a copy already in torch.hub's cache is used without the network
    cached = tmp_path / "hub" / "checkpoints" / fidelity.INCEPTION_FILE
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_bytes(b"")
    assert fidelity.inception_weights(cfg) == str(cached)
    assert fidelity.inception_weights(dataclasses.replace(cfg, feature_extractor="tiny-test")) is None
