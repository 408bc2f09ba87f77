"""``streamer bench``: baseline vs engine vs ceiling, and a grid of layouts, in one run.

Every contender that runs ``infer`` runs as its own ``python -m streamer infer`` process, so each
pays its own start-up and its memory is its own. Contenders are interleaved (in a new shuffled
order each repeat) and repeated, and medians are quoted: the machines are shared and
noisy, so only ratios measured in one run mean anything.

Throughput is *steady-state* windows per second: windows scored divided by the scoring interval,
from the moment the models are loaded to the moment the last file has its rows (the ceiling is
timed the same way: from its barrier after loading to its last window). Everything outside that
interval (starting Python, loading the models, writing the CSV, stopping the children) is a
fixed cost per run, reported separately; both go into the projection for 600 one-minute files.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from streamer.files import atomic_write_text, save_figure
from streamer.metadata import N_WINDOWS_PER_FILE, WINDOW_S
from streamer.models.graphs import BackendChoice

log = logging.getLogger(__name__)

KAGGLE_FILES = 600
REAL_RECORDINGS = (
    "BC2026_Test_0001_S90_20190522_000000.ogg",
    "BC2026_Test_0002_S90_20190522_060000.ogg",
    "BC2026_Test_0003_S90_20190522_120000.ogg",
    "BC2026_Test_0004_S90_20190522_180000.ogg",
    "birds_10s_32k.ogg",
)
#: Longest a single contender may run (seconds); a hang fails the benchmark instead of blocking.
CONTENDER_TIMEOUT_S = 1800


@dataclass
class Contender:
    """One thing to measure. ``kind`` is ``infer`` (a subprocess) or ``ceiling``; ``backend``:
    what runs the ONNX graphs."""

    name: str
    kind: str
    args: tuple[str, ...] = ()
    layout: dict = field(default_factory=dict)
    runs: list[dict] = field(default_factory=list)
    backend: BackendChoice = BackendChoice()

    def median(self, key: str) -> float:
        values = [r[key] for r in self.runs if key in r]
        return statistics.median(values) if values else float("nan")


@dataclass
class BenchModels:
    perch: Path
    moe_dir: Path
    data_dir: Path  # taxonomy, sample submission, labels (its test files are not used)
    description: str


def default_models(cache_dir: Path) -> BenchModels:
    """The stand-in kit's MoE and metadata with the realistic-cost (EfficientNet-B3) Perch."""
    from streamer.bench.perch_b3 import b3_cached, ensure_b3_perch, require_builder
    from streamer.demo import ensure_kit

    if not b3_cached(cache_dir):
        require_builder()  # before the stand-in kit is built: a missing extra is one line, at once
    kit = ensure_kit(cache_dir)
    perch = ensure_b3_perch(cache_dir, kit.perch_labels)
    return BenchModels(
        perch=perch / "perch_v2.onnx",
        moe_dir=kit.moe_dir,
        data_dir=kit.data_dir,
        description="Perch stand-in with an EfficientNet-B3 backbone + stand-in MoE (2 students, 4 ProtoSSM folds)",
    )


def make_inputs(models: BenchModels, audio_dir: Path, n_files: int, work: Path) -> Path:
    """A competition folder whose ``test_soundscapes`` holds ``n_files`` links to real
    recordings (cycled; each gets its own competition-style name)."""
    data = work / "competition"
    data.mkdir(parents=True, exist_ok=True)
    for name in ("taxonomy.csv", "sample_submission.csv", "train_soundscapes_labels.csv"):
        shutil.copy(models.data_dir / name, data / name)
    test = data / "test_soundscapes"
    test.mkdir(exist_ok=True)
    sources = sorted(p for p in Path(audio_dir).iterdir() if p.suffix.lower() in (".ogg", ".flac", ".wav"))
    if not sources:
        raise FileNotFoundError(f"{audio_dir}: no recordings to benchmark on")
    for i in range(n_files):
        src = sources[i % len(sources)]
        (test / f"BC2026_Test_{i + 1:04d}_S90_20190522_{(i % 24):02d}0000{src.suffix}").symlink_to(src.resolve())
    return data


def default_audio_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "data" / "audio"


