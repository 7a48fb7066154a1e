"""The public API: one import, and the caller's objects are left as they were."""

import importlib
import re
import threading
from pathlib import Path

import numpy as np
import torch

import esd_sdk
from esd_sdk import GenerationConfig, generate, load_base, weights_hash
from esd_sdk.serving import Text2ImagePipeline, load_runtime, open_pipeline

README = Path(__file__).resolve().parents[1] / "README.md"
FEW = GenerationConfig(num_inference_steps=3, guidance_scale=5.0)


def test_one_import_path_for_the_whole_api():
    import esd_sdk.errors as errors

    for name in ("erase", "EraseConfig", "EraseResult", "StepEnd", "export", "open_pipeline", "load_base", "generate",
                 "image_grid", "apply_delta"):
        assert getattr(esd_sdk, name) is not None and name in esd_sdk.__all__
    classes = [v for v in vars(errors).values() if isinstance(v, type) and issubclass(v, errors.EsdError)]
    assert len(classes) > 15 and all(getattr(esd_sdk, c.__name__) is c for c in classes)
    assert callable(esd_sdk.export) and esd_sdk.export.export_onnx  # a callable module
    importlib.import_module("esd_sdk.generation")
    importlib.import_module("esd_sdk.training")
    assert callable(esd_sdk.generate) and callable(esd_sdk.erase)  # not shadowed by their modules


def test_no_module_defines_its_own_error_or_atomic_write():
    root = Path(esd_sdk.__file__).resolve().parents[1]
    sources = [p for d in ("esd_sdk", "export", "serving") for p in (root / d).rglob("*.py")]
    for path in sources:
        text = path.read_text()
        if path.name != "errors.py":
            assert not re.search(r"^class \w+\((\w+, )*\w*(Error|Exception)\b", text, re.M), path
        if path.name != "files.py":
            assert ".rename(" not in text and ".tmp" not in text, path


def test_generate_never_touches_the_callers_pipeline(tiny_sd):
    base = load_base(tiny_sd)
    other = load_base(tiny_sd).unet
    with torch.no_grad():
        next(other.parameters()).add_(0.5)
    unet, scheduler = base.pipeline.unet, base.pipeline.scheduler
    alone = {u: generate(base, "a circle", n=1, config=FEW, unet=u) for u in (None, other)}
    assert base.pipeline.unet is unet and base.pipeline.scheduler is scheduler
    assert not np.allclose(alone[None], alone[other])
    # Two threads, two UNets, one shared base: each gets its own model's images.
    got = {}
    threads = [threading.Thread(target=lambda u=u: got.__setitem__(u, generate(base, "a circle", n=1, config=FEW,
                                                                              unet=u))) for u in (None, other)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    for u in (None, other):
        np.testing.assert_allclose(got[u], alone[u], atol=1e-5)


def test_pipelines_leave_the_callers_modules_as_they_were(tiny_sd):
    base = load_base(tiny_sd)
    base.pipeline.text_encoder.train()  # a caller's module in training mode must stay so
    unet, encoder = base.pipeline.unet, base.pipeline.text_encoder
    before = weights_hash(unet)
    pipe = Text2ImagePipeline(base, load_runtime(unet))
    assert encoder.training and base.pipeline.text_encoder is encoder
    assert pipe.base.pipeline.text_encoder is not encoder and not pipe.base.pipeline.text_encoder.training
    served = open_pipeline(base)  # a loaded BaseModel: used, not changed
    assert base.pipeline.unet is unet and unet.device.type == "cpu" and weights_hash(unet) == before
    assert unet.parameters().__next__().requires_grad  # from_pretrained's default, untouched
    assert served(["a circle"], seeds=[0], steps=2).shape == (1, 32, 32, 3)


def test_inplace_runtime_converts_the_callers_module_only_when_asked(tiny_sd):
    from esd_sdk.serving import TorchRuntime

    unet = load_base(tiny_sd).unet  # as loaded: parameters require grad
    served = load_runtime(unet).unet
    assert served is not unet and any(p.requires_grad for p in unet.parameters())
    assert not any(p.requires_grad for p in served.parameters())
    same = TorchRuntime(unet, inplace=True).unet
    assert same is unet and not any(p.requires_grad for p in unet.parameters())


def test_load_base_leaves_diffusers_progress_bars_as_they_were(tiny_sd):
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.disable_progress_bar()
    try:
        load_base(tiny_sd)
        assert not diffusers_logging.is_progress_bar_enabled()
    finally:
        diffusers_logging.enable_progress_bar()
    load_base(tiny_sd)
    assert diffusers_logging.is_progress_bar_enabled()


def _python_blocks(text: str) -> list[str]:
    section = text.split("## The Python API", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_every_python_example_in_the_readme_runs(tmp_path, monkeypatch):
    blocks = _python_blocks(README.read_text())
    assert len(blocks) >= 3
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)  # noqa: S102 - the README's own code
    assert (tmp_path / "erased-circle" / "esd.json").is_file()
