"""Every test starts from a clean Pyro param store, with validation on and fixed seeds."""

import os
from pathlib import Path

import pyro
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

# The suite's models are small: one thread is as fast as two, and it makes floating-point
# reductions, hence every seeded result, independent of the machine's core count.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def clean_pyro():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    torch.set_default_dtype(torch.float32)
    with pyro.validation_enabled(True):
        yield
    pyro.clear_param_store()


def shared_data_root() -> Path | None:
    """The data root from PYROVAE_DATA if it holds MNIST's raw files, else None."""
    root = os.environ.get("PYROVAE_DATA")
    if root and (Path(root) / "MNIST" / "raw" / "train-images-idx3-ubyte.gz").exists():
        return Path(root)
    return None


@pytest.fixture
def mnist_root() -> Path:
    root = shared_data_root()
    if root is None:
        pytest.skip("MNIST not found: set PYROVAE_DATA to a folder with MNIST/raw/*-ubyte.gz")
    return root
