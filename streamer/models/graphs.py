"""Running an ONNX graph (Perch, or a student as ``streamer`` exports it) in onnxruntime or
OpenVINO, in fp32 or bf16.

Both backends are behind one small interface, :class:`Graph`: declared inputs and outputs
(name and shape, ``None`` for a dynamic dimension) and ``run(output_names, feeds)``.

The rules, checked in the parent before any model loads (:func:`resolve_backend`):

* **fp32** (the default) runs in onnxruntime, or in OpenVINO when asked for (``--backend
  openvino``, or ``auto`` with a tuned profile that measured it faster). OpenVINO's CPU plugin
  picks bf16 by itself on CPUs that have it, so fp32 sets its inference precision to f32
  explicitly; without that, one Perch output moved by 0.19 instead of 2e-5.
* **bf16** runs only where the CPU computes bf16 in hardware (AVX512-BF16 or AMX): emulated
  bf16 is slower than fp32. onnxruntime has no bf16 kernels for x86 CPUs, so bf16 means
  OpenVINO with its inference precision set to bf16.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from streamer.config import BACKEND_CHOICES, BACKENDS, PRECISIONS
from streamer.errors import ArtifactError, ConfigError, DependencyError

log = logging.getLogger(__name__)

#: /proc/cpuinfo flags that mean bf16 arithmetic in hardware.
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
# numpy is imported where it is used: ThreadSettings and BackendChoice, which the settings and
# the plans carry, need none of it.
if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class ThreadSettings:
    """Threading of one process's models.

    ``intra_op_threads=None`` leaves the backends' and torch's own defaults untouched (the way
    the original script ran; the benchmark baseline needs it).
    """

    intra_op_threads: int | None = None
    inter_op_threads: int = 1
    allow_spinning: bool = False


@dataclass(frozen=True)
class BackendChoice:
    """Which backend runs the ONNX graphs of a run, in which precision (picklable)."""

    backend: str = "onnxruntime"
    precision: str = "fp32"

    def describe(self) -> str:
        return f"{self.backend} {self.precision}"


@dataclass(frozen=True)
class Port:
    name: str
    shape: tuple[int | None, ...] | None


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError as exc:
        raise DependencyError(
            "onnxruntime is required to run Perch (pip install onnxruntime; on Kaggle attach its wheel)"
        ) from exc
    return onnxruntime


def import_openvino():
    try:
        import openvino
    except ImportError as exc:
        from streamer.install import install_hint
        raise DependencyError(
            f"OpenVINO is not installed: {install_hint('openvino')} (or run with --backend onnxruntime)"
        ) from exc
    return openvino


def openvino_available() -> bool:
    try:
        import_openvino()
    except DependencyError:
        return False
    return True


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux names them (empty where /proc/cpuinfo is absent)."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def hardware_bf16() -> str | None:
    """The CPU feature that computes bf16 here (``amx_bf16`` or ``avx512_bf16``), or ``None``."""
    flags = cpu_flags()
    for flag in reversed(BF16_CPU_FLAGS):  # AMX first: the faster of the two
        if flag in flags:
            return flag
    return None


def resolve_backend(backend: str, precision: str, *, profile_backend: str | None = None) -> BackendChoice:
    """The backend a run uses, from ``--backend`` and ``--precision`` (see the module notes).

    ``profile_backend`` is a tuned profile's measured choice, used by ``auto`` in fp32.

    Raises:
        ConfigError: bf16 on a CPU without it, or bf16 with ``--backend onnxruntime``.
        DependencyError: OpenVINO needed but not installed.
    """
    if backend not in BACKEND_CHOICES:
        raise ConfigError(f"--backend must be one of {', '.join(BACKEND_CHOICES)}, got {backend!r}")
    if precision not in PRECISIONS:
        raise ConfigError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "bf16":
        if hardware_bf16() is None:
            raise ConfigError(
                "--precision bf16 needs a CPU with AVX512-BF16 or AMX, and this one has neither "
                "(emulated bf16 is slower than fp32); run with --precision fp32"
            )
        if backend == "onnxruntime":
            raise ConfigError(
                "--precision bf16 runs in OpenVINO: onnxruntime has no bf16 kernels for x86 CPUs; "
                "use --backend openvino or auto"
            )
        try:
            import_openvino()
        except DependencyError as exc:  # onnxruntime cannot run bf16: the hint is OpenVINO, or fp32
            from streamer.install import install_hint

            raise DependencyError(
                f"--precision bf16 runs in OpenVINO, which is not installed: {install_hint('openvino')}, "
                "or drop --precision bf16 (fp32 runs in onnxruntime)"
            ) from exc
        return BackendChoice("openvino", "bf16")
    if backend == "auto":
        backend = profile_backend if profile_backend in BACKENDS else "onnxruntime"
        if backend == "openvino" and not openvino_available():
            log.info("the tuned profile chose OpenVINO, which is not installed here: onnxruntime")
            backend = "onnxruntime"
    if backend == "openvino":
        import_openvino()
    return BackendChoice(backend, "fp32")


class Graph:
    """One loaded ONNX graph. ``inputs``/``outputs``: the declared ports, in order.
    :meth:`run` takes any batch; callers cut it to :func:`windows_per_call`."""

    backend = ""
    precision = "fp32"
    inputs: list[Port]
    outputs: list[Port]

    def keep_outputs(self, names: list[str]) -> None:
        """Only these outputs will be asked for (a backend may then skip the others)."""

    def run(self, names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:  # pragma: no cover - interface
        raise NotImplementedError


#: Windows per model call and intra-op thread (see :func:`windows_per_call`).
WINDOWS_PER_THREAD = 3


def windows_per_call(threads: ThreadSettings) -> int | None:
    """How many windows a model call takes when ``streamer`` sets the threads (``None``: the
    whole batch at once, as the original script ran).

    onnxruntime keeps, per session, an arena as large as the largest call's working set and
    never gives it back, and its memory pattern plans a second such block per input shape: at
    12 windows a call the B3 stand-in's consumer held about 1.4 GB. At 3 windows per thread it
    holds under 0.4 GB, and on one thread the smaller calls are also faster (Perch 25.8 → 22.5,
    students 15.4 → 13.7 ms per window, AMD EPYC), the working set staying in the caches."""
    if threads.intra_op_threads is None:
        return None
    return WINDOWS_PER_THREAD * max(1, int(threads.intra_op_threads))


_shared_arena_registered = False


def _register_shared_arena(ort) -> None:
    """One CPU arena for every session of this process (instead of one per session, each as
    large as its largest call); registered once."""
    global _shared_arena_registered
    if _shared_arena_registered:
        return
    info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
    ort.create_and_register_allocator(info, ort.OrtArenaCfg({"arena_extend_strategy": 0}))
    _shared_arena_registered = True


def session_options(threads: ThreadSettings):
    """onnxruntime session options for a thread setting (untouched defaults when the thread
    count is ``None``: the baseline runs as the original script did).

    With the threads set: those threads, no spinning unless asked, and memory kept small (see
    :func:`windows_per_call`): the process's sessions share one arena and the memory pattern
    is off (it reserved a second arena-sized block per input shape, at no measurable gain)."""
    ort = import_onnxruntime()
    options = ort.SessionOptions()
    if threads.intra_op_threads is not None:
        _register_shared_arena(ort)
        options.add_session_config_entry("session.use_env_allocators", "1")
        options.enable_mem_pattern = False
        options.intra_op_num_threads = int(threads.intra_op_threads)
        options.inter_op_num_threads = int(threads.inter_op_threads)
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        spin = "1" if threads.allow_spinning else "0"
        options.add_session_config_entry("session.intra_op.allow_spinning", spin)
        options.add_session_config_entry("session.inter_op.allow_spinning", spin)
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return options


def _ort_shape(shape) -> tuple[int | None, ...] | None:
    if shape is None:
        return None
    return tuple(d if isinstance(d, int) and d > 0 else None for d in shape)


class OrtGraph(Graph):
    backend = "onnxruntime"

    def __init__(self, path: Path, threads: ThreadSettings) -> None:
        ort = import_onnxruntime()
        try:
            self.session = ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise ArtifactError(f"{path}: onnxruntime cannot load this model ({type(exc).__name__}: {exc})") from exc
        self.inputs = [Port(i.name, _ort_shape(i.shape)) for i in self.session.get_inputs()]
        self.outputs = [Port(o.name, _ort_shape(o.shape)) for o in self.session.get_outputs()]

    def run(self, names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(names, feeds)


def openvino_config(threads: ThreadSettings, precision: str) -> dict:
    """OpenVINO CPU plugin settings: the precision always explicit (the plugin would pick bf16
    by itself on a CPU that has it); one stream, latency mode; the thread count and no pinning
    of the plugin's own when ``streamer`` sets the threads (its processes are pinned already)."""
    config = {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32"}
    if threads.intra_op_threads is not None:
        config.update({
            "INFERENCE_NUM_THREADS": int(threads.intra_op_threads),
            "NUM_STREAMS": 1,
            "PERFORMANCE_HINT": "LATENCY",
            "ENABLE_CPU_PINNING": False,
        })
    return config


def _ov_shape(partial) -> tuple[int | None, ...] | None:
    if partial.rank.is_dynamic:
        return None
    return tuple(d.get_length() if d.is_static else None for d in partial)


class OpenVinoGraph(Graph):
    """The graph in OpenVINO's CPU plugin. It is compiled on first use, after
    :meth:`keep_outputs` may have cut the outputs nobody reads (Perch's spatial embedding and
    spectrogram), so that they are neither kept nor copied out."""

    backend = "openvino"

    def __init__(self, path: Path, threads: ThreadSettings, precision: str = "fp32") -> None:
        ov = import_openvino()
        self.path = Path(path)
        self.precision = precision
        self._config = openvino_config(threads, precision)
        self._core = ov.Core()
        try:
            self._model = self._core.read_model(str(path))
        except Exception as exc:
            raise ArtifactError(f"{path}: OpenVINO cannot read this model ({type(exc).__name__}: {exc})") from exc
        self.inputs = [Port(p.get_any_name(), _ov_shape(p.get_partial_shape())) for p in self._model.inputs]
        self.outputs = [Port(p.get_any_name(), _ov_shape(p.get_partial_shape())) for p in self._model.outputs]
        self._request = None
        self._ports: dict = {}

    def keep_outputs(self, names: list[str]) -> None:
        """Compute only these outputs (before the first :meth:`run`)."""
        ov = import_openvino()
        if self._request is None:
            self._model = ov.Model([self._model.output(name) for name in names], self._model.get_parameters(), "kept")

    def compile(self) -> None:
        if self._request is not None:
            return
        try:
            compiled = self._core.compile_model(self._model, "CPU", self._config)
        except Exception as exc:
            raise ArtifactError(f"{self.path}: OpenVINO cannot compile this model ({type(exc).__name__}: {exc})") from exc
        self._model = None  # the compiled model holds what it needs
        self._request = compiled.create_infer_request()
        for port in compiled.outputs:
            for name in port.get_names():
                self._ports[name] = port

    def run(self, names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        import numpy as np

        self.compile()
        result = self._request.infer(feeds)
        return [np.asarray(result[self._ports[name]]) for name in names]


def load_graph(path: str | Path, threads: ThreadSettings, backend: BackendChoice = BackendChoice()) -> Graph:
    """The graph at ``path`` in the chosen backend and precision."""
    if backend.backend == "openvino":
        return OpenVinoGraph(Path(path), threads, backend.precision)
    if backend.precision != "fp32":
        raise ConfigError(f"onnxruntime runs fp32 only, not {backend.precision}")
    return OrtGraph(Path(path), threads)
