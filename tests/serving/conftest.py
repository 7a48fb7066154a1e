"""An erase output of the tiny SD model and its ONNX export, shared by the serving tests."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from esd_sdk.config import EraseConfig
from esd_sdk.training import erase


@pytest.fixture(scope="package")
def edited(tiny_sd, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("serving") / "edited"
    erase(tiny_sd, out=out, config=EraseConfig(concepts=["circle"], method="x", steps=3, lr=1e-2, ddim_steps=4), progress=False)
    return out


@pytest.fixture(scope="package")
def edited_onnx(edited) -> Path:
    """At the path `esd-sdk export` would choose, so open_pipeline finds it."""
    from esd_sdk.export import export_onnx

    export_onnx(edited, edited.parent / f"{edited.name}-onnx")
    return edited.parent / f"{edited.name}-onnx"


def tiny_pipeline(model: Path, steps: int):
    """A torch pipeline on ``model`` that takes ``steps`` denoising steps by default."""
    from esd_sdk import load_base
    from esd_sdk.serving import Text2ImagePipeline, load_runtime

    base = load_base(model)
    pipe = Text2ImagePipeline(base, load_runtime(base.unet))
    pipe.defaults.num_inference_steps = steps
    return pipe


class GatedRuntime:
    """A real runtime whose calls wait until the test opens the gate: lets tests hold a batch
    in flight deterministically (for back-pressure and shutdown)."""

    def __init__(self, runtime, fail: bool = False):
        self.inner = runtime
        self.backend, self.device, self.config = runtime.backend, runtime.device, runtime.config
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.fail = fail

    def __call__(self, sample, timestep, cond):
        self.entered.set()
        self.gate.wait(30)
        if self.fail:
            raise RuntimeError("device lost")
        return self.inner(sample, timestep, cond)

    def describe(self):
        return "gated " + self.inner.describe()
