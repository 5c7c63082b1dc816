"""Shared fixtures: the bundled real-data sample and a per-session decoded-image cache."""
import os
import sys
import tempfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "tests", "data")
sys.path.insert(0, ROOT)
# The cache of decoded images goes to a temporary folder, never the user's ~/.cache.
os.environ["FACE_VAE_CACHE"] = tempfile.mkdtemp(prefix="face-vae-cache-")


@pytest.fixture
def celeba_dir():
    return os.path.join(DATA, "celeba")


@pytest.fixture
def mnist_dir():
    return os.path.join(DATA, "mnist")


@pytest.fixture
def identities_dir():
    return os.path.join(DATA, "celeba_identities")
