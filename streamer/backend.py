"""Choosing what runs the models of a run (the backend), in the parent, before any worker
starts; ``infer``, ``archive`` and ``streamer cache`` all choose the same way.

1. The students are exported to ONNX (or reused from the cache), unless they stay in torch.
2. When OpenVINO is chosen, a **parity check** runs the check windows (:func:`check_windows`)
   through the whole ensemble twice, with every ONNX graph in onnxruntime fp32 and in the chosen
   backend, and compares the final probabilities. In fp32 OpenVINO is used only when they agree
   within :data:`PARITY_TOLERANCE`; otherwise the run warns and uses onnxruntime. In bf16 (a
   precision the user chose) the difference is measured and reported, never a reason to switch.

The choice and the measured difference go into the run's report (``models`` and
``backend_check`` in ``--report-json``). A verdict is kept in the cache folder, keyed by the
graphs, the backend, the libraries' versions and the CPU, so the check (a few seconds and, for a
moment, both backends' copies of the models in the parent) runs once per machine and models.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from streamer.recipes.schema import OWN_LOGITS_KINDS
from streamer import failpoints
from streamer.config import default_cache_dir
from streamer.models.graphs import BackendChoice

if TYPE_CHECKING:
    from streamer.stages import RunPlan

log = logging.getLogger(__name__)

#: Largest |OpenVINO − onnxruntime| accepted, in fp32, on the final probabilities of the check
#: windows. OpenVINO f32 differs from onnxruntime by float32 round-off in a different operator
#: order: about 1e-5 on the stand-ins' logits, far less on probabilities; a real disagreement
#: (a miscompiled operator) is many orders larger.
PARITY_TOLERANCE = 1e-4
#: Windows of the check: a bird recording shipped with streamer, then synthetic tones and noise.
N_CHECK_WINDOWS = 12
CHECK_RECORDING = Path(__file__).resolve().parent / "data" / "audio" / "birds_10s_32k.ogg"


@dataclass(frozen=True)
class BackendCheck:
    """The parity check's outcome.

    Attributes:
        candidate: the backend checked.
        max_prob_diff: largest |candidate − onnxruntime fp32| over the final probabilities.
        max_logit_diff: the same over Perch's mapped logits and the students' logits.
        passed: within :data:`PARITY_TOLERANCE`.
        used: the backend the run then used.
    """

    candidate: BackendChoice
    max_prob_diff: float
    max_logit_diff: float
    passed: bool
    used: BackendChoice

    def to_dict(self) -> dict:
        return {
            "candidate": self.candidate.describe(),
            "max_prob_diff": self.max_prob_diff,
            "max_logit_diff": self.max_logit_diff,
            "tolerance": PARITY_TOLERANCE,
            "passed": self.passed,
            "used": self.used.describe(),
        }


def check_windows() -> np.ndarray:
    """float32 ``[12, 160000]``: the shipped bird recording's two windows, then tones over noise
    (deterministic, the same in every run)."""
    from streamer.audio import WINDOW_SAMPLES, read_span

    n_real = 2
    real = read_span(CHECK_RECORDING, n_real * WINDOW_SAMPLES).samples.reshape(n_real, WINDOW_SAMPLES)
    rng = np.random.default_rng(7)
    t = np.arange(WINDOW_SAMPLES) / 32000.0
    synthetic = []
    for w in range(N_CHECK_WINDOWS - n_real):
        tone = 0.05 * (1 + w % 3) * np.sin(2 * np.pi * (800.0 + 400.0 * w) * t)
        synthetic.append(tone + 0.01 * (w + 1) * rng.standard_normal(t.size))
    return np.concatenate([real, np.asarray(synthetic)]).astype(np.float32)


def _final_probabilities(model_spec, reducer, windows: np.ndarray, site: str, hour: int, *, nan: bool = False):
    from streamer.stages import ModelStage

    stage = ModelStage(model_spec)
    outputs = stage.run(windows)
    if nan:  # the failpoint: a candidate engine that computes garbage
        outputs = replace(outputs, logits={k: np.full_like(v, np.nan) for k, v in outputs.logits.items()})
    probs = reducer.reduce_at(outputs, site, hour)
    logits = [outputs.logits[k] for k in sorted(outputs.logits)]
    return probs, logits


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
    return float("inf") if not np.all(np.isfinite(diff)) else float(diff.max())


def check_backend(model_spec, reducer, *, site: str = "", hour: int = 0) -> BackendCheck:
    """Compare ``model_spec.backend`` with onnxruntime fp32 on the check windows (module notes)."""
    from streamer.models.graphs import ThreadSettings
    from streamer.pipeline.layout import available_cpus

    candidate = model_spec.backend
    reference = BackendChoice("onnxruntime", "fp32")
    # The parent is alone at this point: every CPU it may use.
    threads = ThreadSettings(intra_op_threads=len(available_cpus()), allow_spinning=False)
    windows = check_windows()
    want, want_logits = _final_probabilities(replace(model_spec, backend=reference, threads=threads), reducer, windows, site, hour)
    nan = failpoints.hit("parent.backend_check") == "nan"
    got, got_logits = _final_probabilities(replace(model_spec, threads=threads), reducer, windows, site, hour, nan=nan)
    prob_diff = _max_diff(got, want)
    logit_diff = max(_max_diff(g, w) for g, w in zip(got_logits, want_logits))
    passed = prob_diff <= PARITY_TOLERANCE
    used = backend_to_use(candidate, passed)
    if candidate.precision == "bf16":
        log.info("bf16 moved the check windows' final probabilities by up to %.2g (logits by up to %.2g) "
                 "against onnxruntime fp32", prob_diff, logit_diff)
    elif passed:
        log.info("%s passed the parity check: final probabilities within %.1g of onnxruntime (largest difference %.2g)",
                 candidate.describe(), PARITY_TOLERANCE, prob_diff)
    else:
        log.warning("%s disagrees with onnxruntime on the check windows (final probabilities differ by up to %.3g, "
                    "tolerance %.1g): running in onnxruntime", candidate.describe(), prob_diff, PARITY_TOLERANCE)
    return BackendCheck(candidate=candidate, max_prob_diff=prob_diff, max_logit_diff=logit_diff, passed=passed, used=used)


def backend_to_use(candidate: BackendChoice, passed: bool) -> BackendChoice:
    """The backend a run uses after the check: the candidate if it passed or is bf16 (the user's
    choice of changed numbers), else onnxruntime fp32."""
    return candidate if passed or candidate.precision == "bf16" else BackendChoice("onnxruntime", "fp32")


#: Bumped when the check changes, so older verdicts are not reused.
CHECK_FORMAT = 1
CHECK_FOLDER = "backend-checks"


def check_key(model_spec, site: str, hour: int) -> str:
    """What a verdict depends on: the graphs (path, size, modification time), the students'
    exports, the class mapping, the backend and precision, the libraries' versions and the CPU."""
    import hashlib

    from streamer.models.graphs import cpu_flags
    from streamer.profile import machine_fingerprint

    digest = hashlib.sha256()
    paths = [*(p for p in (model_spec.onnx_path,) if p is not None), *(p for _, p in model_spec.exported),
             *(p for m in model_spec.members for p in m.paths)]
    for path in paths:
        stat = Path(path).stat()
        digest.update(f"{Path(path).resolve()}|{stat.st_size}|{stat.st_mtime_ns}|".encode())
    for m in model_spec.members:
        digest.update(f"{m.name}|{m.kind}|".encode() + np.ascontiguousarray(m.class_map).tobytes())
    versions = []
    for name in ("onnxruntime", "openvino"):
        try:
            versions.append(__import__(name).__version__)
        except ImportError:
            versions.append("-")
    digest.update(f"{model_spec.backend.describe()}|{versions}|{machine_fingerprint()['cpu_model']}|"
                  f"{sorted(cpu_flags())}|{site}|{hour}|{PARITY_TOLERANCE}|{CHECK_FORMAT}".encode())
    return digest.hexdigest()[:32]


