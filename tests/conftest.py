"""Tiny real models, built on the fly: no downloads, no fakes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch


from esd_sdk.testing import build_random_sd, build_random_sdxl

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two pytest-xdist workers on the two-core CI machine: one torch thread each
    # (two threads each would oversubscribe the cores and slow both down).
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory) -> Path:
    return build_random_sd(tmp_path_factory.mktemp("tiny_sd"))


@pytest.fixture(scope="session")
def tiny_sd_v(tmp_path_factory) -> Path:
    return build_random_sd(tmp_path_factory.mktemp("tiny_sd_v"), prediction_type="v_prediction")


@pytest.fixture(scope="session")
def tiny_sdxl(tmp_path_factory) -> Path:
    return build_random_sdxl(tmp_path_factory.mktemp("tiny_sdxl"))


def _erased(base: Path, out: Path) -> Path:
    """A real (if short) ESD-u erase of ``base``: it changes convolutions, norms and linears."""
    from esd_sdk.config import EraseConfig
    from esd_sdk.training import erase

    erase(base, out=out, config=EraseConfig(concepts=["circle"], method="u", steps=2, lr=1e-2, ddim_steps=2),
          progress=False)
    return out


@pytest.fixture(scope="session")
def erased_sd(tiny_sd, tmp_path_factory) -> Path:
    """An erase output of tiny_sd, shared by the export format tests."""
    return _erased(tiny_sd, tmp_path_factory.mktemp("erased_sd") / "erased")


@pytest.fixture(scope="session")
def erased_sdxl(tiny_sdxl, tmp_path_factory) -> Path:
    return _erased(tiny_sdxl, tmp_path_factory.mktemp("erased_sdxl") / "erased")


@pytest.fixture(scope="session")
def erased_toy(tmp_path_factory) -> Path:
    return _erased("toy", tmp_path_factory.mktemp("erased_toy") / "erased")


@pytest.fixture
def tiny_sd_copy(tiny_sd, tmp_path) -> Path:
    """A private copy, for tests that damage files."""
    import shutil

    return Path(shutil.copytree(tiny_sd, tmp_path / "model"))


def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)
