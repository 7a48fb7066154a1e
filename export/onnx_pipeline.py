"""optimum's ONNX Runtime pipeline layout from an erase output, loadable with no export step:

    >>> esd_sdk.export("erased-circle", format="onnx-pipeline")      # -> erased-circle-onnx-pipeline/
    >>> from optimum.onnxruntime import ORTStableDiffusionPipeline     # ORTStableDiffusionXLPipeline for SDXL
    >>> pipe = ORTStableDiffusionPipeline.from_pretrained("erased-circle-onnx-pipeline")

Layout (what optimum's own `onnx_export_from_model` writes for a pipeline):
    unet/model.onnx (+ external data), vae_decoder/, vae_encoder/, text_encoder[_2]/ (model.onnx +
    config.json each), tokenizer[_2]/, scheduler/, model_index.json; plus esd_export.json (the
    UNet's export record, as `--format onnx` writes it) and esd.json / README.md of the erase.

The UNet is the SDK's parity-gated export (`export_onnx`: batched timestep, fp16 conversion,
refit map); optimum's pipeline feeds it a one-element timestep, which broadcasts. It is exported
first, alone in memory, so the whole pipeline peaks no higher than the UNet export. The other
components come from optimum's own per-component export configs and pass optimum's output
validation against PyTorch (fp32); in fp16 each is also compared with its validated fp32 graph.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..artifact import CARD_NAME, MANIFEST_NAME, load_manifest
from ..errors import ConfigError, ParityError, require
from ..files import atomic_dir, check_output
from ..loading import load_base
from .onnx import METADATA_NAME, MODEL_NAME, PRECISIONS, TOLERANCES, OnnxExport, _convert_fp16, export_onnx

logger = logging.getLogger(__name__)

ORT_CLASSES = {"StableDiffusionPipeline": "ORTStableDiffusionPipeline",
               "StableDiffusionXLPipeline": "ORTStableDiffusionXLPipeline"}


@dataclass
class OnnxPipelineExport:
    """What `export_onnx_pipeline` returns."""

    directory: Path
    ort_class: str  # the optimum.onnxruntime class that loads it
    precision: str
    unet: OnnxExport  # the UNet's export, with its parity
    parity: dict[str, float] = field(default_factory=dict)  # component -> max |diff| (fp16: vs its fp32 graph)
    tolerance: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    def describe(self) -> str:
        others = ", ".join(f"{k} {v:.2g}" for k, v in self.parity.items())
        return (f"wrote {self.directory} ({self.precision}) in {self.seconds:.1f}s; UNet parity max |diff| "
                f"{self.unet.parity.max_abs_diff:.2g} <= {self.unet.parity.tolerance:g}; others: {others}; load it "
                f"with optimum.onnxruntime.{self.ort_class}.from_pretrained")


def _run(path: Path, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, feed)))


def _export_component(name: str, model, onnx_config, path: Path, precision: str, opset: int) -> tuple[float, float]:
    """Export one non-UNet component with optimum, validate it against PyTorch, and (fp16) convert
    it; return (max |diff|, tolerance) of the last check it passed."""
    from optimum.exporters.error_utils import AtolError, OutputMatchError, ShapeError
    from optimum.exporters.onnx.convert import export, validate_model_outputs

    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        _, outputs = export(model, onnx_config, path, opset=opset, device="cpu")
    atol = onnx_config.ATOL_FOR_VALIDATION
    atol = atol if isinstance(atol, float) else 1e-4
    try:
        validate_model_outputs(onnx_config, model, path, outputs, atol=atol, use_subprocess=False)
    except (AtolError, OutputMatchError, ShapeError) as e:
        raise ParityError(f"the ONNX {name} does not reproduce PyTorch's outputs ({str(e).splitlines()[0]}): "
                          "nothing was written") from e
    feed = {k: v.numpy() for k, v in onnx_config.generate_dummy_inputs(framework="pt").items()}
    reference = _run(path, feed)
    if precision == "fp32":
        return 0.0, atol  # optimum's check passed within atol; it does not return the difference
    _convert_fp16(path)
    half = _run(path, {k: v.astype(np.float16) if v.dtype == np.float32 else v for k, v in feed.items()})
    diff = max(float(np.max(np.abs(half[k].astype(np.float32) - reference[k]))) for k in reference)
    tolerance = TOLERANCES["fp16"]
    if not np.isfinite(diff) or diff > tolerance:
        raise ParityError(f"the fp16 ONNX {name} differs from its fp32 export by {diff:.3g} (> {tolerance:g}): "
                          "export in fp32")
    return diff, tolerance


def export_onnx_pipeline(source: str | Path, out: str | Path, *, precision: str = "fp32", opset: int = 17,
                         overwrite: bool = False) -> OnnxPipelineExport:
    """Write optimum's ONNX Runtime pipeline directory for the erase output ``source``."""
    if precision not in PRECISIONS:
        raise ConfigError(f"ONNX precision must be one of {', '.join(PRECISIONS)}, got '{precision}'")
    out = check_output(out, overwrite)
    source = Path(source)
    manifest = load_manifest(source)
    require("optimum.exporters.onnx", "onnx")
    from optimum.exporters.utils import get_diffusion_models_for_export

    t0 = time.perf_counter()
    with atomic_dir(out, overwrite=overwrite) as tmp:
        # 1. The edited UNet alone, through the SDK's parity gate; its files move into place.
        unet = export_onnx(source, tmp / ".unet", precision=precision, opset=opset)
        for name in ("unet", METADATA_NAME):  # moves inside the atomic directory, not a publish
            shutil.move(tmp / ".unet" / name, tmp / name)
        shutil.rmtree(tmp / ".unet")
        # 2. Everything else from the base model, with optimum's per-component export configs.
        base = load_base(manifest["base_model"])
        pipe = base.pipeline
        cls = type(pipe).__name__
        components = get_diffusion_models_for_export(pipe, float_dtype="fp32")
        unet_model, _ = components.pop("unet")
        unet_model.save_config(tmp / "unet")  # the edit keeps the architecture: the base's config
        pipe.unet.to("meta")  # only its config was needed: free the base UNet's weights
        parity, tolerance = {}, {}
        for name, (model, onnx_config) in components.items():
            parity[name], tolerance[name] = _export_component(name, model, onnx_config, tmp / name / MODEL_NAME,
                                                              precision, opset)
            if hasattr(model, "save_config"):
                if name.startswith("vae") and precision == "fp16":
                    # An fp16 graph cannot be upcast; diffusers' SDXL pipeline would try (and fail) on torch's VAE.
                    model.register_to_config(force_upcast=False)
                model.save_config(tmp / name)
            else:
                model.config.save_pretrained(tmp / name)
        pipe.scheduler.save_pretrained(tmp / "scheduler")
        for name in ("tokenizer", "tokenizer_2"):
            if getattr(pipe, name, None) is not None:
                getattr(pipe, name).save_pretrained(tmp / name)
        pipe.save_config(tmp)
        shutil.copy2(source / MANIFEST_NAME, tmp / MANIFEST_NAME)
        if (source / CARD_NAME).is_file():
            shutil.copy2(source / CARD_NAME, tmp / CARD_NAME)
        result = OnnxPipelineExport(out, ORT_CLASSES.get(cls, "ORTDiffusionPipeline"), precision, unet, parity,
                                    tolerance, round(time.perf_counter() - t0, 2))
        (tmp / "esd_onnx_pipeline.json").write_text(json.dumps(
            {"format": "esd-sdk-onnx-pipeline", "ort_class": result.ort_class, "precision": precision,
             "unet_parity": unet.parity.max_abs_diff, "parity": parity, "tolerance": tolerance,
             "seconds": result.seconds}, indent=2) + "\n")
    # Paths recorded while exporting pointed into the work directory: point them at the output.
    unet.directory, unet.model_path = out, out / "unet" / MODEL_NAME
    logger.info("wrote ONNX pipeline %s (%s)", out, result.ort_class)
    return result
