"""One call for every deployable format: the library owns the chaining (ONNX -> TensorRT,
ONNX -> Triton), so the CLI, the benchmark and a user's script all do it the same way.

    >>> import esd_sdk
    >>> esd_sdk.export("erased-circle", format="onnx")                    # -> erased-circle-onnx/
    >>> esd_sdk.export("erased-circle", format="tensorrt", precision="fp16")  # -> erased-circle-tensorrt/
    >>> esd_sdk.export("erased-circle", format="triton", out="triton-repo")

Layouts (each written atomically, or not at all):

    onnx       OUT/unet/model.onnx (+ external data), refit_map.json, esd_export.json
    tensorrt   OUT/onnx/ (the fp32 ONNX export it was built from) and OUT/unet.plan (+ .json)
    triton     OUT/unet/config.pbtxt, OUT/unet/1/model.onnx (a Triton model repository)
    pipeline       OUT/: a diffusers pipeline directory, also an erase output (export/pipeline.py)
    onnx-pipeline  OUT/: optimum's ONNX Runtime pipeline layout (export/onnx_pipeline.py)
    lora           OUT/pytorch_lora_weights.safetensors (+ kohya keys): the delta as a LoRA (export/lora.py)
    single-file    OUT.safetensors: the original SD checkpoint layout (export/single_file.py)
    triton-t2i     OUT/text2image/config.pbtxt, 1/model.py: prompts in, images out (serving/triton_app.py)
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from ..files import atomic_dir, check_output
from .onnx import OnnxExport, export_onnx
from .tensorrt import ENGINE_NAME

FORMATS = ("onnx", "tensorrt", "triton", "pipeline", "onnx-pipeline", "lora", "single-file", "triton-t2i")


@dataclass
class Exported:
    """What `export` returns."""

    format: str
    directory: Path  # the output directory (single-file: the output file)
    onnx: OnnxExport | None = None  # the parity-checked UNet ONNX export the ONNX formats start from
    engine: object | None = None  # tensorrt: the EngineInfo of OUT/unet.plan
    written: object | None = None  # pipeline, onnx-pipeline, lora, single-file: their writer's result

    def describe(self) -> str:
        if self.written is not None:
            return self.written.describe()
        parity = f"ONNX parity max |diff| {self.onnx.parity.max_abs_diff:.2g} <= {self.onnx.parity.tolerance:g}"
        if self.engine is not None:
            e = self.engine
            return (f"built {self.directory / ENGINE_NAME} ({e.precision}, TensorRT {e.tensorrt}, {e.gpu}) in "
                    f"{e.build_seconds:.1f}s; {parity}")
        if self.format == "triton":
            return f"wrote Triton repository {self.directory} (onnxruntime_onnx, {self.onnx.precision}); {parity}"
        return f"wrote {self.onnx.model_path} ({self.onnx.precision}, opset {self.onnx.opset}) in {self.onnx.seconds:.1f}s; {parity}"


def default_output(source: str | Path, format: str) -> Path:
    """Where `esd-sdk export SOURCE --format F` writes by default: SOURCE-F next to SOURCE."""
    source = Path(source)
    if format == "single-file":
        return source.parent / f"{source.name}.safetensors"
    return source.parent / f"{source.name}-{format}"


def export(source: str | Path, format: str = "onnx", out: str | Path | None = None, *, precision: str | None = None,
           opset: int = 17, dynamic: bool = False, max_batch_size: int = 8, rank: int | None = None,
           rank_energy: float | None = None, overwrite: bool = False, optimize: bool | None = None) -> Exported:
    """Export the UNet of ``source`` (an erase output, a UNet or a pipeline directory).

    Args:
        format: "onnx", "tensorrt" (needs a CUDA GPU and the `gpu` extra) or "triton".
        out: output directory [SOURCE-FORMAT next to SOURCE].
        precision: ONNX and Triton: fp32 [default] or fp16; TensorRT: fp16 [default], bf16 or fp32.
        opset: ONNX opset (>= 17).
        dynamic: TensorRT: a dynamic profile (batch 1-8, latent 32-128) instead of a static one.
        max_batch_size: Triton (both formats): the model's max batch size.
        rank, rank_energy: LoRA: a fixed rank, or the smallest rank per tensor keeping this share of
            its delta's energy (squared singular values) [energy 0.99].
        overwrite: replace an existing output (only once the new one is complete).
        optimize: ONNX: fuse the graph with ONNX Runtime's optimizer (see `export_onnx`) [on,
            falling back to the plain graph if it fails parity]; TensorRT always builds from
            the plain graph.
    """
    if format not in FORMATS:
        raise ConfigError(f"export format must be one of {', '.join(FORMATS)}, got '{format}'")
    out = check_output(out if out is not None else default_output(source, format), overwrite)
    if format in ("pipeline", "lora", "single-file", "triton-t2i"):
        if precision is not None:
            raise ConfigError(f"--precision applies to the ONNX and TensorRT formats; {format} keeps the model's")
        if format == "pipeline":
            from .pipeline import export_pipeline

            return Exported(format, out, written=export_pipeline(source, out, overwrite=overwrite))
        if format == "lora":
            from .lora import export_lora

            return Exported(format, out, written=export_lora(source, out, rank=rank, energy=rank_energy,
                                                              overwrite=overwrite))
        if format == "triton-t2i":
            from ..serving.triton_app import write_text2image_repository

            return Exported(format, out, written=write_text2image_repository(source, out, max_batch_size=max_batch_size,
                                                                             overwrite=overwrite))
        from .single_file import export_single_file

        return Exported(format, out, written=export_single_file(source, out, overwrite=overwrite))
    if format == "tensorrt":
        from .tensorrt import Profile, _require_tensorrt, _write_info, build_engine

        _require_tensorrt()  # fail in one line before the ONNX export on machines without a GPU
        with atomic_dir(out, overwrite=overwrite) as tmp:
            onnx = export_onnx(source, tmp / "onnx", precision="fp32", opset=opset, optimize=False)
            engine = build_engine(tmp / "onnx", tmp / ENGINE_NAME, precision=precision or "fp16",
                                  profile=Profile.dynamic() if dynamic else None)
        # Paths recorded while building pointed into the work directory: point them at the output.
        onnx.directory, onnx.model_path = out / "onnx", out / "onnx" / onnx.model_path.relative_to(tmp / "onnx")
        engine.onnx_export = str(onnx.directory)
        _write_info(out / ENGINE_NAME, engine)
        return Exported(format, out, onnx, engine)
    if precision == "bf16":
        raise ConfigError("ONNX export precision must be fp32 or fp16 (bf16 is for TensorRT engines)")
    if format == "onnx-pipeline":
        from .onnx_pipeline import export_onnx_pipeline

        written = export_onnx_pipeline(source, out, precision=precision or "fp32", opset=opset, overwrite=overwrite)
        return Exported(format, out, written.unet, written=written)
    if format == "onnx":
        return Exported(format, out, export_onnx(source, out, precision=precision or "fp32", opset=opset,
                                                 overwrite=overwrite, optimize=optimize))
    from .triton import write_triton_repository

    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.onnx-") as tmp:
        onnx = export_onnx(source, Path(tmp) / "onnx", precision=precision or "fp32", opset=opset)
        write_triton_repository(Path(tmp) / "onnx", out, max_batch_size=max_batch_size, overwrite=overwrite)
    return Exported(format, out, onnx)
