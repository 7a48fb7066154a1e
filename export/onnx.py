"""Export a diffusers UNet to ONNX, described by optimum's UNet config, behind a parity gate.

    >>> from esd_sdk.export import export_onnx
    >>> result = export_onnx("erased-circle", "erased-circle-onnx")       # an erase output, a UNet or a pipeline dir
    >>> result.parity.max_abs_diff <= result.parity.tolerance
    True

The export is described by optimum's `UNetOnnxConfig`, with one change: the timestep is a
[batch] tensor rather than a scalar, so that servers (Triton) can batch requests. Then:

1. reference: PyTorch runs on fixed random inputs; the outputs are kept (a few MB);
2. trace: the TorchScript exporter writes the graph, weights over 2 GB as external data;
3. optimize (``optimize``, on by default under 2 GB): ONNX Runtime's transformer optimizer fuses
   attention, LayerNorm and GELU (and, for CUDA, GroupNorm, BiasAdd, NHWC convolutions);
4. fp16 (``precision="fp16"``): the graph is converted, the weights tensor by tensor;
5. parity: ONNX Runtime runs the same inputs; if names, shapes or values disagree beyond the
   tolerance, nothing is written and `ParityError` says by how much.

Memory: steps 2-5 never hold two copies of the weights. SD-size UNets keep their weights in one
external file (``model.onnx_data``), which is read and written one tensor at a time; the torch
UNet is gone before ONNX Runtime loads the model (see benchmarks/scale.py for the peaks).

Tolerances (max abs difference on outputs of order 1): fp32 1e-4 — both sides compute in fp32
and differ only by kernel order and fusion (seen: ~1e-6 on the toy UNet); fp16 5e-2 — fp16
keeps ~3 significant digits, errors grow with depth (seen: ~1e-2 on SD-size UNets in the
literature, TensorRT's demo uses similar bounds).
"""

from __future__ import annotations

import gc
import json
import logging
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, ExportError, ModelNotFoundError, ParityError, require
from ..files import atomic_dir, atomic_file, check_output
from ..artifact import package_versions, resolve_unet
from ..loading import weights_hash

logger = logging.getLogger(__name__)

METADATA_NAME = "esd_export.json"
MODEL_NAME = "model.onnx"
DATA_NAME = MODEL_NAME + "_data"  # the external weights of UNets over protobuf's 2 GB limit
PRECISIONS = ("fp32", "fp16")
TOLERANCES = {"fp32": 1e-4, "fp16": 5e-2}
INLINE_BYTES = 1024  # smaller initializers stay in the graph when the weights are external


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
    provider: str = "cpu"  # the ONNX Runtime execution provider the export was checked on


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
    # {"target": "cpu"|"cuda", "fused": {op: count}} when ONNX Runtime's optimizer ran, or
    # {"skipped": why} when it was asked for by default and its graph failed (the plain graph ships).
    optimization: dict | None = None


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


# Latent side of the parity inputs: the model's own, capped at 32. Height and width are dynamic
# axes, so a smaller latent checks the same weights and graph; at SD 1.x's 64x64 the activations
# (4096-token self-attention) would take ~2.5 GB of the parity run, more than the weights.
PARITY_LATENT_SIZE = 32


def _dummy_inputs(unet, batch: int, seq: int, seed: int = 0) -> dict[str, np.ndarray]:
    g = torch.Generator().manual_seed(seed)
    size = min(unet.config.sample_size, PARITY_LATENT_SIZE)
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


@dataclass
class _Reference:
    """PyTorch's outputs on fixed inputs, computed before the UNet is freed."""

    inputs: dict[str, np.ndarray]
    expected: np.ndarray
    seconds: float
    sample_size: int


def _reference(unet, batch: int = 2, seq: int = 16) -> _Reference:
    inputs = _dummy_inputs(unet, batch, seq)
    t0 = time.perf_counter()
    expected = _torch_forward(unet, inputs)
    return _Reference(inputs, expected, time.perf_counter() - t0, inputs["sample"].shape[-1])


