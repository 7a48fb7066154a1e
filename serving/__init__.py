"""Serve an edited model: one runtime API over PyTorch, ONNX Runtime and TensorRT, a
text-to-image pipeline on it, a micro-batching thread-safe service, the edited-vs-unedited
latency benchmark and an HTTP server (FastAPI) with a review page. Installed as ``esd_sdk.serving``.

    >>> from esd_sdk.serving import Service, open_pipeline
    >>> pipe = open_pipeline("erased-circle", backend="onnxruntime")   # uses erased-circle-onnx/
    >>> service = Service(pipe, max_batch=8)                         # share it between threads
    >>> image = service.generate("a red circle", seed=0)             # (H, W, 3) floats in [0, 1]
"""

from ..errors import DeadlineExceededError, QueueFullError, ServiceClosedError, ServiceError
from .pipeline import Limits, Text2ImagePipeline, open_comparison, open_pipeline
from .runtime import BACKENDS, OnnxRuntime, TensorRTRuntime, TorchRuntime, UNetRuntime, load_runtime
from .service import Request, Result, Service, Stats

__all__ = [
    "BACKENDS", "DeadlineExceededError", "Limits", "OnnxRuntime", "QueueFullError", "Request", "Result", "Service",
    "ServiceClosedError", "ServiceError", "Stats", "TensorRTRuntime", "Text2ImagePipeline", "TorchRuntime",
    "UNetRuntime", "load_runtime", "open_comparison", "open_pipeline",
]
