"""Export an edited UNet to ONNX (through optimum), TensorRT engines and a Triton repository.

Installed as ``esd_sdk.export``. The module itself is callable: ``esd_sdk.export(...)`` is
`esd_sdk.export.export`, the one call that produces every format.

    >>> import esd_sdk
    >>> esd_sdk.export("erased-circle", format="onnx")          # -> erased-circle-onnx/, parity-checked
    >>> esd_sdk.export("erased-circle", format="triton", out="triton-repo")
    >>> from esd_sdk.export import export_onnx, refit_onnx        # the building blocks
"""

import sys
import types

from ..errors import ExportError, ParityError, RefitError
from .formats import FORMATS, Exported, default_output, export
from .onnx import OnnxExport, check_parity, export_onnx, load_export_metadata
from .refit import build_refit_map, refit_onnx, refit_weights
from .triton import parse_pbtxt, to_pbtxt, write_triton_repository

__all__ = [
    "FORMATS", "ExportError", "Exported", "OnnxExport", "ParityError", "RefitError", "build_refit_map", "check_parity",
    "default_output", "export", "export_onnx", "load_export_metadata", "parse_pbtxt", "refit_onnx", "refit_weights",
    "to_pbtxt", "write_triton_repository",
]


class _CallableModule(types.ModuleType):
    """Lets ``esd_sdk.export(...)`` call `export` while ``esd_sdk.export.X`` stays a module."""

    def __call__(self, *args, **kwargs) -> Exported:
        return export(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
