"""Export an edited UNet to ONNX (through optimum), TensorRT engines and a Triton repository.

Installed as ``esd_sdk.export``.

    >>> from esd_sdk.export import export_onnx, write_triton_repository
    >>> export_onnx("erased-circle", "erased-circle-onnx")
    >>> write_triton_repository("erased-circle-onnx", "triton-repo")
"""

from ..errors import ExportError, ParityError, RefitError
from .onnx import OnnxExport, check_parity, export_onnx, load_export_metadata
from .refit import build_refit_map, refit_onnx, refit_weights
from .triton import parse_pbtxt, to_pbtxt, write_triton_repository

__all__ = [
    "ExportError", "OnnxExport", "ParityError", "RefitError", "build_refit_map", "check_parity", "export_onnx",
    "load_export_metadata", "parse_pbtxt", "refit_onnx", "refit_weights", "to_pbtxt", "write_triton_repository",
]