def _cached_check(folder: Path, key: str, candidate: BackendChoice) -> BackendCheck | None:
    import json

    path = folder / f"{key}.json"
    try:
        doc = json.loads(path.read_text())
        return BackendCheck(candidate=candidate, max_prob_diff=float(doc["max_prob_diff"]),
                           max_logit_diff=float(doc["max_logit_diff"]), passed=bool(doc["passed"]),
                           used=backend_to_use(candidate, bool(doc["passed"])))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.info("ignoring an unreadable backend check %s (%s)", path, exc)
        return None


def _store_check(folder: Path, key: str, check: BackendCheck) -> None:
    import json

    from streamer.files import atomic_write_text

    try:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / f"{key}.json", json.dumps(check.to_dict(), indent=2) + "\n")
    except OSError as exc:
        log.info("the backend check is not kept for later runs (%s)", exc)


def with_student_backend(plan: RunPlan, tmp: Path, *, sequential: bool | None = None) -> RunPlan:
    """The plan with its students exported to onnxruntime (into ``tmp``, or reused from the
    cache folder where these weights were exported before) when that backend is chosen;
    ``auto`` means onnxruntime except in a sequential engine (``sequential``, default: the
    config's engine)."""
    from streamer.models.student_onnx import cached_exports

    config, model = plan.config, plan.model
    if sequential is None:
        sequential = config.execution.engine == "sequential"
    backend = config.execution.students_backend
    if backend == "auto":
        backend = "torch" if sequential else "onnxruntime"
    if backend != "onnxruntime" or not model.state_dict_members:
        return plan
    exported = cached_exports(model.state_dict_members, n_classes=model.n_classes, tmp=tmp, cache_dir=default_cache_dir())
    if not exported:
        return plan
    log.info("members run in onnxruntime: %s", ", ".join(name for name, _ in exported))
    return replace(plan, model=replace(model, exported=exported))


