"""One hierarchy for every error the SDK raises.

Each error also subclasses the matching built-in, so ``except ValueError`` keeps working,
and its message is one line that names the problem and the fix: the CLI prints it as is.
"""

from __future__ import annotations


class EsdError(Exception):
    """Root of all esd-sdk errors."""


class ConfigError(EsdError, ValueError):
    """A setting or argument is invalid."""


class ModelNotFoundError(EsdError, FileNotFoundError):
    """A model path does not exist or a hub id cannot be reached."""


class NotADiffusersModelError(EsdError, ValueError):
    """A directory exists but does not hold a diffusers model."""


class UnsupportedModelError(EsdError, ValueError):
    """The model's architecture is not one the SDK can edit."""


class CorruptWeightsError(EsdError, OSError):
    """A weights file cannot be read."""


class UnsafeWeightsError(EsdError, ValueError):
    """Pickled weights were found but the user did not allow pickle loading."""


class OutputExistsError(EsdError, FileExistsError):
    """An output path exists and overwriting was not asked for."""


class MissingDependencyError(EsdError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


def require(module: str, extra: str):
    """Import an optional dependency, or raise MissingDependencyError naming the extra."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingDependencyError(
            f"{module} is not installed: pip install 'esd-sdk[{extra}]'") from e
