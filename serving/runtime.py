"""One small interface for running a UNet, whatever executes it.

    >>> runtime = load_runtime("erased-circle")                                    # PyTorch, from an erase output
    >>> runtime = load_runtime("erased-circle-onnx", backend="onnxruntime")         # an `esd-sdk export` directory
    >>> runtime = load_runtime("erased-circle.plan", backend="tensorrt")            # a TensorRT engine (GPU)
    >>> noise = runtime(sample, timestep, cond)                                     # torch tensors in, torch out

A runtime takes the latent batch ``sample`` (B, C, h, w), the ``timestep`` (B,) and the text
`Conditioning` (hidden states, plus SDXL's added embeddings), all torch tensors on
``runtime.device``, and returns the UNet's prediction as a float32 tensor of the sample's shape.
Everything around the UNet (text encoder, VAE, scheduler) stays in PyTorch: the UNet is where
the time goes (one call per denoising step), and it is the part an ESD edit changes.

Backends:
- ``torch``: the diffusers module, eager or ``torch.compile``d; fp16/bf16 on GPU.
- ``onnxruntime``: an ONNX export, on the CPU, CUDA or TensorRT execution provider; on a GPU
  the inputs and output stay on the device through IO binding.
- ``tensorrt``: an engine from `esd_sdk.export.tensorrt.build_engine`; for a shape it has seen
  before it replays a CUDA graph.
"""

from __future__ import annotations

import copy
import logging
import threading
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from ..conditioning import Conditioning
from ..errors import ConfigError, MissingDependencyError, ModelNotFoundError, require
from ..export.tensorrt import ENGINE_NAME

logger = logging.getLogger(__name__)

BACKENDS = ("torch", "onnxruntime", "tensorrt")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@runtime_checkable
class UNetRuntime(Protocol):
    """What the pipeline needs from a UNet executor."""

    backend: str  # "torch", "onnxruntime" or "tensorrt"
    device: torch.device  # where inputs must live and the output is returned
    config: dict  # the UNet's diffusers config (in_channels, sample_size, cross_attention_dim, ...)

    def __call__(self, sample: torch.Tensor, timestep: torch.Tensor, cond: Conditioning) -> torch.Tensor: ...

    def describe(self) -> str: ...


class TorchRuntime:
    """A diffusers `UNet2DConditionModel`, eager or compiled."""

    backend = "torch"

    def __init__(self, unet: torch.nn.Module, device: str | torch.device = "cpu", precision: str = "fp32",
                 compile: bool = False, inplace: bool = False):
        """Serve ``unet`` on ``device`` in ``precision``. The caller's module is left as it was (a
        copy is converted when its device, dtype or mode must change) unless ``inplace=True``."""
        if precision not in DTYPES:
            raise ConfigError(f"precision must be one of {', '.join(DTYPES)}, got '{precision}'")
        self.device = torch.device(device)
        if self.device.type == "cpu" and precision == "fp16":
            raise ConfigError("fp16 UNets are slow or unsupported on the CPU: use --precision fp32 or bf16 there")
        self.dtype = DTYPES[precision]
        self.precision = precision
        ready = (unet.device == self.device and unet.dtype == self.dtype and not unet.training
                 and not any(p.requires_grad for p in unet.parameters()))
        if not ready and not inplace:
            unet = copy.deepcopy(unet)
        self.unet = unet.to(device=self.device, dtype=self.dtype).eval().requires_grad_(False)
        self.config = dict(unet.config)
        self.compiled = compile
        self._forward = torch.compile(self.unet, dynamic=False) if compile else self.unet

    def __call__(self, sample, timestep, cond):
        kwargs = {"encoder_hidden_states": cond.hidden.to(self.dtype)}
        if cond.added:
            kwargs["added_cond_kwargs"] = {k: v.to(self.dtype) for k, v in cond.added.items()}
        with torch.inference_mode():
            out = self._forward(sample.to(self.dtype), timestep, **kwargs, return_dict=False)[0]
        return out.float()

    def describe(self) -> str:
        return f"torch {self.precision} on {self.device}{' (compiled)' if self.compiled else ''}"