def _compare(ref: _Reference, model_path: Path, precision: str, tolerance: float | None = None,
             provider: str = "cpu") -> Parity:
    """Run ONNX Runtime on the reference inputs; raise ParityError on any mismatch of input/output
    names, output shape, or values beyond the tolerance."""
    ort = require("onnxruntime", "onnx")
    tolerance = TOLERANCES[precision] if tolerance is None else tolerance
    options = ort.SessionOptions()
    # One run: no arena kept for reuse, no pre-packed second copy of every weight, and basic graph
    # optimizations only. ONNX Runtime maps the external weights file and uses it in place; the
    # extended/layout levels rewrite every convolution weight (NCHWc), a second copy of the
    # weights (SD 1.x: +2.4 GB). The gate checks the exported graph; those runtime rewrites are the
    # serving session's (which runs them).
    options.enable_cpu_mem_arena = False
    options.add_session_config_entry("session.disable_prepacking", "1")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if provider == "cuda" else ["CPUExecutionProvider"]
    session = ort.InferenceSession(str(model_path), options, providers=providers)
    problems = []
    names = {i.name for i in session.get_inputs()}
    if names != set(ref.inputs):
        problems.append(f"inputs {sorted(names)} != expected {sorted(ref.inputs)}")
    outputs = [o.name for o in session.get_outputs()]
    if outputs != ["out_sample"]:
        problems.append(f"outputs {outputs} != ['out_sample']")
    if problems:
        raise ParityError("ONNX model does not match the UNet: " + "; ".join(problems))
    feed = {k: v.astype(np.float16) if precision == "fp16" and v.dtype == np.float32 else v
            for k, v in ref.inputs.items()}
    t0 = time.perf_counter()
    (got,) = session.run(None, feed)
    t_ort = time.perf_counter() - t0
    del session
    if got.shape != ref.expected.shape:
        raise ParityError(f"ONNX output shape {got.shape} != PyTorch's {ref.expected.shape}")
    diff = float(np.max(np.abs(got.astype(np.float32) - ref.expected)))
    if not np.isfinite(diff) or diff > tolerance:
        raise ParityError(f"ONNX output differs from PyTorch by {diff:.3g} (> tolerance {tolerance:g} for {precision}): "
                          "the export is not written; check the opset, export in fp32 or with optimize=False")
    batch, _, _, _ = ref.inputs["sample"].shape
    return Parity(max_abs_diff=diff, tolerance=tolerance, batch_size=batch, height=ref.sample_size,
                  width=ref.sample_size, sequence_length=ref.inputs["encoder_hidden_states"].shape[1],
                  seconds_torch=ref.seconds, seconds_onnxruntime=t_ort, provider=provider)


def check_parity(unet, model_path: Path, precision: str, tolerance: float | None = None, batch: int = 2,
                 seq: int = 16) -> Parity:
    """Run PyTorch (fp32) and ONNX Runtime (CPU) on the same inputs; raise ParityError on any
    mismatch of input/output names, output shape, or values beyond the tolerance."""
    return _compare(_reference(unet, batch, seq), Path(model_path), precision, tolerance)


# -- trace ----------------------------------------------------------------------------------------

def _trace(unet, config, model_path: Path, opset: int) -> None:
    """Trace ``unet`` into ``model_path`` with the TorchScript exporter, as optimum's `export` does,
    without its last step (reloading every weight to rewrite the external data as one file, which
    held a second copy of the weights next to the UNet): `_merge_external_data` streams it instead."""
    dummy = config.generate_dummy_inputs(framework="pt")
    unet.config.return_dict = True
    with torch.no_grad(), config.patch_model_for_export(unet), warnings.catch_warnings():
        # The tracer's notes on shape asserts in diffusers' blocks are expected and not actionable.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        inputs = config.ordered_inputs(unet)
        torch.onnx.export(unet, (dummy,), str(model_path), input_names=list(inputs), output_names=list(config.outputs),
                          dynamic_axes={**inputs, **config.outputs}, do_constant_folding=True, opset_version=opset,
                          dynamo=False)


