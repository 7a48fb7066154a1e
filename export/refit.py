"""Map UNet parameters to ONNX initializers, so an ESD delta can update an exported model
(or a TensorRT engine built from it) without re-exporting or rebuilding.

The exporter renames and transposes weights (a Linear's weight becomes a transposed MatMul
initializer such as ``onnx::MatMul_1234``). As NVIDIA's Stable Diffusion demo does, the map is
built by matching values: each initializer's bytes are hashed and compared with each
parameter's, as is and transposed, in the export's precision. Parameters whose values are
shared with another parameter are ambiguous and refused at refit time.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from ..errors import RefitError

REFIT_MAP_NAME = "refit_map.json"



def _digest(a: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(a).tobytes() + str(a.shape).encode()).hexdigest()


def param_digests(unet: torch.nn.Module, precision: str) -> dict[str, list[str | None]]:
    """{param name: [digest as is, digest transposed (2-D only)]} in the export's precision: what
    `build_refit_map` needs from the UNet, computed before the export frees it."""
    dtype = np.float16 if precision == "fp16" else np.float32
    digests = {}
    for name, p in unet.named_parameters():
        a = p.detach().cpu().numpy().astype(dtype)
        digests[name] = [_digest(a), _digest(a.T) if a.ndim == 2 else None]
    return digests


def build_refit_map(onnx_path: str | Path, unet: torch.nn.Module | dict, precision: str) -> dict:
    """{param name: {"initializer": name, "transpose": bool}} plus the list of ambiguous params.

    ``unet`` is the UNet or its `param_digests`. The initializers are read one at a time (SD-size
    exports keep them in an external file)."""
    import onnx
    from onnx import numpy_helper

    digests = unet if isinstance(unet, dict) else param_digests(unet, precision)
    onnx_path = Path(onnx_path)
    model = onnx.load(str(onnx_path), load_external_data=False)
    by_hash: dict[str, list[str]] = {}
    for init in model.graph.initializer:
        tensor = onnx.TensorProto()
        tensor.CopyFrom(init)  # to_array loads external data into the tensor: a copy, dropped after
        by_hash.setdefault(_digest(numpy_helper.to_array(tensor, str(onnx_path.parent))), []).append(init.name)
    mapping, ambiguous, missing = {}, [], []
    seen: dict[str, str] = {}
    for name, (as_is, transposed) in digests.items():
        found = None
        for transpose, digest in ((False, as_is), (True, transposed)):
            names = by_hash.get(digest) if digest else None
            if names:
                found = {"initializer": names[0], "transpose": transpose}
                if len(names) > 1:
                    ambiguous.append(name)
                break
        if found is None:
            missing.append(name)
            continue
        if found["initializer"] in seen:
            ambiguous += [name, seen[found["initializer"]]]
        seen[found["initializer"]] = name
        mapping[name] = found
    return {"precision": precision, "params": mapping, "ambiguous": sorted(set(ambiguous)), "unmatched": missing}


def refit_weights(export_dir: str | Path, delta_path: str | Path) -> dict[str, np.ndarray]:
    """New values of the ONNX initializers that an ESD delta changes: {initializer name: array}.

    The export must have been made from the delta's base UNet (its weights hash is checked)."""
    import onnx
    from onnx import numpy_helper

    from ..delta import delta_names, read_delta, shifted
    from .onnx import MODEL_NAME, load_export_metadata

    export_dir = Path(export_dir)
    meta = load_export_metadata(export_dir)
    delta, delta_meta = read_delta(delta_path)
    if delta_meta.get("base_hash") and delta_meta["base_hash"] != meta["weights_hash"]:
        raise RefitError(f"the delta was made for base {delta_meta['base_hash'][:19]} but this export holds "
                         f"{meta['weights_hash'][:19]}: export the delta's base model, or refit the right export")
    refit_map = json.loads((export_dir / "unet" / REFIT_MAP_NAME).read_text())
    model = onnx.load(str(export_dir / "unet" / MODEL_NAME), load_external_data=True)
    initializers = {i.name: i for i in model.graph.initializer}
    dtype = np.float16 if refit_map["precision"] == "fp16" else np.float32
    out = {}
    for name in delta_names(delta):
        if name in refit_map["ambiguous"]:
            raise RefitError(f"{name} shares its values with another weight in the export; rebuild instead of refitting")
        entry = refit_map["params"].get(name)
        if entry is None:
            raise RefitError(f"{name} has no matching initializer in the export (folded by the exporter, or fused by "
                             "ONNX Runtime's optimizer): re-export with optimize=False (--no-optimize) to refit it")
        current = torch.from_numpy(numpy_helper.to_array(initializers[entry["initializer"]]).astype(np.float32))
        if entry["transpose"]:
            current = current.T
        value = shifted(current, delta, name)
        out[entry["initializer"]] = (value.T if entry["transpose"] else value).contiguous().numpy().astype(dtype)
    return out


def refit_onnx(export_dir: str | Path, delta_path: str | Path, output_path: str | Path) -> Path:
    """Write a copy of an exported ONNX model with a delta's weights applied (no re-export)."""
    import onnx
    from onnx import numpy_helper

    from .onnx import MODEL_NAME

    weights = refit_weights(export_dir, delta_path)
    model = onnx.load(str(Path(export_dir) / "unet" / MODEL_NAME), load_external_data=True)
    for init in model.graph.initializer:
        if init.name in weights:
            init.CopyFrom(numpy_helper.from_array(weights[init.name], init.name))
    onnx.save(model, str(output_path))
    return Path(output_path)
