"""Export a diffusers UNet to ONNX through optimum's exporter, behind a parity gate.

    >>> from esd_sdk.export import export_onnx
    >>> result = export_onnx("erased-circle", "erased-circle-onnx")       # an erase output, a UNet or a pipeline dir
    >>> result.parity.max_abs_diff <= result.parity.tolerance
    True

The export is described by optimum's `UNetOnnxConfig`, with one change: the timestep is a
[batch] tensor rather than a scalar, so that servers (Triton) can batch requests. After export,
ONNX Runtime and PyTorch run on the same random inputs; if names, shapes or values disagree
beyond the tolerance, nothing is written and `ParityError` says by how much.

Tolerances (max abs difference on outputs of order 1): fp32 1e-4 — both sides compute in fp32
and differ only by kernel order and fusion (seen: ~1e-6 on the toy UNet); fp16 5e-2 — fp16
keeps ~3 significant digits, errors grow with depth (seen: ~1e-2 on SD-size UNets in the
literature, TensorRT's demo uses similar bounds).
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, ModelNotFoundError, ParityError, require
from ..files import atomic_dir, check_output
from ..artifact import package_versions, resolve_unet
from ..loading import weights_hash

logger = logging.getLogger(__name__)

METADATA_NAME = "esd_export.json"
MODEL_NAME = "model.onnx"
PRECISIONS = ("fp32", "fp16")
TOLERANCES = {"fp32": 1e-4, "fp16": 5e-2}
EXTERNAL_DATA_BYTES = 2 * 1024**3 - 64 * 1024**2  # protobuf's 2 GB limit, with room for the graph




@dataclass
class Parity:
    max_abs_diff: float
    tolerance: float
    batch_size: int
    height: int
    width: int
    sequence_length: int
    seconds_torch: float
    seconds_onnxruntime: float


@dataclass
class OnnxExport:
    """What `export_onnx` returns; also saved as esd_export.json."""

    directory: Path
    model_path: Path
    precision: str
    opset: int
    inputs: dict[str, list]
    outputs: dict[str, list]
    parity: Parity
    weights_hash: str
    source: str
    source_manifest: dict | None = None
    seconds: float = 0.0
    external_data: bool = False
    versions: dict = field(default_factory=dict)
    unet_config: dict = field(default_factory=dict)


def _onnx_config(unet, precision: str):
    """optimum's UNetOnnxConfig with a batched timestep."""
    require("optimum.exporters.onnx", "onnx")
    from optimum.exporters.onnx.model_configs import UNetOnnxConfig

    class BatchedTimestepUNetOnnxConfig(UNetOnnxConfig):
        DEFAULT_ONNX_OPSET = 17

        @property
        def inputs(self):
            inputs = super().inputs
            inputs["timestep"] = {0: "batch_size"}
            return inputs

        def generate_dummy_inputs(self, framework: str = "pt", **kwargs):
            dummy = super().generate_dummy_inputs(framework=framework, **kwargs)
            batch = dummy["sample"].shape[0]
            dummy["timestep"] = torch.full((batch,), 999.0, dtype=dummy["sample"].dtype)
            return dummy

    cfg = unet.config
    if cfg.get("addition_embed_type") == "text_time":
        # optimum reads these off the config; diffusers pipelines would supply them.
        text_dim = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
        unet.register_to_config(text_encoder_projection_dim=text_dim, requires_aesthetics_score=False)
    unet.register_to_config(time_cond_proj_dim=cfg.get("time_cond_proj_dim"))
    # Traced in fp32; fp16 is a conversion of the traced graph (see _convert_fp16).
    return BatchedTimestepUNetOnnxConfig(unet.config, task="semantic-segmentation", float_dtype="fp32")