def with_backends(plan, tmp: Path, *, sequential: bool | None = None, reducer=None):
    """The plan with its students exported (see :func:`with_student_backend`) and
    its ONNX graphs' backend checked (module notes). Returns ``(plan, check)``; ``check`` is
    ``None`` when onnxruntime fp32 runs the graphs (nothing to compare)."""
    from streamer.metadata import parse_hour, parse_site
    from streamer.stages import make_reducer

    plan = with_student_backend(plan, tmp, sequential=sequential)
    if plan.model.backend.backend == "onnxruntime":
        return plan, None
    stem = plan.jobs[0].stem if plan.jobs else ""
    site, hour = parse_site(stem), parse_hour(stem)
    folder = default_cache_dir() / CHECK_FOLDER
    key = check_key(plan.model, site, hour)
    faulted = failpoints.armed("parent.backend_check")  # a faulted check is neither reused nor kept
    check = None if faulted else _cached_check(folder, key, plan.model.backend)
    if check is not None:
        log.info("%s: the parity check of these models on this machine is reused from %s (largest difference %.2g; %s)",
                 plan.model.backend.describe(), folder, check.max_prob_diff, "passed" if check.passed else "failed")
        if not check.passed and check.candidate.precision == "fp32":
            log.warning("%s disagreed with onnxruntime on these models before: running in onnxruntime", check.candidate.describe())
    else:
        reducer = reducer if reducer is not None else make_reducer(plan.reducer)
        check = check_backend(plan.model, reducer, site=site, hour=hour)
        if not faulted:
            _store_check(folder, key, check)
    return replace(plan, model=replace(plan.model, backend=check.used)), check


def describe_models(model_spec, reducer_spec=None) -> dict[str, str]:
    """What runs each model, for the summary and the report: Perch (the front-end), each
    member with a model of its own, the log-mel, each head (``reducer_spec``: Perch's own
    scores have none)."""
    from streamer.models.members import STUDENT_KINDS, reads_logmel

    engine = model_spec.backend.describe()
    exported = dict(model_spec.exported)
    out = {}
    if model_spec.onnx_path is not None:
        out["perch"] = engine
    torch_mel = False
    for m in model_spec.members:
        if m.kind in OWN_LOGITS_KINDS:
            continue
        in_torch = m.kind in STUDENT_KINDS and m.name not in exported
        torch_mel = torch_mel or in_torch
        out[m.name] = "torch fp32" if in_torch else engine
    if any(reads_logmel(m) for m in model_spec.members):
        out["log_mel"] = "torch fp32" if torch_mel else "numpy fp32"
    for name, _, _ in getattr(reducer_spec, "heads", ()):
        out[name] = "torch fp32"
    return out
