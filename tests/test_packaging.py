"""The wheel carries the whole product: esd_sdk, esd_sdk.export, esd_sdk.serving, the toy model, the CLI."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, str]:
    """The wheel, and what building it printed."""
    out = tmp_path_factory.mktemp("dist")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                            str(ROOT)], check=True, capture_output=True, text=True)
    return next(out.glob("esd_sdk-*.whl")), build.stdout + build.stderr


def test_wheel_builds_without_setuptools_warnings(built):
    # Every folder of package data (the toy model, the prompt sets, the review page) is a listed package:
    # an unlisted one makes setuptools print a screenful of warnings per folder on every `make install`.
    assert "absent from the `packages` configuration" not in built[1]


def test_wheel_contents(built):
    wheel = built[0]
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in ("esd_sdk/__init__.py", "esd_sdk/export/__init__.py", "esd_sdk/serving/__init__.py",
                     "esd_sdk/py.typed", "esd_sdk/toy/model/model_index.json",
                     "esd_sdk/toy/model/unet/diffusion_pytorch_model.safetensors",
                     "esd_sdk/toy/model/judge/judge.safetensors", "esd_sdk/toy/model/tokenizer/vocab.json"):
        assert required in names, required
    assert not any(n.startswith(("tests/", "benchmarks/")) for n in names)
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "esd-sdk = esd_sdk.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()


def test_installed_wheel_imports_and_runs(built, tmp_path):
    wheel = built[0]
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    env = {**os.environ, "PYTHONPATH": str(target)}
    code = ("import esd_sdk, esd_sdk.export, esd_sdk.serving; "
            "assert esd_sdk.__file__.startswith(%r), esd_sdk.__file__; "
            "print(esd_sdk.load_base('toy').family)") % str(target)
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "toy", result.stderr[-2000:]
    cli = subprocess.run([sys.executable, "-m", "esd_sdk", "--help"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert cli.returncode == 0 and "erase" in cli.stdout
