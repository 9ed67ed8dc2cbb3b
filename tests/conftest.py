"""Test set-up: the repo root on sys.path, and real MNIST located for end-to-end tests.

Real MNIST comes from $MNIST_DATA_DIR, else ../shared/data/mnist beside the repo (as in
this project's CI). Tests that need it are skipped when neither exists.
"""

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
_SHARED = os.path.join(os.path.dirname(ROOT), "shared", "data", "mnist")
if not os.environ.get("MNIST_DATA_DIR") and os.path.isdir(_SHARED):
    os.environ["MNIST_DATA_DIR"] = _SHARED


def real_mnist_dir():
    d = os.environ.get("MNIST_DATA_DIR", "")
    return d if d and os.path.isdir(d) else None


@pytest.fixture
def mnist_dir():
    d = real_mnist_dir()
    if d is None:
        pytest.skip("real MNIST not found: set MNIST_DATA_DIR")
    return d