def _external(tensor) -> dict | None:
    """A tensor's external-data entry (location, offset, length), or None when it is inline."""
    from onnx import TensorProto

    if tensor.data_location != TensorProto.EXTERNAL:
        return None
    return {e.key: e.value for e in tensor.external_data}


def _read(directory: Path, info: dict) -> bytes:
    with open(directory / info["location"], "rb") as f:
        f.seek(int(info.get("offset", 0)))
        return f.read(int(info["length"])) if "length" in info else f.read()


def _point(tensor, location: str, offset: int, length: int) -> None:
    from onnx import TensorProto

    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    del tensor.external_data[:]
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value


def _initializers(model):
    """Every initializer of the graph and of its subgraphs (If/Loop bodies)."""
    from onnx import AttributeProto

    graphs = [model.graph]
    while graphs:
        g = graphs.pop()
        yield from g.initializer
        for node in g.node:
            for a in node.attribute:
                if a.type == AttributeProto.GRAPH:
                    graphs.append(a.g)
                elif a.type == AttributeProto.GRAPHS:
                    graphs.extend(a.graphs)


def _rewrite_weights(model, directory: Path, convert=None) -> bool:
    """Stream the external weights of ``model`` (loaded without them), and its inline ones over
    INLINE_BYTES, into one new DATA_NAME file, one tensor at a time, passing each through
    ``convert(tensor, bytes) -> bytes`` when given; then delete the weight files it read.
    Returns whether any weight is external."""
    from onnx import TensorProto

    offset, sources = 0, set()
    with atomic_file(directory / DATA_NAME) as target:
        with open(target, "wb") as out:
            for tensor in _initializers(model):
                info = _external(tensor)
                if info is None and len(tensor.raw_data) <= INLINE_BYTES:
                    continue
                if info is None:
                    data = tensor.raw_data
                else:
                    sources.add(info["location"])
                    data = _read(directory, info)
                if convert is not None:
                    data = convert(tensor, data)
                if len(data) <= INLINE_BYTES:  # a scalar or a shape: keep it in the graph
                    tensor.data_location = TensorProto.DEFAULT
                    del tensor.external_data[:]
                    tensor.raw_data = data
                    continue
                pad = -offset % 4096 if len(data) >= 2**20 else 0  # big ones page-aligned: ONNX Runtime can map them
                out.write(b"\0" * pad)
                offset += pad
                out.write(data)
                _point(tensor, DATA_NAME, offset, len(data))
                offset += len(data)
        for name in sources:  # read in full: the new file replaces them (DATA_NAME itself included)
            (directory / name).unlink(missing_ok=True)
    if offset == 0:
        (directory / DATA_NAME).unlink()
        return False
    return True


def _save_graph(model, model_path: Path) -> None:
    """Write the graph (its weights are already where its tensors point)."""
    import onnx

    with atomic_file(model_path) as tmp:
        onnx.save(model, str(tmp))