def layout_grid(n_cpus: int, full: bool) -> list[tuple[int, int]]:
    """(consumers, threads) pairs worth measuring on ``n_cpus`` CPUs."""
    pairs = set()
    for w in {1, 2, max(1, n_cpus // 2), n_cpus}:
        if w > n_cpus:
            continue
        for t in {1, 2, max(1, n_cpus // w)}:
            if w * t <= n_cpus:
                pairs.add((w, t))
    if full and n_cpus >= 2:
        pairs.add((n_cpus, 2))  # oversubscribed, for the record
    if not full:
        pairs = {p for p in pairs if p[0] * p[1] == n_cpus and p[0] in (1, n_cpus)}
    return sorted(pairs)


def repeat_order(items: list, repeat: int) -> list:
    """The order of the contenders in one repeat: shuffled, with a seed fixed per repeat (so a
    run can be repeated exactly). A merely rotated order keeps every contender behind the same
    neighbour, and on a shared host a position effect then looks like a difference."""
    order = list(items)
    random.Random(1000 + repeat).shuffle(order)
    return order


def run_streamer_subprocess(command: str, args: list[str], report_path: Path, tag: str) -> tuple[dict, float]:
    """Run ``streamer -q COMMAND ARGS --report-json REPORT`` as a child process; return its
    report and the wall time. A failed run raises with the end of its error output."""
    cmd = [sys.executable, "-m", "streamer", "-q", command, *args, "--report-json", str(report_path)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=CONTENDER_TIMEOUT_S)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark run {tag} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(report_path.read_text()), wall


def run_infer_subprocess(models: BenchModels, data: Path, args: tuple[str, ...], work: Path, tag: str) -> dict:
    """Run ``streamer infer`` as a child process; return its report, its steady-state throughput
    and its fixed cost (wall time outside the scoring interval)."""
    report, wall = run_streamer_subprocess(
        "infer",
        ["--data-dir", str(data), "--perch", str(models.perch), "--moe-dir", str(models.moe_dir),
         "--out", str(work / f"{tag}.csv"), "--no-profile", *args],
        work / f"{tag}.json", tag,
    )
    seconds = report["seconds"]
    steady = seconds.get("scoring", seconds.get("total", 0.0) - seconds.get("setup", 0.0))
    check = report.get("backend_check")
    return {
        "wall_s": wall,
        "fixed_s": wall - steady,
        "first_file_s": seconds.get("first_file", float("nan")),
        "models": report.get("models", {}),
        "backend_check_passed": None if check is None else bool(check["passed"]),
        "windows": report["n_modelled_windows"],
        "windows_per_s": report["n_modelled_windows"] / steady if steady > 0 else 0.0,
        "end_to_end_windows_per_s": report["n_modelled_windows"] / wall,
        "seconds": seconds,
        "peak_rss_mb": report["peak_rss_mb"],
        "engine": report["engine"],
    }


REFERENCE_BACKEND = BackendChoice("onnxruntime", "fp32")


def backend_variants(backend: str = "auto", precision: str | None = None) -> list[BackendChoice]:
    """The backends to measure: onnxruntime fp32 (always, the reference), OpenVINO fp32 where
    it is installed, OpenVINO bf16 where the CPU has bf16 too; ``--backend`` and ``--precision``
    narrow the list (onnxruntime fp32 stays)."""
    from streamer.models.graphs import hardware_bf16, openvino_available, resolve_backend

    if backend != "auto" or precision is not None:
        chosen = resolve_backend(backend, precision or "fp32")  # refuses bf16 without the hardware
        return [REFERENCE_BACKEND] + ([chosen] if chosen != REFERENCE_BACKEND else [])
    out = [REFERENCE_BACKEND]
    if openvino_available():
        out.append(BackendChoice("openvino", "fp32"))
        if hardware_bf16() is not None:
            out.append(BackendChoice("openvino", "bf16"))
    return out


def backend_args(backend: BackendChoice) -> tuple[str, ...]:
    return ("--backend", backend.backend, "--precision", backend.precision)


def _suffix(backend: BackendChoice) -> str:
    return "" if backend == REFERENCE_BACKEND else f", {backend.describe()}"


def build_contenders(n_cpus: int, quick: bool, backends: list[BackendChoice] | None = None, *,
                     grid_backends: list[BackendChoice] | None = None) -> list[Contender]:
    """Baseline, engine (automatic layout) in each backend, the layout grid (in
    ``grid_backends``, default onnxruntime fp32) and the ceilings of every backend."""
    from streamer.pipeline.layout import plan_layout

    backends = backends or [REFERENCE_BACKEND]
    grid_backends = grid_backends or [REFERENCE_BACKEND]
    auto = plan_layout(cpus=tuple(range(n_cpus)))
    auto_layout = {"workers": auto.n_workers, "threads": auto.threads, "decoders": auto.n_decoders}
    ref = backend_args(REFERENCE_BACKEND)
    contenders = [
        Contender("baseline (sequential, library threads)", "infer", ("--engine", "sequential", "--threads", "default") + ref,
                  {"engine": "sequential", "threads": "default"}),
        Contender("engine (automatic layout)", "infer", ref, auto_layout),
    ]
    for backend in backends:
        if backend != REFERENCE_BACKEND and backend not in grid_backends:
            contenders.append(Contender(f"engine (automatic layout){_suffix(backend)}", "infer", backend_args(backend),
                                        dict(auto_layout), backend=backend))
    if not quick:
        contenders.append(
            Contender("sequential, library threads, students in onnxruntime", "infer",
                      ("--engine", "sequential", "--threads", "default", "--students-backend", "onnxruntime") + ref,
                      {"engine": "sequential", "threads": "default", "students": "onnxruntime"})
        )
    grid = layout_grid(n_cpus, full=not quick)
    for backend in grid_backends:
        for w, t in grid:
            for decoders in ((1,) if quick else (1, 2)):
                for spin in ((False,) if quick or backend.backend != "onnxruntime" else (False, True)):
                    is_auto = (w, t, decoders, spin) == (auto.n_workers, auto.threads, auto.n_decoders, False)
                    if is_auto and backend == REFERENCE_BACKEND:
                        continue  # that is the engine contender
                    if (decoders == 2 or spin) and (w, t) != (auto.n_workers, auto.threads):
                        continue  # decoders and spinning are varied on the automatic layout only
                    args = ("--workers", str(w), "--threads", str(t), "--decoders", str(decoders)) + (("--allow-spinning",) if spin else ())
                    name = f"pipeline {w}x{t}, {decoders} decoder(s)" + (", spinning" if spin else "") + _suffix(backend)
                    contenders.append(Contender(name, "infer", args + backend_args(backend),
                                                {"workers": w, "threads": t, "decoders": decoders, "allow_spinning": spin}, backend=backend))
    for backend in backends:
        for w, t in grid:
            if w * t <= n_cpus:
                contenders.append(Contender(f"ceiling {w}x{t}{_suffix(backend)} (models only, pre-decoded)", "ceiling", (),
                                            {"workers": w, "threads": t}, backend=backend))
    return contenders


def run_bench(
    *,
    out_dir: Path,
    quick: bool = False,
    n_files: int | None = None,
    repeats: int | None = None,
    audio_dir: Path | None = None,
    models: BenchModels | None = None,
    cache_dir: Path | None = None,
    json_path: Path | None = None,
    chart_path: Path | None = None,
    backends: list[BackendChoice] | None = None,
) -> dict:
    """Measure everything, write the Markdown table, the JSON and the chart; return the JSON.

    ``backends``: what runs the graphs, each measured at the automatic layout and as a ceiling
    (default: :func:`backend_variants`)."""
    from streamer.config import default_cache_dir
    from streamer.config import InferConfig
    from streamer.pipeline.layout import available_cpus
    from streamer.backend import with_student_backend
    from streamer.stages import prepare

    n_files = n_files or (12 if quick else 24)
    repeats = repeats or (2 if quick else 3)
    cache_dir = cache_dir or default_cache_dir()
    models = models or default_models(cache_dir)
    audio_dir = audio_dir or default_audio_dir()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n_cpus = len(available_cpus())
    backends = backends or backend_variants()
    contenders = build_contenders(n_cpus, quick, backends)
    t_bench = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="streamer-bench-") as tmp:
        work = Path(tmp)
        data = make_inputs(models, audio_dir, n_files, work)
        ceiling_plans = {}
        for backend in backends:
            config = InferConfig.create(data_dir=data, perch=models.perch, moe_dir=models.moe_dir, out=work / "unused.csv",
                                        students_backend="onnxruntime", progress=False, use_profile=False,
                                        backend=backend.backend, precision=backend.precision)
            ceiling_plans[backend] = with_student_backend(prepare(config), work / "students")
        for r in range(repeats):
            order = repeat_order(contenders, r)
            for c in order:
                log.info("repeat %d/%d: %s", r + 1, repeats, c.name)
                if c.kind == "infer":
                    c.runs.append(run_infer_subprocess(models, data, c.args, work, f"r{r}_{len(c.runs)}_{abs(hash(c.name))}"))
                else:
                    from streamer.bench.ceiling import measure_ceiling

                    c.runs.append(measure_ceiling(ceiling_plans[c.backend], workers=c.layout["workers"], threads=c.layout["threads"]))
    result = summarise(contenders, models, n_files, repeats, n_cpus, time.perf_counter() - t_bench, quick, backends)
    json_path = Path(json_path) if json_path else out_dir / "bench.json"
    chart_path = Path(chart_path) if chart_path else out_dir / "bench.png"
    atomic_write_text(json_path, json.dumps(result, indent=2) + "\n")
    atomic_write_text(out_dir / "bench.md", result["markdown"] + "\n")
    result["chart"] = str(draw_chart(contenders, result, chart_path))
    atomic_write_text(json_path, json.dumps(result, indent=2) + "\n")
    return result


def summarise(contenders: list[Contender], models: BenchModels, n_files: int, repeats: int, n_cpus: int, bench_s: float,
              quick: bool, backends: list[BackendChoice] | None = None) -> dict:
    backends = backends or [REFERENCE_BACKEND]
    by_name = {c.name: c for c in contenders}
    baseline = by_name["baseline (sequential, library threads)"]
    engine = by_name["engine (automatic layout)"]
    ceilings = [c for c in contenders if c.kind == "ceiling" and c.backend == REFERENCE_BACKEND]
    best_ceiling = max(ceilings, key=lambda c: c.median("windows_per_s"))
    base_rate = baseline.median("windows_per_s")
    engine_rate = engine.median("windows_per_s")
    ceiling_rate = best_ceiling.median("windows_per_s")
    n_windows = KAGGLE_FILES * N_WINDOWS_PER_FILE
    projected = (engine.median("fixed_s") + n_windows / engine_rate) / 60.0 if engine_rate > 0 else float("inf")
    same = [c for c in ceilings if (c.layout["workers"], c.layout["threads"]) == (engine.layout.get("workers"), engine.layout.get("threads"))]
    same_rate = same[0].median("windows_per_s") if same else float("nan")
    rows = []
    for c in contenders:
        rate = c.median("windows_per_s")
        row = {
            "name": c.name,
            "kind": c.kind,
            "layout": c.layout,
            "backend": c.backend.describe(),
            "windows_per_s": rate,
            "real_time_factor": rate * WINDOW_S,
            "vs_baseline": rate / base_rate if base_rate > 0 else float("nan"),
            "vs_ceiling": rate / ceiling_rate if ceiling_rate > 0 else float("nan"),
            "runs": c.runs,
        }
        if c.kind == "infer":
            row["fixed_s"] = c.median("fixed_s")
            row["first_file_s"] = c.median("first_file_s")
            row["end_to_end_windows_per_s"] = c.median("end_to_end_windows_per_s")
            row["peak_rss_mb"] = c.runs[-1]["peak_rss_mb"]
            row["consumer_rss_mb"] = _consumer_rss(c.runs[-1]["peak_rss_mb"])
            row["backend_check_passed"] = c.runs[-1].get("backend_check_passed")
        rows.append(row)
    stages = {name: per_window_ms(by_name[name].runs[-1]) for name in (baseline.name, engine.name)}
    per_backend = []
    for variant in backends:
        pipe = next((c for c in contenders if c.kind == "infer" and c.backend == variant
                     and c.layout == engine.layout), None)
        ceils = [c for c in contenders if c.kind == "ceiling" and c.backend == variant]
        if pipe is None or not ceils:
            continue
        best = max(ceils, key=lambda c: c.median("windows_per_s"))
        at_own = [c for c in ceils if (c.layout["workers"], c.layout["threads"]) == (pipe.layout.get("workers"), pipe.layout.get("threads"))]
        rate = pipe.median("windows_per_s")
        per_backend.append({
            "backend": variant.describe(),
            "windows_per_s": rate,
            "vs_baseline": rate / base_rate if base_rate > 0 else float("nan"),
            "vs_onnxruntime_fp32": rate / engine_rate if engine_rate > 0 else float("nan"),
            "ceiling_windows_per_s": best.median("windows_per_s"),
            "ceiling_layout": best.layout,
            "ceiling_at_own_layout": at_own[0].median("windows_per_s") if at_own else float("nan"),
            "fixed_s": pipe.median("fixed_s"),
            "first_file_s": pipe.median("first_file_s"),
            "consumer_rss_mb": _consumer_rss(pipe.runs[-1]["peak_rss_mb"]),
            "backend_check_passed": pipe.runs[-1].get("backend_check_passed"),
        })
    result = {
        "baseline_windows_per_s": base_rate,
        "engine_windows_per_s": engine_rate,
        "ceiling_windows_per_s": ceiling_rate,
        "ceiling_layout": best_ceiling.layout,
        "speedup_vs_baseline": engine_rate / base_rate if base_rate > 0 else float("nan"),
        "efficiency_vs_ceiling": engine_rate / ceiling_rate if ceiling_rate > 0 else float("nan"),
        "efficiency_vs_ceiling_same_layout": engine_rate / same_rate if same_rate > 0 else float("nan"),
        "projected_minutes_600_files": projected,
        "engine_fixed_s": engine.median("fixed_s"),
        "engine_first_file_s": engine.median("first_file_s"),
        "whole_process_speedup": baseline.median("wall_s") / engine.median("wall_s") if engine.median("wall_s") > 0 else float("nan"),
        "baseline_wall_s": baseline.median("wall_s"),
        "engine_wall_s": engine.median("wall_s"),
        "backends": per_backend,
        "machine": _machine(),
        "thread_environment": environment_note(),
        "n_cpus": n_cpus,
        "models": models.description,
        "n_files": n_files,
        "repeats": repeats,
        "quick": quick,
        "bench_seconds": bench_s,
        "stage_ms_per_window": stages,
        "contenders": rows,
    }
    result["markdown"] = markdown(result)
    return result


def _consumer_rss(peaks: dict) -> float:
    """The largest consumer's peak resident memory (MB) of a run (the whole process in the
    sequential engine)."""
    for key in ("consumer (largest)", "process"):
        if key in peaks:
            return float(peaks[key])
    return float("nan")


def per_window_ms(run: dict) -> dict:
    """Stage cost in milliseconds per scored window (summed over processes)."""
    n = max(1, run["windows"])
    keys = ("decode", "perch", "members", "protossm", "postprocess", "write")
    stages = {k: 1000.0 * run["seconds"].get(k, 0.0) / n for k in keys}
    # Decoders run at a lower priority and wait while the models run: their CPU time is what
    # they take from the models (the sequential engine decodes on its own: wall = CPU there).
    stages["decode CPU"] = 1000.0 * run["seconds"].get("decode_cpu", run["seconds"].get("decode", 0.0)) / n
    return stages


def _machine() -> dict:
    from streamer.profile import machine_fingerprint

    return machine_fingerprint()


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [
        f"Machine: {m['cpu_model']}, {result['n_cpus']} usable CPU(s), {m['memory_gb']} GB. Models: {result['models']}.",
        f"Inputs: {result['n_files']} files of real recordings; medians of {result['repeats']} interleaved repeats.",
        "",
        "| contender | windows/s | real-time factor | vs baseline | vs ceiling | fixed s | first file s | consumer MB | parent MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result["contenders"]:
        fixed = f"{row['fixed_s']:.1f}" if "fixed_s" in row else ""
        first = f"{row['first_file_s']:.1f}" if "first_file_s" in row else ""
        rss = row.get("peak_rss_mb") or {}
        consumer = f"{row['consumer_rss_mb']:.0f}" if "consumer_rss_mb" in row else ""
        parent = f"{rss['parent']:.0f}" if "parent" in rss else ""
        fell_back = " (failed the parity check: ran in onnxruntime)" if row.get("backend_check_passed") is False and "fp32" in row["backend"] else ""
        lines.append(
            f"| {row['name']}{fell_back} | {row['windows_per_s']:.1f} | {row['real_time_factor']:.0f}x | "
            f"{row['vs_baseline']:.2f}x | {row['vs_ceiling']:.2f} | {fixed} | {first} | {consumer} | {parent} |"
        )
    lines += [
        "",
        "windows/s: steady state, over the scoring interval (models loaded → last file scored); "
        "fixed s: the rest of each run's wall time (start-up, model loading, CSV write, exit); "
        "first file s: from the command's start until the first file's model outputs arrived; consumer MB: the largest "
        "consumer's peak resident memory (the whole process in the sequential engine).",
        "",
        f"**Engine vs baseline: {result['speedup_vs_baseline']:.2f}x** steady state, "
        f"**{result['whole_process_speedup']:.2f}x whole process** ({result['baseline_wall_s']:.1f} s → "
        f"{result['engine_wall_s']:.1f} s for the {result['n_files']} files, start-up and exit included; "
        f"the engine's first file through the models after {result['engine_first_file_s']:.1f} s). "
        f"**Engine vs ceiling: {result['efficiency_vs_ceiling']:.2f}** (best ceiling layout "
        f"{result['ceiling_layout']['workers']}x{result['ceiling_layout']['threads']}; "
        f"{result['efficiency_vs_ceiling_same_layout']:.2f} of the ceiling at the engine's own layout). "
        f"Projected time for {KAGGLE_FILES} one-minute files on this machine: "
        f"{result['projected_minutes_600_files']:.1f} min (fixed cost {result['engine_fixed_s']:.1f} s included).",
        "",
        "Backends (pipeline at the automatic layout; ceiling: the best layout of that backend, models only):",
        "",
        "| backend | windows/s | vs baseline | vs onnxruntime fp32 | ceiling windows/s (layout) | fixed s | first file s | consumer MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for e in result.get("backends", []):
        cl = e["ceiling_layout"]
        lines.append(
            f"| {e['backend']} | {e['windows_per_s']:.1f} | {e['vs_baseline']:.2f}x | {e['vs_onnxruntime_fp32']:.2f}x | "
            f"{e['ceiling_windows_per_s']:.1f} ({cl['workers']}x{cl['threads']}) | {e['fixed_s']:.1f} | "
            f"{e['first_file_s']:.1f} | {e['consumer_rss_mb']:.0f} |"
        )
    lines += [
        "",
        "Stage cost, ms per window (wall time summed over processes; decode CPU: the decoders' CPU time):",
        "",
        "| run | " + " | ".join(next(iter(result["stage_ms_per_window"].values())).keys()) + " |",
        "|---|" + "---:|" * len(next(iter(result["stage_ms_per_window"].values()))),
    ]
    for name, stages in result["stage_ms_per_window"].items():
        lines.append(f"| {name} | " + " | ".join(f"{v:.1f}" for v in stages.values()) + " |")
    return "\n".join(lines)


def draw_chart(contenders: list[Contender], result: dict, path: Path) -> Path | None:
    """A horizontal bar chart of windows/s per contender (PNG)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        from streamer.install import install_hint
        log.warning("matplotlib is not installed (%s): no chart", install_hint("bench"))
        return None
    names = [c.name for c in contenders]
    rates = [c.median("windows_per_s") for c in contenders]
    colours = ["#888888" if c.name.startswith("baseline") else "#d62728" if c.kind == "ceiling"
               else "#1f77b4" if c.name.startswith("engine") else "#9ecae1" for c in contenders]
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(names) + 1.5))
    ax.barh(range(len(names)), rates, color=colours)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("windows / s (steady state, median)")
    ax.set_title(f"streamer bench: engine {result['speedup_vs_baseline']:.2f}x baseline, "
                 f"{result['efficiency_vs_ceiling']:.2f} of ceiling ({result['n_cpus']} CPUs)", fontsize=10)
    for i, r in enumerate(rates):
        ax.text(r, i, f" {r:.1f}", va="center", fontsize=8)
    return save_figure(fig, path)


def environment_note() -> str:
    """Variables that change thread behaviour, for the record."""
    from streamer.pipeline.children import THREAD_ENV_VARS

    keys = (*THREAD_ENV_VARS, "OPENBLAS_CORETYPE")
    return ", ".join(f"{k}={os.environ[k]}" for k in keys if k in os.environ) or "none set"