def _dummy_inputs(unet, batch: int, seq: int, seed: int = 0) -> dict[str, np.ndarray]:
    g = torch.Generator().manual_seed(seed)
    size = unet.config.sample_size
    inputs = {
        "sample": torch.randn(batch, unet.config.in_channels, size, size, generator=g),
        "timestep": torch.linspace(999, 1, batch),
        "encoder_hidden_states": torch.randn(batch, seq, unet.config.cross_attention_dim, generator=g),
    }
    if unet.config.get("addition_embed_type") == "text_time":
        inputs["text_embeds"] = torch.randn(batch, unet.config.text_encoder_projection_dim, generator=g)
        inputs["time_ids"] = torch.tensor([[size * 8, size * 8, 0, 0, size * 8, size * 8]] * batch, dtype=torch.float32)
    return {k: v.numpy() for k, v in inputs.items()}


def _torch_forward(unet, inputs: dict[str, np.ndarray]) -> np.ndarray:
    kwargs = {}
    if "text_embeds" in inputs:
        kwargs["added_cond_kwargs"] = {"text_embeds": torch.from_numpy(inputs["text_embeds"]),
                                       "time_ids": torch.from_numpy(inputs["time_ids"])}
    with torch.no_grad():
        return unet(torch.from_numpy(inputs["sample"]), torch.from_numpy(inputs["timestep"]),
                    encoder_hidden_states=torch.from_numpy(inputs["encoder_hidden_states"]), **kwargs).sample.numpy()


def check_parity(unet, model_path: Path, precision: str, tolerance: float | None = None, batch: int = 2,
                 seq: int = 16) -> Parity:
    """Run PyTorch (fp32) and ONNX Runtime (CPU) on the same inputs; raise ParityError on any
    mismatch of input/output names, output shape, or values beyond the tolerance."""
    ort = require("onnxruntime", "onnx")
    tolerance = TOLERANCES[precision] if tolerance is None else tolerance
    inputs = _dummy_inputs(unet, batch, seq)
    t0 = time.perf_counter()
    expected = _torch_forward(unet, inputs)
    t_torch = time.perf_counter() - t0
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    problems = []
    names = {i.name for i in session.get_inputs()}
    if names != set(inputs):
        problems.append(f"inputs {sorted(names)} != expected {sorted(inputs)}")
    outputs = [o.name for o in session.get_outputs()]
    if outputs != ["out_sample"]:
        problems.append(f"outputs {outputs} != ['out_sample']")
    if problems:
        raise ParityError("ONNX model does not match the UNet: " + "; ".join(problems))
    feed = {k: v.astype(np.float16) if precision == "fp16" and v.dtype == np.float32 else v for k, v in inputs.items()}
    t0 = time.perf_counter()
    (got,) = session.run(None, feed)
    t_ort = time.perf_counter() - t0
    if got.shape != expected.shape:
        raise ParityError(f"ONNX output shape {got.shape} != PyTorch's {expected.shape}")
    diff = float(np.max(np.abs(got.astype(np.float32) - expected)))
    if not np.isfinite(diff) or diff > tolerance:
        raise ParityError(f"ONNX output differs from PyTorch by {diff:.3g} (> tolerance {tolerance:g} for {precision}): "
                          "the export is not written; check the opset or export in fp32")
    size = unet.config.sample_size
    return Parity(max_abs_diff=diff, tolerance=tolerance, batch_size=batch, height=size, width=size,
                  sequence_length=seq, seconds_torch=t_torch, seconds_onnxruntime=t_ort)