def _merge_external_data(model_path: Path) -> bool:
    """The TorchScript exporter writes one file per weight for UNets over 2 GB: gather them into
    one DATA_NAME file, streaming. Returns whether the model has external data."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    if not any(_external(t) for t in _initializers(model)):
        return False
    external = _rewrite_weights(model, model_path.parent)
    _save_graph(model, model_path)
    return external


# -- optimize -------------------------------------------------------------------------------------

def optimization_target() -> str:
    """"cuda" when ONNX Runtime and torch both see a CUDA GPU (the parity check then runs there and
    the GPU-only fusions apply), else "cpu"."""
    ort = require("onnxruntime", "onnx")
    return "cuda" if "CUDAExecutionProvider" in ort.get_available_providers() and torch.cuda.is_available() else "cpu"


def _fusion_options(target: str):
    from onnxruntime.transformers.fusion_options import FusionOptions

    options = FusionOptions("unet")
    if target == "cpu":
        # These fused ops have CUDA kernels only; packed Q/K/V is not implemented for the CPU
        # MultiHeadAttention. Attention, MultiHeadAttention, (Skip)LayerNormalization, Gelu remain.
        for name in ("enable_group_norm", "enable_skip_group_norm", "enable_bias_splitgelu", "enable_bias_add",
                     "enable_nhwc_conv", "enable_packed_qkv", "enable_packed_kv"):
            setattr(options, name, False)
    return options


def _unet_optimizer(model):
    """onnxruntime.transformers' UNet optimizer, with one fix: its head-count detection calls int()
    on a one-element array, which NumPy 2 refuses (the `get_num_heads` crash on optimum's graph)."""
    from onnxruntime.transformers.fusion_attention_unet import FusionAttentionUnet
    from onnxruntime.transformers.onnx_model_unet import UnetOnnxModel

    class Attention(FusionAttentionUnet):
        def get_num_heads(self, reshape_q, is_torch2: bool = False) -> int:
            if is_torch2:  # the Reshape's shape is Concat(batch, -1, heads, head_dim)
                concat = self.model.get_parent(reshape_q, 1)
                if concat is not None and concat.op_type == "Concat" and len(concat.input) == 4:
                    heads = self.model.get_constant_value(concat.input[2])
                    return int(heads.reshape(-1)[0]) if isinstance(heads, np.ndarray) and heads.size == 1 else 0
            return super().get_num_heads(reshape_q, is_torch2)

    class UNet(UnetOnnxModel):
        def fuse_multi_head_attention(self, options=None):
            for cross in (False, True):
                Attention(self, self.hidden_size, self.num_heads, is_cross_attention=cross,
                          enable_packed_qkv=not cross and options.enable_packed_qkv,
                          enable_packed_kv=cross and options.enable_packed_kv).apply()

    return UNet(model)


def _optimize(model_path: Path, target: str, shapes: dict[str, tuple]) -> dict:
    """Fuse the graph in ``model_path`` in place with ONNX Runtime's transformer optimizer for
    ``target`` ("cpu" or "cuda"); returns the fused operators' counts.

    The optimizer infers shapes symbolically (sympy) several times; with the inputs' dynamic axes
    pinned to ``shapes`` it runs ~3x faster and fuses the same. The fused nodes keep no pinned
    size (the parity check and tests run other shapes), and the axes are restored afterwards."""
    import onnx
    from onnx import TensorProto

    model = onnx.load(str(model_path), load_external_data=False)
    # The fusions read the attention weights (they concatenate Q/K/V) but, for the CPU, no
    # convolution's; and ONNX Runtime's shape inference copies the whole model, weights and all,
    # several times. So SD-size convolution weights (~70% of a UNet) stay on disk meanwhile.
    on_disk = _conv_weights(model) if target == "cpu" else set()
    files = set()  # the weight files read
    for tensor in _initializers(model):
        info = _external(tensor)
        if info is not None:
            files.add(info["location"])
            if tensor.name not in on_disk:
                tensor.raw_data = _read(model_path.parent, info)
                tensor.data_location = TensorProto.DEFAULT
                del tensor.external_data[:]
    dynamic = {v.name: onnx.TypeProto() for v in [*model.graph.input, *model.graph.output]}
    for v in [*model.graph.input, *model.graph.output]:
        dynamic[v.name].CopyFrom(v.type)
        for dim, size in zip(v.type.tensor_type.shape.dim, shapes[v.name]):
            dim.dim_value = size  # replaces its dim_param
    optimizer = _unet_optimizer(model)
    optimizer.optimize(_fusion_options(target))
    optimizer.topological_sort()
    for v in [*optimizer.model.graph.input, *optimizer.model.graph.output]:
        v.type.CopyFrom(dynamic[v.name])
    del optimizer.model.graph.value_info[:]  # inferred for the pinned shapes
    fused = {k: v for k, v in optimizer.get_fused_operator_statistics().items() if v}
    if not fused.get("Attention") and not fused.get("MultiHeadAttention"):
        raise ExportError(f"ONNX Runtime's optimizer fused no attention in this graph ({fused})")
    model = optimizer.model
    del optimizer
    if files:
        _rewrite_weights(model, model_path.parent)
        for name in files - {DATA_NAME}:
            (model_path.parent / name).unlink(missing_ok=True)
    _save_graph(model, model_path)
    return fused


def _conv_weights(model) -> set[str]:
    """Names of the initializers that only convolutions read."""
    readers: dict[str, set[str]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, set()).add(node.op_type)
    return {t.name for t in model.graph.initializer if readers.get(t.name) == {"Conv"}}


# -- fp16 -----------------------------------------------------------------------------------------

def _convert_fp16(model_path: Path) -> None:
    """Convert an fp32 export to fp16 in place. External weights (SD-size UNets) are converted one
    tensor at a time into a new external file; the fp32 file is removed."""
    import onnx
    from onnx import TensorProto, helper
    from onnxruntime.transformers.float16 import (DEFAULT_OP_BLOCK_LIST, convert_float_to_float16,
                                                  convert_np_to_float16)

    model = onnx.load(str(model_path), load_external_data=False)
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
    block = list(DEFAULT_OP_BLOCK_LIST) + ["Resize"]
    # External weights are halved here, streamed, and the converter sees them as fp16 already: it
    # converts only the inline ones (it would read every external weight into memory at once).
    consumers: dict[str, set[str]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, set()).add(node.op_type)
    blocked_only = {t.name for t in graph.initializer if consumers.get(t.name, set()) <= set(block)}
    halved = [t for t in graph.initializer
              if _external(t) and t.data_type == TensorProto.FLOAT and t.name not in blocked_only]
    for t in halved:
        t.data_type = TensorProto.FLOAT16
        graph.value_info.append(helper.make_tensor_value_info(t.name, TensorProto.FLOAT16, list(t.dims)))
    names = {t.name for t in halved}

    def to_fp16(tensor, data: bytes) -> bytes:
        if tensor.name not in names:
            return data
        return convert_np_to_float16(np.frombuffer(data, dtype=np.float32)).tobytes()

    model = convert_float_to_float16(model, keep_io_types=False, disable_shape_infer=True, op_block_list=block)
    if any(_external(t) for t in _initializers(model)):
        _rewrite_weights(model, model_path.parent, to_fp16)
    _save_graph(model, model_path)


# -- the export -----------------------------------------------------------------------------------

def export_onnx(source: str | Path, output_dir: str | Path, *, precision: str = "fp32", opset: int = 17,
                tolerance: float | None = None, overwrite: bool = False,
                optimize: bool | None = None) -> OnnxExport:
    """Export the UNet of ``source`` to ``output_dir``/unet/model.onnx, gated by a parity check.

    Args:
        precision: fp32 or fp16 (weights and activations; inputs and output in that type too).
        opset: ONNX opset (>= 17).
        tolerance: max |difference| allowed against PyTorch fp32 [`TOLERANCES`].
        overwrite: replace an existing output (only once the new one is complete).
        optimize: fuse the graph with ONNX Runtime's transformer optimizer (attention, LayerNorm,
            GELU; with a CUDA GPU also GroupNorm, BiasAdd, NHWC convolutions) for the machine it
            runs on (`optimization_target`). None [default]: do it for graphs under 2 GB, and ship
            the plain graph instead, with the reason in ``optimization``, if the optimizer fails or
            its graph fails parity (over 2 GB, i.e. SD scale, the plain graph: the optimizer would
            need ~2.9x the UNet's memory); True: always, and raise on failure; False: the plain
            graph (for TensorRT, other runtimes, and refitting every weight from a delta).
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"ONNX precision must be one of {', '.join(PRECISIONS)}, got '{precision}'")
    if opset < 17:
        raise ConfigError(f"opset must be >= 17 (LayerNorm/attention export), got {opset}")
    out = check_output(output_dir, overwrite)
    require("onnx", "onnx")
    require("onnxruntime", "onnx")
    from .refit import REFIT_MAP_NAME, build_refit_map, param_digests

    t0 = time.perf_counter()
    unet, manifest = resolve_unet(source)
    w_hash = weights_hash(unet)
    config = _onnx_config(unet, precision)
    unet_config = {k: v for k, v in dict(unet.config).items() if isinstance(v, (int, float, str, list, tuple, type(None)))}
    # Everything the checks need from PyTorch, before the UNet is freed: the reference outputs
    # and the weights' digests for the refit map.
    ref = _reference(unet)
    digests = param_digests(unet, precision)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        (tmp / "unet").mkdir()
        model_path = tmp / "unet" / MODEL_NAME
        _trace(unet, config, model_path, opset)
        del unet
        gc.collect()  # the weights now live in the ONNX files only
        _merge_external_data(model_path)
        optimization = None
        if optimize is None and (tmp / "unet" / DATA_NAME).is_file():
            # Measured at SD 1.x size: the optimizer's shape inference peaks at ~2.9x the fp32 UNet
            # (the plain export: 1.44x), so over 2 GB it runs only when asked for.
            optimization = {"skipped": "external weights (over 2 GB): the optimizer needs ~2.9x the UNet's "
                                       "memory at SD 1.x size; pass optimize=True (--optimize) to run it"}
        elif optimize is not False:
            optimization, parity = _optimized(model_path, ref, precision, tolerance, raise_errors=optimize is True)
        if optimization is None or "skipped" in optimization:
            if precision == "fp16":
                _convert_fp16(model_path)
            parity = _compare(ref, model_path, precision, tolerance)
        (tmp / "unet" / REFIT_MAP_NAME).write_text(json.dumps(build_refit_map(model_path, digests, precision)) + "\n")
        external = (tmp / "unet" / DATA_NAME).is_file()
        result = OnnxExport(
            directory=out, model_path=out / "unet" / MODEL_NAME, precision=precision, opset=opset,
            inputs={k: list(v.values()) for k, v in config.inputs.items()},
            outputs={k: list(v.values()) for k, v in config.outputs.items()},
            parity=parity, weights_hash=w_hash, source=str(source), source_manifest=manifest,
            seconds=round(time.perf_counter() - t0, 2), external_data=external,
            versions=package_versions("esd-sdk", "torch", "diffusers", "optimum-onnx", "onnx", "onnxruntime",
                                      "onnxruntime-gpu"),
            unet_config=unet_config, optimization=optimization)
        (tmp / METADATA_NAME).write_text(json.dumps(_jsonable(result), indent=2) + "\n")
    logger.info("exported %s to %s (max |diff| %.2g)", source, out, parity.max_abs_diff)
    return result


def _optimized(model_path: Path, ref: _Reference, precision: str, tolerance: float | None,
               raise_errors: bool) -> tuple[dict, Parity | None]:
    """Optimize (and convert) a copy of the plain graph and check its parity; on success it
    replaces the plain graph. On failure: raise, or leave the plain graph and say why."""
    import shutil

    work = model_path.parent.with_name(model_path.parent.name + ".optimized")
    work.mkdir()
    try:
        return _optimized_in(work, model_path, ref, precision, tolerance, raise_errors)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _optimized_in(work: Path, model_path: Path, ref: _Reference, precision: str, tolerance: float | None,
                  raise_errors: bool) -> tuple[dict, Parity | None]:
    import shutil

    try:
        for f in model_path.parent.iterdir():  # hard links: no second copy of the weights on disk
            os.link(f, work / f.name) if f.name == DATA_NAME else shutil.copy2(f, work / f.name)
        target = optimization_target()
        shapes = {**{k: v.shape for k, v in ref.inputs.items()}, "out_sample": ref.expected.shape}
        fused = _optimize(work / MODEL_NAME, target, shapes)
        if precision == "fp16":
            _convert_fp16(work / MODEL_NAME)
        parity = _compare(ref, work / MODEL_NAME, precision, tolerance, provider=target)
    except Exception as e:  # noqa: BLE001  (the default falls back to the plain graph, and says so)
        if raise_errors:
            raise
        logger.warning("ONNX Runtime's optimizer did not give a usable graph (%s: %s); exporting the plain graph",
                       type(e).__name__, e)
        return {"skipped": f"{type(e).__name__}: {e}"[:500]}, None
    for f in model_path.parent.iterdir():
        f.unlink()
    for f in work.iterdir():
        f.replace(model_path.parent / f.name)
    return {"target": target, "fused": fused}, parity


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
