"""Build TensorRT engines from an ONNX export, and refit them from an ESD delta.

    >>> from esd_sdk.export.tensorrt import build_engine, refit_engine
    >>> build_engine("edit-onnx", "edit.plan", precision="fp16")            # static profile: batch 2, model size
    >>> refit_engine("edit.plan", "edit-onnx", "another-edit/")              # swap an edit's weights in, no rebuild

Engines are built refittable, with one optimization profile (static at the common shape by
default; dynamic ranges on request) and a timing cache next to the engine. Metadata
(``<engine>.json``) records the TensorRT version, the GPU, the profile and the weights hash;
`load_engine` refuses an engine built by another TensorRT version or for another GPU, and
refitting updates the recorded hash so that a cache never serves stale weights.

Needs a CUDA GPU and ``pip install 'esd-sdk[gpu]'``.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import ConfigError, EngineError, MissingDependencyError, ModelNotFoundError, OutputExistsError, RefitError
from ..files import atomic_file, write_text
from .onnx import MODEL_NAME, load_export_metadata

PRECISIONS = ("fp16", "bf16", "fp32")
ENGINE_NAME = "unet.plan"  # the engine in an `esd-sdk export --format tensorrt` directory


@dataclass
class Profile:
    """min/opt/max batch and latent size of an optimization profile (sequence length is fixed)."""

    batch: tuple[int, int, int] = (2, 2, 2)
    latent: tuple[int, int, int] | None = None  # None: the UNet's sample_size, static
    sequence_length: int = 77

    @classmethod
    def dynamic(cls, max_batch: int = 8, min_latent: int = 32, max_latent: int = 128, sequence_length: int = 77):
        return cls(batch=(1, 2, max_batch), latent=(min_latent, 64, max_latent), sequence_length=sequence_length)


def _require_tensorrt():
    try:
        import tensorrt as trt
    except ImportError as e:
        raise MissingDependencyError("TensorRT export needs the tensorrt package and a CUDA GPU: "
                                     "pip install 'esd-sdk[gpu]'") from e
    import torch

    if not torch.cuda.is_available():
        raise MissingDependencyError("TensorRT export needs a CUDA GPU, and none is visible: run it on a GPU machine, "
                                     "or use --format onnx")
    return trt


def _shapes(meta: dict, profile: Profile) -> dict[str, tuple[tuple, tuple, tuple]]:
    cfg = meta["unet_config"]
    latent = profile.latent or (cfg["sample_size"],) * 3
    seq = profile.sequence_length
    shapes = {}
    for i, (b, s) in enumerate(zip(profile.batch, latent)):
        dims = {
            "sample": (b, cfg["in_channels"], s, s),
            "timestep": (b,),
            "encoder_hidden_states": (b, seq, cfg["cross_attention_dim"]),
        }
        if "text_embeds" in meta["inputs"]:
            dims["text_embeds"] = (b, cfg["projection_class_embeddings_input_dim"] - 6 * cfg["addition_time_embed_dim"])
            dims["time_ids"] = (b, 6)
        for name, shape in dims.items():
            shapes.setdefault(name, [None, None, None])[i] = shape
    return {k: tuple(v) for k, v in shapes.items()}


def _gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name()


@dataclass
class EngineInfo:
    tensorrt: str
    gpu: str
    precision: str
    profile: dict
    weights_hash: str
    onnx_export: str
    build_seconds: float
    refits: list


def build_engine(export_dir: str | Path, engine_path: str | Path, *, precision: str = "fp16",
                 profile: Profile | None = None, workspace_gib: float = 8.0, overwrite: bool = False) -> EngineInfo:
    """Build a refittable engine from an ONNX export directory."""
    if precision not in PRECISIONS:
        raise ConfigError(f"TensorRT precision must be one of {', '.join(PRECISIONS)}, got '{precision}'")
    engine_path = Path(engine_path)
    if engine_path.exists() and not overwrite:
        raise OutputExistsError(f"engine {engine_path} already exists: pass --overwrite to rebuild it")
    trt = _require_tensorrt()
    export_dir = Path(export_dir)
    meta = load_export_metadata(export_dir)
    profile = profile or Profile()
    t0 = time.perf_counter()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(export_dir / "unet" / MODEL_NAME)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(f"TensorRT cannot parse the ONNX export: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * 2**30))
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    elif precision == "bf16":
        config.set_flag(trt.BuilderFlag.BF16)
    config.set_flag(trt.BuilderFlag.REFIT)
    cache_path = engine_path.with_suffix(".timing-cache")
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.exists() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    opt_profile = builder.create_optimization_profile()
    shapes = _shapes(meta, profile)
    for name, (lo, opt, hi) in shapes.items():
        opt_profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(opt_profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineError("TensorRT failed to build the engine (see the TensorRT log above)")
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(engine_path) as tmp:
        tmp.write_bytes(bytes(serialized))
    cache_path.write_bytes(bytes(config.get_timing_cache().serialize()))
    info = EngineInfo(tensorrt=trt.__version__, gpu=_gpu_name(), precision=precision,
                      profile={k: [list(s) for s in v] for k, v in shapes.items()}, weights_hash=meta["weights_hash"],
                      onnx_export=str(export_dir), build_seconds=round(time.perf_counter() - t0, 2), refits=[])
    _write_info(engine_path, info)
    return info


def _info_path(engine_path: Path) -> Path:
    return engine_path.with_suffix(".json")


def _write_info(engine_path: Path, info: EngineInfo) -> None:
    write_text(_info_path(engine_path), json.dumps(asdict(info), indent=2) + "\n")


def load_engine_info(engine_path: str | Path) -> EngineInfo:
    path = _info_path(Path(engine_path))
    if not path.is_file():
        raise ModelNotFoundError(f"no metadata {path} next to the engine: rebuild it with esd-sdk export --format tensorrt")
    return EngineInfo(**json.loads(path.read_text()))


def load_engine(engine_path: str | Path):
    """Deserialize an engine after checking it was built by this TensorRT for this GPU."""
    trt = _require_tensorrt()
    engine_path = Path(engine_path)
    info = load_engine_info(engine_path)
    if info.tensorrt != trt.__version__:
        raise EngineError(f"engine {engine_path} was built with TensorRT {info.tensorrt}, this is {trt.__version__}: "
                          "rebuild it (esd-sdk export --format tensorrt --overwrite)")
    if info.gpu != _gpu_name():
        raise EngineError(f"engine {engine_path} was built for {info.gpu}, this GPU is {_gpu_name()}: rebuild it here")
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
    if engine is None:
        raise EngineError(f"engine {engine_path} could not be deserialized: rebuild it")
    return engine, info


def refit_engine(engine_path: str | Path, export_dir: str | Path, delta_path: str | Path) -> EngineInfo:
    """Apply an ESD delta to a refittable engine built from ``export_dir`` (the delta's base), in place."""
    from ..delta import read_delta
    from .refit import refit_weights

    trt = _require_tensorrt()
    engine_path = Path(engine_path)
    engine, info = load_engine(engine_path)
    weights = refit_weights(export_dir, delta_path)  # checks the base hash against the export
    t0 = time.perf_counter()
    refitter = trt.Refitter(engine, trt.Logger(trt.Logger.WARNING))
    arrays = []  # TensorRT keeps pointers: the arrays must outlive refit_cuda_engine()
    for name, value in weights.items():
        arrays.append(value)
        if not refitter.set_named_weights(name, trt.Weights(value)):
            raise RefitError(f"TensorRT refused new weights for {name}: rebuild the engine instead")
    missing = refitter.get_missing_weights()
    if missing:
        raise RefitError(f"refit needs weights the delta does not change ({missing[:3]}...): rebuild the engine instead")
    if not refitter.refit_cuda_engine():
        raise RefitError("TensorRT refit failed: rebuild the engine instead")
    with atomic_file(engine_path) as tmp:
        tmp.write_bytes(bytes(engine.serialize()))
    meta = read_delta(delta_path)[1]
    info.weights_hash = meta.get("edited_hash", "unknown")
    info.refits.append({"delta": str(delta_path), "seconds": round(time.perf_counter() - t0, 3),
                        "tensors": len(weights)})
    _write_info(engine_path, info)
    return info
