"""esd-sdk: erase a concept from a text-to-image diffusion model and ship the result.

Implements ESD ("Erasing Concepts from Diffusion Models", Gandikota et al., ICCV 2023).

    >>> import esd_sdk
    >>> base = esd_sdk.load_base("toy")                 # or a diffusers directory / hub id
    >>> images = esd_sdk.generate(base, "a red circle", n=4)
    >>> esd_sdk.image_grid(images).save("grid.png")
"""

from .errors import *  # noqa: F401,F403  (every error class; see errors.__all__)
from .errors import __all__ as _errors
from .generate import GenerationConfig, generate, image_grid
from .loading import DEFAULT_MODEL, BaseModel, load_base, toy_model_path, weights_hash

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "BaseModel",
    "DEFAULT_MODEL",
    "GenerationConfig",
    "load_base",
    "generate",
    "image_grid",
    "toy_model_path",
    "weights_hash",
    *[n for n in _errors if n != "require"],
]