def _convert_fp16(model_path: Path) -> None:
    """Convert an fp32 export to fp16 in place. The fp32 external data (SD-size UNets) is removed,
    and the fp16 weights go inline, or into one external file when they pass protobuf's 2 GB."""
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = onnx.load(str(model_path))  # with its external data
    # Constant nodes become initializers, so that the converter can keep the ones feeding
    # fp32-only inputs (Resize scales) in fp32 instead of blindly halving them.
    graph = model.graph
    for node in [n for n in graph.node if n.op_type == "Constant"]:
        value = next((a.t for a in node.attribute if a.name == "value"), None)
        if value is None:
            continue
        value.name = node.output[0]
        graph.initializer.append(value)
        graph.node.remove(node)
    # Resize takes its scales as fp32 by the ONNX spec; it runs in fp32 between casts.
    model = convert_float_to_float16(model, keep_io_types=False, disable_shape_infer=True,
                                     op_block_list=list(DEFAULT_OP_BLOCK_LIST) + ["Resize"])
    for stale in model_path.parent.iterdir():  # the fp32 weights: never ship them beside the fp16 model
        if stale != model_path:
            stale.unlink()
    weights = sum(t.ByteSize() for t in model.graph.initializer)
    onnx.save(model, str(model_path), save_as_external_data=weights > EXTERNAL_DATA_BYTES,
              all_tensors_to_one_file=True, location=MODEL_NAME + "_data")


def export_onnx(source: str | Path, output_dir: str | Path, *, precision: str = "fp32", opset: int = 17,
                tolerance: float | None = None, overwrite: bool = False) -> OnnxExport:
    """Export the UNet of ``source`` to ``output_dir``/unet/model.onnx, gated by a parity check."""
    if precision not in PRECISIONS:
        raise ConfigError(f"ONNX precision must be one of {', '.join(PRECISIONS)}, got '{precision}'")
    if opset < 17:
        raise ConfigError(f"opset must be >= 17 (LayerNorm/attention export), got {opset}")
    out = check_output(output_dir, overwrite)
    require("onnx", "onnx")
    require("onnxruntime", "onnx")
    from optimum.exporters.onnx.convert import export as optimum_export

    t0 = time.perf_counter()
    unet, manifest = resolve_unet(source)
    w_hash = weights_hash(unet)
    config = _onnx_config(unet, precision)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        (tmp / "unet").mkdir()
        model_path = tmp / "unet" / MODEL_NAME
        with warnings.catch_warnings():
            # The tracer's notes on shape asserts in diffusers' blocks are expected and not actionable.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            optimum_export(unet, config, model_path, opset=opset, device="cpu", disable_dynamic_axes_fix=True)
        if precision == "fp16":
            _convert_fp16(model_path)
        parity = check_parity(unet, model_path, precision, tolerance)
        from .refit import REFIT_MAP_NAME, build_refit_map

        (tmp / "unet" / REFIT_MAP_NAME).write_text(json.dumps(build_refit_map(model_path, unet, precision)) + "\n")
        external = any(p.suffix != ".json" and p.name != MODEL_NAME for p in (tmp / "unet").iterdir())
        result = OnnxExport(
            directory=out, model_path=out / "unet" / MODEL_NAME, precision=precision, opset=opset,
            inputs={k: list(v.values()) for k, v in config.inputs.items()},
            outputs={k: list(v.values()) for k, v in config.outputs.items()},
            parity=parity, weights_hash=w_hash, source=str(source), source_manifest=manifest,
            seconds=round(time.perf_counter() - t0, 2), external_data=external,
            versions=package_versions("esd-sdk", "torch", "diffusers", "optimum-onnx", "onnx", "onnxruntime",
                                      "onnxruntime-gpu"),
            unet_config={k: v for k, v in dict(unet.config).items() if isinstance(v, (int, float, str, list, tuple, type(None)))})
        (tmp / METADATA_NAME).write_text(json.dumps(_jsonable(result), indent=2) + "\n")
    logger.info("exported %s to %s (max |diff| %.2g)", source, out, parity.max_abs_diff)
    return result


def _jsonable(result: OnnxExport) -> dict:
    data = asdict(result)
    data["directory"] = str(result.directory)
    data["model_path"] = str(result.model_path)
    return {"format": "esd-sdk-onnx", **data}


def load_export_metadata(directory: str | Path) -> dict:
    path = Path(directory) / METADATA_NAME
    if not path.is_file():
        raise ModelNotFoundError(f"{directory} is not an esd-sdk ONNX export (no {METADATA_NAME}): run esd-sdk export first")
    return json.loads(path.read_text())
