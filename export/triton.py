"""Write a Triton Inference Server model repository for an exported UNet.

    repo/
      unet/
        config.pbtxt          platform onnxruntime_onnx (or tensorrt_plan), dynamic batching
        1/model.onnx          (+ external data)   or   1/model.plan

Every input carries the batch dimension, the timestep included (the ONNX export takes it as
[batch]; Triton sees dims [1] reshaped to []), so Triton can batch requests together.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from ..errors import ConfigError, ModelNotFoundError
from ..files import atomic_dir, check_output
from .onnx import METADATA_NAME, load_export_metadata

PLATFORMS = {"onnx": "onnxruntime_onnx", "tensorrt": "tensorrt_plan"}


def _unet_dims(meta: dict) -> dict[str, list[int]]:
    """Per-input dims without the batch dimension (-1 = dynamic), from the export metadata."""
    cfg = meta["unet_config"]
    dims = {
        "sample": [cfg["in_channels"], -1, -1],
        "timestep": [1],
        "encoder_hidden_states": [-1, cfg["cross_attention_dim"]],
    }
    if "text_embeds" in meta["inputs"]:
        dims["text_embeds"] = [cfg["projection_class_embeddings_input_dim"] - 6 * cfg["addition_time_embed_dim"]]
        dims["time_ids"] = [6]
    return dims


def triton_config(meta: dict, name: str, platform: str, max_batch_size: int, kind: str) -> dict:
    """The model configuration as a plain dict (rendered by `to_pbtxt`)."""
    dtype = "TYPE_FP16" if meta["precision"] == "fp16" else "TYPE_FP32"
    inputs = []
    for input_name, dims in _unet_dims(meta).items():
        entry = {"name": input_name, "data_type": dtype, "dims": dims}
        if input_name == "timestep":
            entry["reshape"] = {"shape": []}
        inputs.append(entry)
    out_channels = meta["unet_config"]["out_channels"]
    preferred = [b for b in (2, 4, 8, 16) if b <= max_batch_size]
    return {
        "name": name,
        "platform": platform,
        "max_batch_size": max_batch_size,
        "input": inputs,
        "output": [{"name": "out_sample", "data_type": dtype, "dims": [out_channels, -1, -1]}],
        "dynamic_batching": {"preferred_batch_size": preferred, "max_queue_delay_microseconds": 100},
        "instance_group": [{"count": 1, "kind": kind}],
    }


def _value(v) -> str:
    if isinstance(v, bool):  # protobuf text format spells them in lower case
        return "true" if v else "false"
    if isinstance(v, str):
        return v if re.fullmatch(r"(TYPE|KIND)_[A-Z0-9]+", v) else json.dumps(v)
    return str(v)


def to_pbtxt(config: dict, indent: int = 0) -> str:
    """Render a dict as protobuf text format (the format of Triton's config.pbtxt)."""
    pad = "  " * indent
    lines = []
    for key, value in config.items():
        if isinstance(value, dict):
            lines += [f"{pad}{key} {{", to_pbtxt(value, indent + 1), f"{pad}}}"]
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            for item in value:
                lines += [f"{pad}{key} {{", to_pbtxt(item, indent + 1), f"{pad}}}"]
        elif isinstance(value, list):
            lines.append(f"{pad}{key}: [ {', '.join(_value(v) for v in value)} ]")
        else:
            lines.append(f"{pad}{key}: {_value(value)}")
    return "\n".join(line for line in lines if line)


_TOKEN = re.compile(r'\s*(?:(#[^\n]*)|([A-Za-z_][A-Za-z0-9_]*)|("(?:[^"\\]|\\.)*")|(-?[0-9.]+(?:e-?[0-9]+)?)|([{}\[\]:,]))')


def parse_pbtxt(text: str) -> dict:
    """Parse protobuf text format into a dict; repeated fields become lists. Enough for Triton configs."""
    tokens, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            if text[pos:].strip() == "":
                break
            raise ConfigError(f"config.pbtxt: cannot parse at {text[pos:pos + 30]!r}")
        pos = m.end()
        if m.group(1):
            continue
        tokens.append(next(g for g in m.groups()[1:] if g is not None))

    def scalar(tok: str):
        if tok in ("true", "false"):
            return tok == "true"
        if tok.startswith('"'):
            return json.loads(tok)
        if re.fullmatch(r"-?[0-9]+", tok):
            return int(tok)
        if re.fullmatch(r"-?[0-9.]+(?:e-?[0-9]+)?", tok):
            return float(tok)
        return tok

    def message(i: int, end: str | None) -> tuple[dict, int]:
        out: dict = {}
        while i < len(tokens) and tokens[i] != end:
            key = tokens[i]
            i += 1
            if tokens[i] == ":":
                i += 1
            if tokens[i] == "{":
                value, i = message(i + 1, "}")
                i += 1
            elif tokens[i] == "[":
                value, i = [], i + 1
                while tokens[i] != "]":
                    if tokens[i] != ",":
                        value.append(scalar(tokens[i]))
                    i += 1
                i += 1
            else:
                value, i = scalar(tokens[i]), i + 1
            if key in out:
                out[key] = (out[key] if isinstance(out[key], list) and isinstance(value, dict) else [out[key]]) + [value]
            else:
                out[key] = value
        return out, i

    return message(0, None)[0]


def write_triton_repository(export_dir: str | Path, output_dir: str | Path, *, name: str = "unet",
                            engine: str | Path | None = None, max_batch_size: int = 8, kind: str = "KIND_GPU",
                            overwrite: bool = False) -> Path:
    """Write a model repository for an ONNX export (and, with ``engine``, for a TensorRT plan instead)."""
    if max_batch_size < 1:
        raise ConfigError(f"max batch size must be >= 1, got {max_batch_size}")
    if kind not in ("KIND_GPU", "KIND_CPU"):
        raise ConfigError(f"instance kind must be KIND_GPU or KIND_CPU, got {kind}")
    export_dir, out = Path(export_dir), Path(output_dir)
    meta = load_export_metadata(export_dir)
    check_output(out, overwrite)
    if engine is not None and not Path(engine).is_file():
        raise ModelNotFoundError(f"engine {engine} does not exist: build it with esd-sdk export --format tensorrt")
    platform = PLATFORMS["tensorrt" if engine else "onnx"]
    with atomic_dir(out, overwrite=overwrite) as tmp:
        version = tmp / name / "1"
        version.mkdir(parents=True)
        if engine:
            shutil.copy2(engine, version / "model.plan")
        else:
            for f in (export_dir / "unet").iterdir():
                shutil.copy2(f, version / f.name)
        config = triton_config(meta, name, platform, max_batch_size, kind)
        (tmp / name / "config.pbtxt").write_text(to_pbtxt(config) + "\n")
        shutil.copy2(export_dir / METADATA_NAME, tmp / name / METADATA_NAME)
    return out
