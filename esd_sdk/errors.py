"""Every error the SDK raises, in one hierarchy.

Each error also subclasses the matching built-in, so ``except ValueError`` keeps working,
and its message is one line that names the problem and the fix: the CLI prints it as is.

Which is which, and what a server answers for it:

    EsdError
    ├── ConfigError              the caller's input is invalid                      -> 400
    ├── ModelNotFoundError       a path does not exist, a hub id cannot be reached -> 404
    │   NotADiffusersModelError, UnsupportedModelError, CorruptWeightsError,
    │   UnsafeWeightsError       a model is the wrong kind or cannot be read
    ├── OutputExistsError        an output exists and overwriting was not asked for
    ├── MissingDependencyError   an optional extra is not installed
    ├── DeltaMismatchError       a delta applied to a UNet it was not made from
    ├── StaleExportError         an export holds other weights than the edit it is served with
    ├── NonFiniteLossError, EraseInterrupted      training failed / was interrupted
    ├── ExportError ── ParityError                an export could not be produced / is wrong
    ├── RefitError               new weights cannot be put into an existing export
    ├── EngineError              TensorRT failed to parse, build, load or refit an engine
    ├── TritonError              Triton Inference Server failed to start or to load a model
    ├── AttackError              a red-team attack could not run
    └── ServiceError             the serving engine refused or dropped a request
        ├── QueueFullError       the queue is full                                 -> 429
        ├── ServiceClosedError   shutting down                                     -> 503
        └── DeadlineExceededError  the request's deadline passed before it ran     -> 504
"""

from __future__ import annotations

import importlib


class EsdError(Exception):
    """Root of all esd-sdk errors."""


# -- the caller's input ----------------------------------------------------------------------

class ConfigError(EsdError, ValueError):
    """A setting or argument given by the caller is invalid (HTTP 400)."""


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


class DeltaMismatchError(EsdError, ValueError):
    """A delta was applied to a UNet other than the one it was made from."""


class StaleExportError(EsdError, ValueError):
    """An export holds other weights than the erase output it is served or refitted with."""


# -- training ----------------------------------------------------------------------------------

class NonFiniteLossError(EsdError, FloatingPointError):
    """The loss became NaN or infinite."""


class EraseInterrupted(EsdError, KeyboardInterrupt):
    """The user interrupted an erase; a checkpoint was saved."""


class AttackError(EsdError, RuntimeError):
    """A red-team attack could not run."""


# -- export ------------------------------------------------------------------------------------

class ExportError(EsdError, RuntimeError):
    """An export could not be produced."""


class ParityError(ExportError):
    """The exported model does not reproduce PyTorch's outputs."""


class RefitError(EsdError, ValueError):
    """New weights cannot be put into an existing export: rebuild it instead."""


class EngineError(EsdError, RuntimeError):
    """TensorRT could not parse, build, deserialise or refit an engine."""


class TritonError(EsdError, RuntimeError):
    """Triton Inference Server could not start, or could not load a model of its repository."""


# -- serving -----------------------------------------------------------------------------------

class ServiceError(EsdError, RuntimeError):
    """The serving engine refused or dropped a request."""


class QueueFullError(ServiceError):
    """The service's queue is full: retry later (HTTP 429)."""


class ServiceClosedError(ServiceError):
    """The service is shutting down and takes no new requests (HTTP 503)."""


class DeadlineExceededError(ServiceError, TimeoutError):
    """The request's deadline passed before its image was made (HTTP 504)."""


def require(module: str, extra: str):
    """Import an optional dependency, or raise MissingDependencyError naming the extra."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingDependencyError(
            f"{module} is not installed: pip install 'esd-sdk[{extra}]'") from e


__all__ = [name for name, value in dict(globals()).items()
           if isinstance(value, type) and issubclass(value, EsdError)] + ["require"]
