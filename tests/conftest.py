"""Shared fixtures: the bundled real-data sample and a per-session decoded-image cache."""
import os
import sys
import tempfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "tests", "data")
sys.path.insert(0, ROOT)
sys.path.insert(1, os.path.join(ROOT, "benchmarks"))  # benchmarks/fidelity.py, benchmarks/claims/
# The cache of decoded images goes to a temporary folder, never the user's ~/.cache.
os.environ["FACE_VAE_CACHE"] = tempfile.mkdtemp(prefix="face-vae-cache-")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `pytest -n 2` (pytest-xdist): one thread per worker, set before torch is imported, so the
    # workers and the processes they start do not contend for the cores
    os.environ["OMP_NUM_THREADS"] = "1"


@pytest.fixture
def celeba_dir():
    return os.path.join(DATA, "celeba")


@pytest.fixture
def mnist_dir():
    return os.path.join(DATA, "mnist")


@pytest.fixture
def identities_dir():
    return os.path.join(DATA, "celeba_identities")


@pytest.fixture(scope="session")
def tiny_extractor():
    """The name of a tiny, fixed, randomly initialised feature extractor registered with
    torch-fidelity (the metrics extra), standing in for the Inception network so that the FID / KID
    / IS plumbing is tested without a download: 16 features for FID and KID, 10 logits for IS."""
    import torch
    import torch.nn.functional as F
    try:
        import torch_fidelity
    except ImportError:
        pytest.skip("the metrics extra is not installed: pip install -r requirements-metrics.txt (CI installs it)")
    except RuntimeError as e:  # "operator torchvision::nms does not exist": a torchvision built for another torch
        pytest.skip(f"the metrics extra does not import beside torch {torch.__version__} ({e}): install the "
                    f"matching torchvision (requirements-metrics.txt)")
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    class TinyExtractor(torch_fidelity.FeatureExtractorBase):
        def __init__(self, name, features_list, **kwargs):
            super().__init__(name, features_list)
            g = torch.Generator().manual_seed(0)
            self.conv = torch.nn.Parameter(torch.randn(16, 3, 4, 4, generator=g) * 0.3, requires_grad=False)
            self.fc = torch.nn.Parameter(torch.randn(10, 16, generator=g), requires_grad=False)

        @staticmethod
        def get_provided_features_list():
            return "16", "logits_unbiased"

        @staticmethod
        def get_default_feature_layer_for_metric(metric):
            return "logits_unbiased" if metric == "isc" else "16"

        @staticmethod
        def can_be_compiled():
            return False

        def forward(self, x):
            assert x.dtype == torch.uint8 and x.shape[1] == 3  # torch-fidelity's contract, as Inception's
            x = F.interpolate(x.float() / 127.5 - 1, size=(16, 16), mode="bilinear", align_corners=False)
            h = F.relu(F.conv2d(x, self.conv, stride=4)).mean((2, 3))
            features = {"16": h, "logits_unbiased": h @ self.fc.T}
            return tuple(features[name] for name in self.features_list)

    if "tiny-test" not in FEATURE_EXTRACTORS_REGISTRY:
        torch_fidelity.register_feature_extractor("tiny-test", TinyExtractor)
    return "tiny-test"