class OnnxRuntime:
    """An ONNX UNet under ONNX Runtime. Inputs follow the export's names and dtypes
    (fp16 exports take fp16 inputs); the output comes back as float32 torch."""

    backend = "onnxruntime"
    PROVIDERS = {"cpu": ["CPUExecutionProvider"],
                 "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
                 "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]}

    def __init__(self, model_path: str | Path, provider: str = "cpu", threads: int | None = None,
                 config: dict | None = None, spinning: bool = True):
        ort = require("onnxruntime", "onnx")
        if provider not in self.PROVIDERS:
            raise ConfigError(f"ONNX Runtime provider must be one of {', '.join(self.PROVIDERS)}, got '{provider}'")
        wanted = self.PROVIDERS[provider]
        if wanted[0] not in ort.get_available_providers():
            raise MissingDependencyError(f"ONNX Runtime here has no {wanted[0]} ({', '.join(ort.get_available_providers())}):"
                                         " pip install 'esd-sdk[gpu]' on a CUDA machine, or use --provider cpu")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        if not spinning:  # idle worker threads sleep at once instead of spinning for more work
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(model_path), options, providers=wanted)
        self.provider = provider
        self.device = torch.device("cpu" if provider == "cpu" else "cuda")
        self.config = config or {}
        self.inputs = {i.name: i for i in self.session.get_inputs()}
        self.input_dtypes = {name: _NP_TYPES[i.type] for name, i in self.inputs.items()}
        self.output_name = self.session.get_outputs()[0].name
        self.output_dtype = _NP_TYPES[self.session.get_outputs()[0].type]

    def _feeds(self, sample, timestep, cond) -> dict[str, torch.Tensor]:
        feeds = {"sample": sample, "timestep": timestep, "encoder_hidden_states": cond.hidden}
        if cond.added:
            feeds.update(cond.added)
        missing = set(self.inputs) - set(feeds)
        if missing:
            raise ConfigError(f"the ONNX UNet needs inputs {sorted(missing)} the pipeline does not provide: "
                              "export the UNet of the same model family")
        return {name: feeds[name].to(_TORCH_TYPES[self.input_dtypes[name]]).contiguous() for name in self.inputs}

    def __call__(self, sample, timestep, cond):
        feeds = self._feeds(sample, timestep.expand(sample.shape[0]), cond)
        if self.device.type == "cpu":
            (out,) = self.session.run([self.output_name], {k: v.numpy() for k, v in feeds.items()})
            return torch.from_numpy(out).float()
        # On the GPU the tensors stay where they are: bind their device memory directly.
        binding = self.session.io_binding()
        for name, tensor in feeds.items():
            binding.bind_input(name, "cuda", tensor.device.index or 0, self.input_dtypes[name], list(tensor.shape),
                               tensor.data_ptr())
        out = torch.empty(sample.shape, dtype=_TORCH_TYPES[self.output_dtype], device=sample.device)
        binding.bind_output(self.output_name, "cuda", out.device.index or 0, self.output_dtype, list(out.shape),
                            out.data_ptr())
        self.session.run_with_iobinding(binding)
        return out.float()

    def describe(self) -> str:
        return f"onnxruntime {self.provider} ({self.input_dtypes['sample'].__name__})"


class TensorRTRuntime:
    """A TensorRT engine. Each new input shape gets its own static buffers and, with
    ``cuda_graph``, a captured CUDA graph replayed on later calls of the same shape."""

    backend = "tensorrt"

    def __init__(self, engine_path: str | Path, cuda_graph: bool = True, config: dict | None = None):
        from ..export.tensorrt import load_engine

        self.engine, self.info = load_engine(engine_path)  # checks TensorRT version and GPU
        import tensorrt as trt

        self.trt = trt
        self.context = self.engine.create_execution_context()
        self.device = torch.device("cuda")
        self.stream = torch.cuda.Stream()
        self.config = config or {}
        self.cuda_graph = cuda_graph
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_name = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
        self.dtypes = {n: _TRT_TO_TORCH[self.engine.get_tensor_dtype(n).name] for n in names}
        self._buffers: dict[tuple, dict[str, torch.Tensor]] = {}
        self._graphs: dict[tuple, torch.cuda.CUDAGraph] = {}
        self._lock = threading.Lock()  # one execution context: one call at a time

    def _prepare(self, feeds: dict[str, torch.Tensor]) -> tuple:
        key = tuple((n, tuple(feeds[n].shape)) for n in self.input_names)
        if key not in self._buffers:
            buffers = {n: torch.empty(feeds[n].shape, dtype=self.dtypes[n], device=self.device) for n in self.input_names}
            buffers[self.output_name] = torch.empty(feeds["sample"].shape, dtype=self.dtypes[self.output_name],
                                                    device=self.device)
            self._buffers[key] = buffers
        return key

    def _bind(self, buffers: dict[str, torch.Tensor]) -> None:
        for name in self.input_names:
            self.context.set_input_shape(name, tuple(buffers[name].shape))
        for name, tensor in buffers.items():
            self.context.set_tensor_address(name, tensor.data_ptr())

    def __call__(self, sample, timestep, cond):
        feeds = {"sample": sample, "timestep": timestep.expand(sample.shape[0]), "encoder_hidden_states": cond.hidden}
        if cond.added:
            feeds.update(cond.added)
        with self._lock, torch.cuda.stream(self.stream):
            key = self._prepare(feeds)
            buffers = self._buffers[key]
            for name in self.input_names:
                buffers[name].copy_(feeds[name])
            if key in self._graphs:
                self._graphs[key].replay()
            else:
                self._bind(buffers)
                self.context.execute_async_v3(self.stream.cuda_stream)  # also the warm-up before capture
                if self.cuda_graph:
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph, stream=self.stream):
                        self.context.execute_async_v3(self.stream.cuda_stream)
                    self._graphs[key] = graph
            out = buffers[self.output_name].float()
        torch.cuda.current_stream().wait_stream(self.stream)
        return out

    def describe(self) -> str:
        return f"tensorrt {self.info.precision} on {self.info.gpu}{' (CUDA graphs)' if self.cuda_graph else ''}"


