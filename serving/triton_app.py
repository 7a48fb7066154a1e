"""Text to image on Triton Inference Server: a model repository whose model runs the SDK's
pipeline in Triton's Python backend, with Triton's dynamic batching, and a launcher for the
server that the `nvidia-pytriton` wheel bundles.

    $ esd-sdk export erased-circle --format triton-t2i     # -> erased-circle-triton-t2i/ (a model repository)
    $ esd-sdk serve --model erased-circle --triton         # Triton on :8000 (HTTP) and :8001 (gRPC)

    >>> import numpy as np, tritonclient.http as http
    >>> client = http.InferenceServerClient("localhost:8000")
    >>> prompt = http.InferInput("prompt", [1, 1], "BYTES")
    >>> prompt.set_data_from_numpy(np.array([[b"a red circle"]], dtype=object))
    >>> seed = http.InferInput("seed", [1, 1], "INT64")
    >>> seed.set_data_from_numpy(np.array([[7]]))
    >>> image = client.infer("text2image", [prompt, seed]).as_numpy("image")[0]   # (H, W, 3) uint8

The model, ``text2image``:

    input   prompt    BYTES  [1]
            seed      INT64  [1]   optional [0]
            steps     INT32  [1]   optional [the model's]
            guidance  FP32   [1]   optional [the model's]
    output  image     UINT8  [H, W, 3]

Every input carries the batch dimension, so Triton's dynamic batcher hands `execute` all the
requests that arrived within ``max_queue_delay``; those with the same number of steps run as
one pipeline call (each image keeps its own seed and guidance, so batching does not change
results beyond floating-point noise). A request with invalid arguments gets its own error; the
others in its batch are served. The model's ``parameters`` say what to serve and how, as
`open_pipeline` takes it: ``model`` (an erase output, a pipeline directory, ``toy``, ...;
relative paths are resolved against the model's directory in the repository, so a model copied
into it travels with it), ``backend``, ``unet``, ``device``, ``precision``, ``threads``; edit
them in config.pbtxt to move a deployed repository to another runtime.

How this fits with the UNet repository (`esd-sdk export --format triton`, export/triton.py):
that one serves the UNet alone on Triton's ONNX Runtime or TensorRT backend (latents in, noise
out), for fleets that run their own sampler, tokenizer and VAE, e.g. NVIDIA's TensorRT
diffusion demo. This one takes prompts and returns images; its UNet runs on any runtime of the
pipeline (``backend`` torch, onnxruntime on the ONNX export, tensorrt on the engine). Both are
plain model repositories with different model names: copy both model directories into one
repository and one server serves both.

Running it here. In a Triton container (``nvcr.io/nvidia/tritonserver:<ver>-py3``) install
esd-sdk and run ``tritonserver --model-repository REPO``. Without one, `TritonServer` runs the
server binaries bundled in `nvidia-pytriton` (its Python API is not used), with two fixes
that a plain run needs, both found on this project's CI machine:

- Triton's Python-backend stub embeds the interpreter it finds first on PATH, but links
  ``libpython3.X.so`` by name, so the dynamic loader may pick the system's (Debian's 3.11.2)
  under another interpreter's standard library (pyenv's 3.11.7): ``RLock._recursion_count``
  then goes missing; a Python without a system libpython (3.12 here) cannot start the stub at
  all, and the model load times out. The launcher puts this interpreter's LIBDIR first on
  LD_LIBRARY_PATH.
- The stub (Triton 2.51, pybind11 2.11) is built against the NumPy 1 ABI: under NumPy 2 the
  arrays it makes have zero strides (a BYTES prompt then fails to deserialise, "unpack_from
  requires a buffer of at least 202116112 bytes"). So the stub runs in a small virtual
  environment that puts NumPy 1.26 (``make install`` puts it in ``.venv/triton-numpy``) before
  this interpreter's site-packages; the model's torch code is unaffected.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
import venv
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..distributed import free_port
from ..errors import ConfigError, MissingDependencyError, TritonError
from ..files import atomic_dir, check_output

logger = logging.getLogger(__name__)

MODEL_NAME = "text2image"
# What Triton's Python backend imports: the model lives in this module, tested with the package.
MODEL_PY = '"""Triton Python-backend entry point: the text-to-image model of esd_sdk.serving.triton_app."""\n\n' \
           "from esd_sdk.serving.triton_app import TritonPythonModel  # noqa: F401\n"
NUMPY1_ENV = "ESD_SDK_TRITON_NUMPY"  # where NumPy 1.x for the stub is [sys.prefix/triton-numpy]


# --- the model repository ---------------------------------------------------------------

def text2image_config(parameters: dict[str, str], *, name: str = MODEL_NAME, max_batch_size: int = 8,
                      max_wait_ms: float = 5.0, max_queue: int = 64, deadline_s: float | None = None,
                      instances: int = 1) -> dict:
    """The ``text2image`` model configuration as a plain dict (rendered by `to_pbtxt`)."""
    optional = {"optional": True}
    queue = {"max_queue_size": max_queue}
    if deadline_s is not None:  # Triton rejects a request still queued at its deadline
        queue.update(default_timeout_microseconds=round(deadline_s * 1e6), timeout_action="REJECT")
    return {
        "name": name,
        "backend": "python",
        "max_batch_size": max_batch_size,
        "input": [
            {"name": "prompt", "data_type": "TYPE_STRING", "dims": [1]},
            {"name": "seed", "data_type": "TYPE_INT64", "dims": [1], **optional},
            {"name": "steps", "data_type": "TYPE_INT32", "dims": [1], **optional},
            {"name": "guidance", "data_type": "TYPE_FP32", "dims": [1], **optional},
        ],
        "output": [{"name": "image", "data_type": "TYPE_UINT8", "dims": [-1, -1, 3]}],
        "dynamic_batching": {"max_queue_delay_microseconds": round(max_wait_ms * 1000),
                             "default_queue_policy": queue},
        "instance_group": [{"count": instances, "kind": "KIND_CPU"}],
        "parameters": [{"key": k, "value": {"string_value": str(v)}} for k, v in parameters.items()],
    }


@dataclass
class Text2ImageRepository:
    """What `write_text2image_repository` returns."""

    directory: Path
    model: str  # what the model serves, as recorded in its parameters
    backend: str

    def describe(self) -> str:
        return (f"wrote Triton repository {self.directory} ({MODEL_NAME}: prompt, seed, steps, guidance in, image "
                f"out; {self.model} on {self.backend}); run it with tritonserver --model-repository {self.directory}")


def write_text2image_repository(model: str | Path, out: str | Path, *, backend: str = "torch",
                                unet: str | Path | None = None, device: str | None = None, precision: str = "fp32",
                                threads: int | None = None, max_batch_size: int = 8, max_wait_ms: float = 5.0,
                                max_queue: int = 64, deadline_s: float | None = None, instances: int = 1,
                                warmup: bool = True, allow_pickle: bool = False,
                                overwrite: bool = False) -> Text2ImageRepository:
    """Write a model repository with the ``text2image`` model serving ``model``.

    Args:
        model: what `open_pipeline` takes: an erase output, a pipeline directory, ``toy``, a hub id.
            A local path is recorded as an absolute path.
        backend, unet, device, precision: the pipeline's runtime, as `open_pipeline` takes them.
        threads: intra-op threads of ONNX Runtime and of torch in the model's process [their defaults].
        max_batch_size: images per pipeline call (Triton's max batch size).
        max_wait_ms: how long Triton waits for companions to a request (max queue delay).
        max_queue: requests waiting beyond which Triton rejects new ones.
        deadline_s: a request still queued this long after it arrived is rejected [none].
        instances: model instances (each loads its own pipeline).
        warmup: run a one-step batch of 1 and of ``max_batch_size`` before the model reports ready.
        allow_pickle: let the model load pickled weights (see `load_base`).
    """
    from .runtime import BACKENDS

    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, got '{backend}'")
    if max_batch_size < 1 or max_queue < 1 or instances < 1 or max_wait_ms < 0:
        raise ConfigError("max_batch_size, max_queue and instances must be >= 1 and max_wait_ms >= 0")
    if deadline_s is not None and deadline_s <= 0:
        raise ConfigError(f"deadline_s must be a positive number of seconds, got {deadline_s}")
    local = Path(model)
    parameters = {"model": str(local.resolve()) if local.exists() else str(model), "backend": backend,
                  "precision": precision, "warmup": str(warmup).lower()}
    if unet is not None:
        parameters["unet"] = str(Path(unet).resolve())
    if device is not None:
        parameters["device"] = device
    if threads is not None:
        parameters["threads"] = str(threads)
    if allow_pickle:
        parameters["allow_pickle"] = "true"
    from ..export.triton import to_pbtxt

    out = check_output(out, overwrite)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        (tmp / MODEL_NAME / "1").mkdir(parents=True)
        config = text2image_config(parameters, max_batch_size=max_batch_size, max_wait_ms=max_wait_ms,
                                   max_queue=max_queue, deadline_s=deadline_s, instances=instances)
        (tmp / MODEL_NAME / "config.pbtxt").write_text(to_pbtxt(config) + "\n")
        (tmp / MODEL_NAME / "1" / "model.py").write_text(MODEL_PY)
    return Text2ImageRepository(out, parameters["model"], backend)


# --- the model: what Triton's Python backend runs -----------------------------------------

def to_uint8(images: np.ndarray) -> np.ndarray:
    """Pipeline images (floats in [0, 1]) as the bytes a PNG holds, rounded as `esd_sdk.generate` saves them."""
    return (np.clip(images, 0, 1) * 255).round().astype(np.uint8)


class TritonPythonModel:
    """The ``text2image`` model: Triton's Python backend calls `initialize` once per instance,
    then `execute` with each batch of requests its dynamic batcher formed."""

    def initialize(self, args: dict) -> None:
        from .pipeline import open_pipeline

        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.max_batch = max(1, config["max_batch_size"])
        model = params["model"]
        if not Path(model).is_absolute() and (Path(args["model_repository"]) / model).exists():
            model = str(Path(args["model_repository"]) / model)  # a model copied into the repository
        threads = int(params["threads"]) if params.get("threads") else None
        if threads:  # this process is the model's own: its torch parts (text encoder, VAE) get the same
            import torch

            torch.set_num_threads(threads)
        self.pipeline = open_pipeline(model, params.get("backend", "torch"), params.get("unet") or None,
                                      device=params.get("device") or None, precision=params.get("precision", "fp32"),
                                      threads=threads, allow_pickle=params.get("allow_pickle") == "true")
        if params.get("warmup", "true") == "true":
            for n in sorted({1, self.max_batch}):
                self.pipeline(["warm-up"] * n, seeds=list(range(n)), steps=1)
        logger.info("text2image serving %s", self.pipeline.describe())

    def _rows(self, request, pb_utils) -> list[tuple[str, int, int, float]]:
        """(prompt, seed, steps, guidance) per image of one request, checked by the pipeline."""
        def column(name, default, cast):
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            return [default] * len(prompts) if tensor is None else [cast(v) for v in tensor.as_numpy().reshape(-1)]

        prompts = [p.decode("utf-8") if isinstance(p, bytes) else str(p)
                   for p in pb_utils.get_input_tensor_by_name(request, "prompt").as_numpy().reshape(-1)]
        defaults = self.pipeline.defaults
        seeds = column("seed", 0, int)
        steps = column("steps", defaults.num_inference_steps, int)
        guidance = column("guidance", defaults.guidance_scale, float)
        if len(set(steps)) > 1:  # one request's images share one pipeline call
            raise ConfigError("all images of one request must use the same number of steps")
        pipe = self.pipeline
        pipe.check(prompts, seeds, steps[0], guidance, pipe.default_size, pipe.default_size)
        return list(zip(prompts, seeds, steps, guidance))

    def execute(self, requests: list) -> list:
        import triton_python_backend_utils as pb_utils

        errors: dict[int, str] = {}
        rows: dict[int, list] = {}
        for i, request in enumerate(requests):
            try:
                rows[i] = self._rows(request, pb_utils)
            except ValueError as e:  # a ConfigError from the pipeline's checks, bad UTF-8, a bad number
                errors[i] = str(e)
        # Images with the same number of steps share pipeline calls of up to max_batch images.
        by_steps: dict[int, list[tuple[int, int]]] = defaultdict(list)  # steps -> (request, row)
        for i, request_rows in rows.items():
            by_steps[request_rows[0][2]] += [(i, j) for j in range(len(request_rows))]
        images: dict[tuple[int, int], np.ndarray] = {}
        for steps, items in by_steps.items():
            for start in range(0, len(items), self.max_batch):
                chunk = items[start:start + self.max_batch]
                batch = [rows[i][j] for i, j in chunk]
                try:
                    out = self.pipeline([r[0] for r in batch], seeds=[r[1] for r in batch], steps=steps,
                                        guidance=[r[3] for r in batch])
                except Exception as e:  # fail the requests of this call only; Triton logs the message
                    logger.exception("text2image batch of %d failed", len(batch))
                    errors.update({i: f"generation failed: {e}" for i, _ in chunk})
                    continue
                images.update(zip(chunk, to_uint8(out)))
        responses = []
        for i in range(len(requests)):
            if i in errors:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(errors[i])))
            else:
                stack = np.stack([images[(i, j)] for j in range(len(rows[i]))])  # (n, H, W, 3)
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("image", stack)]))
        return responses


# --- running the server here ----------------------------------------------------------------

def triton_bundle() -> Path:
    """The directory of the server binaries that nvidia-pytriton bundles (its tritonserver/)."""
    import importlib.util

    spec = importlib.util.find_spec("pytriton")  # finds the package without importing it (it pins numpy<2)
    root = Path(next(iter(spec.submodule_search_locations))) / "tritonserver" if spec else None
    if root is None or not (root / "bin" / "tritonserver").is_file():
        raise MissingDependencyError("Triton's server binaries are not installed: pip install --no-deps "
                                     "nvidia-pytriton==0.7.0 (make install does), or run tritonserver in its container")
    return root


def _stub_python(work: Path) -> Path:
    """The bin/ directory of the Python the backend stub embeds: this interpreter, or, under NumPy 2,
    a virtual environment that puts NumPy 1.x before this interpreter's site-packages."""
    if int(np.__version__.split(".")[0]) < 2:
        return Path(sys.executable).parent
    numpy1 = Path(os.environ.get(NUMPY1_ENV, Path(sys.prefix) / "triton-numpy"))
    if not (numpy1 / "numpy").is_dir():
        raise MissingDependencyError(f"Triton's Python-backend stub needs NumPy 1.x beside NumPy {np.__version__}: "
                                     f"pip install --no-deps --target {numpy1} numpy==1.26.4 (make install does), "
                                     f"or set {NUMPY1_ENV}")
    env = work / "python"
    venv.EnvBuilder(symlinks=True, with_pip=False).create(env)
    site_packages = Path(sysconfig.get_path("purelib", vars={"base": str(env), "platbase": str(env)}))
    ours = [p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()]
    (site_packages / "esd_sdk_triton.pth").write_text(
        f"{numpy1}\n" + "".join(f"import site; site.addsitedir({p!r})\n" for p in ours))
    return env / "bin"


class TritonServer:
    """Triton Inference Server on a model repository, as a child process, on loopback by default.

        >>> with TritonServer(repo) as server:        # returns once every model is ready
        ...     client = tritonclient.http.InferenceServerClient(server.http_url)

    `stop` sends SIGTERM: Triton refuses new requests, finishes those in flight, unloads the
    models and exits; the exit code is returned.
    """

    def __init__(self, repository: str | Path, *, host: str = "127.0.0.1", http_port: int | None = None,
                 grpc_port: int | None = None, metrics_port: int | None = None, log_file: str | Path | None = None,
                 exit_timeout_s: int = 30):
        """Ports left None are free ones picked now; ``metrics_port`` None turns metrics off.
        ``log_file`` receives the server's log [a file in its work directory, see `log`]."""
        self.repository = Path(repository).resolve()
        if not self.repository.is_dir():
            raise ConfigError(f"model repository {repository} does not exist")
        self.host = host
        self.http_port = http_port or free_port(host)
        self.grpc_port = grpc_port or free_port(host)
        self.metrics_port = metrics_port
        self.exit_timeout_s = exit_timeout_s
        self._work = Path(tempfile.mkdtemp(prefix="esd-sdk-triton-"))
        self.log_file = Path(log_file) if log_file else self._work / "tritonserver.log"
        self.process: subprocess.Popen | None = None

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.is_file() else ""

    def _command_and_env(self) -> tuple[list[str], dict[str, str]]:
        bundle = triton_bundle()
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        stub = bundle / "python_backend_stubs" / version / "triton_python_backend_stub"
        if not stub.is_file():
            raise TritonError(f"Triton's bundle has no Python-backend stub for Python {version}: use Python 3.8-3.13")
        libdir = Path(sysconfig.get_config_var("LIBDIR") or "")
        if not (libdir / f"libpython{version}.so.1.0").is_file():
            raise TritonError(f"Triton's Python backend needs a shared libpython{version}, not in {libdir}: "
                              "use a Python built with --enable-shared")
        # A backend directory with the stub of this Python version, as Triton looks for it.
        backend = self._work / "backends" / "python"
        backend.mkdir(parents=True)
        for f in (bundle / "backends" / "python").iterdir():
            (backend / f.name).symlink_to(f)
        (backend / stub.name).symlink_to(stub)
        env = dict(os.environ)
        env["PATH"] = f"{_stub_python(self._work)}{os.pathsep}{env.get('PATH', '')}"
        libs = bundle.parent.parent / "nvidia_pytriton.libs"  # the wheel's vendored shared libraries
        env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(libdir), str(libs), env.get("LD_LIBRARY_PATH")]))
        metrics = (["--allow-metrics=true", f"--metrics-port={self.metrics_port}", f"--metrics-address={self.host}"]
                   if self.metrics_port else ["--allow-metrics=false"])
        command = [str(bundle / "bin" / "tritonserver"), f"--model-repository={self.repository}",
                   f"--backend-directory={self._work / 'backends'}", f"--http-address={self.host}",
                   f"--http-port={self.http_port}", f"--grpc-address={self.host}", f"--grpc-port={self.grpc_port}",
                   *metrics, f"--exit-timeout-secs={self.exit_timeout_s}",
                   # Shared-memory regions in /dev/shm are named by this prefix: unique per server.
                   f"--backend-config=python,shm-region-prefix-name=esd-sdk-{os.getpid()}-{self.http_port}-"]
        return command, env

    def start(self, timeout_s: float = 300) -> "TritonServer":
        """Start the server; return once it reports every model ready, or raise `TritonError`
        with the end of its log (and stop it) if it exits or is not ready within ``timeout_s``."""
        command, env = self._command_and_env()
        with open(self.log_file, "ab") as log:
            # A session of its own: a Ctrl-C in the terminal reaches us, and we stop it in order.
            self.process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        logger.info("started tritonserver (pid %d) on %s", self.process.pid, self.http_url)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise TritonError(f"tritonserver exited with code {self.process.returncode} while starting: "
                                  f"{self._log_tail()}")
            if self.ready():
                return self
            time.sleep(0.2)
        self.stop()
        raise TritonError(f"tritonserver was not ready after {timeout_s:g} s: {self._log_tail()}")

    def ready(self) -> bool:
        """The server is up and every model in the repository is ready (Triton's /v2/health/ready)."""
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait(self) -> int:
        """Block until the server exits; its exit code."""
        return self.process.wait()

    def stop(self, timeout_s: float | None = None) -> int | None:
        """SIGTERM, then wait (Triton finishes in-flight requests for up to ``exit_timeout_s``);
        SIGKILL only if it is still running ``timeout_s`` later [exit_timeout_s + 30]. Its exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s if timeout_s is not None else self.exit_timeout_s + 30)
            except subprocess.TimeoutExpired:
                logger.warning("tritonserver did not stop in time: killing it")
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self._work / "backends", ignore_errors=True)
        shutil.rmtree(self._work / "python", ignore_errors=True)
        if self.log_file.parent != self._work:  # else the log stays for the user to read
            shutil.rmtree(self._work, ignore_errors=True)
        return self.process.returncode

    def _log_tail(self, lines: int = 15) -> str:
        """The last error lines of the log on one line (the whole tail if none is marked an error)."""
        text = [line.strip() for line in self.log().splitlines() if line.strip() and not line.startswith(("+", "|"))]
        errors = [line for line in text if line.startswith("E") or "rror" in line]
        return " | ".join((errors or text)[-lines:]) + f" (log: {self.log_file})"

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def serve_triton(model: str | Path, *, host: str = "127.0.0.1", port: int = 8000, metrics: bool = True,
                 ready=None, **repository) -> int:
    """Serve ``model`` with Triton in the foreground until Ctrl-C or SIGTERM: ``esd-sdk serve --triton``.

    HTTP on ``port`` (0: a free one), gRPC on the next port, Prometheus metrics on the one after
    (Triton's 8000/8001/8002 layout). ``repository`` takes `write_text2image_repository`'s
    options; the repository is written to a temporary directory. ``ready(server)`` is called once
    the model is ready. Returns Triton's exit code.
    """
    port = port or free_port(host)
    with tempfile.TemporaryDirectory(prefix="esd-sdk-triton-repo-") as tmp:
        repo = write_text2image_repository(model, Path(tmp) / "repository", **repository).directory
        server = TritonServer(repo, host=host, http_port=port, grpc_port=port + 1,
                              metrics_port=port + 2 if metrics else None)

        def terminate(signum, frame):
            raise KeyboardInterrupt

        previous = signal.signal(signal.SIGTERM, terminate)
        try:
            server.start()
            if ready is not None:
                ready(server)
            server.wait()
        except KeyboardInterrupt:
            pass
        finally:
            code = server.stop()
            signal.signal(signal.SIGTERM, previous)
        return code
