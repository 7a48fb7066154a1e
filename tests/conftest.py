"""Tiny real models, built on the fly: no downloads, no fakes."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

# Threads that wait at an OpenMP barrier sleep instead of spinning: the toy-erase tests run two
# torch threads beside the other worker's one on two cores, and spinning made them ~4x slower
# (measured: a 2-thread toy erase beside a 1-thread load, 54.9 s spinning, 20.5 s passive, 12.5 s
# alone). Read when libgomp loads, so before torch is imported (hence torch's TracerWarning filter
# is added below, not in pyproject.toml, whose filters pytest imports first); numerics do not change.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from esd_sdk.testing import build_random_sd, build_random_sdxl

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two pytest-xdist workers on the two-core CI machine: one torch thread each
    # (two threads each would oversubscribe the cores and slow both down).
    torch.set_num_threads(1)


@pytest.fixture
def benchmark_module(monkeypatch):
    """Import a script of benchmarks/ by name, with its siblings (toy_erasure, robust_seeds ...) importable."""
    root = Path(__file__).resolve().parents[1] / "benchmarks"
    monkeypatch.syspath_prepend(str(root))

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, root / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, name, module)  # dataclasses look their module up there
        spec.loader.exec_module(module)
        return module

    return load


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
def toy_circle_u(tmp_path_factory) -> Path:
    """ESD-u "circle" erased from the toy at its defaults (seed 0) and two torch threads, the count
    the toy defaults were tuned at: once per test run, shared by the xdist workers through a file
    lock (the erase writes to a hidden directory and renames it into place). Read-only: tests that
    change an artifact copy it first."""
    from filelock import FileLock

    from esd_sdk.training import erase

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the run's temp root, shared by every worker
    out = root / "toy-circle-u"
    with FileLock(str(root / "toy-circle-u.lock")):
        if not (out / "esd.json").is_file():
            threads = torch.get_num_threads()
            torch.set_num_threads(2)
            try:
                erase("toy", "circle", method="u", out=out, progress=False)
            finally:
                torch.set_num_threads(threads)
    return out


@pytest.fixture(scope="session")
def erased_toy(tmp_path_factory) -> Path:
    return _erased("toy", tmp_path_factory.mktemp("erased_toy") / "erased")


@pytest.fixture
def tiny_sd_copy(tiny_sd, tmp_path) -> Path:
    """A private copy, for tests that damage files."""
    import shutil

    return Path(shutil.copytree(tiny_sd, tmp_path / "model"))


def pytest_configure(config):
    config.addinivalue_line("filterwarnings", "ignore::torch.jit.TracerWarning")


def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)