_NP_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64,
             "tensor(int32)": np.int32, "tensor(double)": np.float64}
_TORCH_TYPES = {np.float32: torch.float32, np.float16: torch.float16, np.int64: torch.int64, np.int32: torch.int32,
                np.float64: torch.float64}
_TRT_TO_TORCH = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "INT32": torch.int32,
                 "INT64": torch.int64}


def load_runtime(source, backend: str = "torch", *, device: str | None = None, precision: str = "fp32",
                 compile: bool = False, provider: str | None = None, threads: int | None = None,
                 spinning: bool = True) -> UNetRuntime:
    """A runtime for ``source``.

    Args:
        source: for ``torch``, a UNet module, an erase output directory, a UNet directory or a
            pipeline directory; for ``onnxruntime``, an `esd-sdk export` directory or a .onnx file;
            for ``tensorrt``, an engine file (.plan) with its metadata next to it.
        backend: "torch", "onnxruntime" or "tensorrt".
        device: torch only: "cpu" or "cuda" (default: cuda when available).
        precision: torch only: fp32, fp16 or bf16.
        compile: torch only: `torch.compile` the UNet.
        provider: onnxruntime only: cpu, cuda or tensorrt (default: cuda when available).
        threads: onnxruntime only: intra-op threads.
        spinning: onnxruntime only: let idle intra-op threads spin (lowest latency for one
            session; turn off when several sessions share the cores, e.g. in an A/B benchmark).
    """
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, got '{backend}'")
    if backend == "torch":
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if isinstance(source, torch.nn.Module):
            return TorchRuntime(source, device, precision, compile)
        from ..artifact import resolve_unet

        unet, _ = resolve_unet(source)
        return TorchRuntime(unet, device, precision, compile, inplace=True)  # loaded here: ours to convert
    path = Path(source)
    if not path.exists():
        raise ModelNotFoundError(f"{path} does not exist: pass the output of esd-sdk export")
    if backend == "onnxruntime":
        from ..export.onnx import MODEL_NAME, load_export_metadata

        if path.is_dir():
            meta = load_export_metadata(path)
            model_path, config = path / "unet" / MODEL_NAME, meta.get("unet_config", {})
        else:
            meta = _sidecar_metadata(path.parent.parent)
            config, model_path = meta.get("unet_config", {}), path
        provider = provider or ("cuda" if torch.cuda.is_available() else "cpu")
        if (meta.get("optimization") or {}).get("target") == "cuda" and provider == "cpu":
            raise ConfigError(f"{path} was optimized for CUDA (GroupNorm/NHWC kernels ONNX Runtime has only there): "
                              "run it with provider cuda, or re-export it on this machine or with --no-optimize")
        return OnnxRuntime(model_path, provider, threads, config, spinning)
    from ..export.tensorrt import load_engine_info

    path = engine_file(path)
    info = load_engine_info(path)
    return TensorRTRuntime(path, config=_sidecar_config(Path(info.onnx_export)))


def engine_file(path: Path) -> Path:
    """The engine of an `esd-sdk export --format tensorrt` directory, or ``path`` itself."""
    path = Path(path)
    if path.is_dir():
        if not (path / ENGINE_NAME).is_file():
            raise ModelNotFoundError(f"no {ENGINE_NAME} in {path}: pass an engine file or the directory "
                                     "esd-sdk export --format tensorrt wrote")
        return path / ENGINE_NAME
    return path


def _sidecar_metadata(export_dir: Path) -> dict:
    """What the ONNX export in ``export_dir`` recorded (esd_export.json), if it is one."""
    from ..export.onnx import load_export_metadata

    try:
        return load_export_metadata(export_dir)
    except ModelNotFoundError:
        return {}


def _sidecar_config(export_dir: Path) -> dict:
    """The UNet config recorded by the ONNX export in ``export_dir``, if it is one."""
    return _sidecar_metadata(export_dir).get("unet_config", {})
