"""esd-sdk: erase a concept from a text-to-image diffusion model and ship the result.

Implements ESD ("Erasing Concepts from Diffusion Models", Gandikota et al., ICCV 2023).

    >>> import esd_sdk
    >>> base = esd_sdk.load_base("toy")                                  # or a diffusers directory / hub id
    >>> result = esd_sdk.erase(base, "circle", method="u", out="erased-circle")   # base is left as it was
    >>> images = esd_sdk.generate(base, "a red circle", n=4, unet=result.unet)
    >>> esd_sdk.image_grid(images).save("grid.png")
    >>> esd_sdk.export("erased-circle", format="onnx")                   # -> erased-circle-onnx/
    >>> pipe = esd_sdk.open_pipeline("erased-circle", backend="onnxruntime")

Every error is an `EsdError` (see `esd_sdk.errors`); each is re-exported here.
"""

from .artifact import load_edited_unet, load_manifest
from .config import EraseConfig
from .delta import apply_delta
from .training import EraseResult, StepEnd, erase
from .errors import (
    AttackError,
    ConfigError,
    CorruptWeightsError,
    DeadlineExceededError,
    DeltaMismatchError,
    EngineError,
    EraseInterrupted,
    EsdError,
    ExportError,
    MissingDependencyError,
    ModelNotFoundError,
    NonFiniteLossError,
    NotADiffusersModelError,
    OutputExistsError,
    ParityError,
    QueueFullError,
    RefitError,
    ServiceClosedError,
    ServiceError,
    StaleExportError,
    TritonError,
    UnsafeWeightsError,
    UnsupportedModelError,
)
from .generation import GenerationConfig, generate, image_grid
from .loading import DEFAULT_MODEL, BaseModel, load_base, toy_model_path, weights_hash

__version__ = "0.1.0"


def __getattr__(name: str):
    # The export and serving packages load on first use: `import esd_sdk` stays light.
    if name == "export":
        import importlib

        return importlib.import_module(".export", __name__)  # a callable module: esd_sdk.export(...)
    if name == "open_pipeline":
        from .serving import open_pipeline

        return open_pipeline
    raise AttributeError(f"module 'esd_sdk' has no attribute '{name}'")


__all__ = [
    "__version__",
    # models and images
    "BaseModel", "DEFAULT_MODEL", "GenerationConfig", "load_base", "generate", "image_grid", "toy_model_path",
    "weights_hash",
    # erase and its artifact
    "EraseConfig", "EraseResult", "StepEnd", "erase", "apply_delta", "load_edited_unet", "load_manifest",
    # ship and serve
    "export", "open_pipeline",
    # errors
    "EsdError", "ConfigError", "ModelNotFoundError", "NotADiffusersModelError", "UnsupportedModelError",
    "CorruptWeightsError", "UnsafeWeightsError", "OutputExistsError", "MissingDependencyError", "DeltaMismatchError",
    "StaleExportError", "NonFiniteLossError", "EraseInterrupted", "AttackError", "ExportError", "ParityError",
    "RefitError", "EngineError", "ServiceError", "QueueFullError", "ServiceClosedError", "DeadlineExceededError",
    "TritonError",
]
