"""``streamer bench-archive``: the archive mode's real-time factor, and memory against input length.

Long inputs are built by looping a real recording (by default the 16-minute, 22.05-kHz field
recording shipped with streamer) to each requested length, written as FLAC at the source rate,
so every run resamples and streams as a user's archive would. Each (engine, length) pair runs
as its own ``python -m streamer archive`` process with ``--report-json``; the runs are
interleaved and repeated, and medians are quoted.

Reported per run: wall time, the real-time factor (seconds of audio per second of wall time,
start-up included), and the peak resident memory of the worker(s) and of the parent. Memory
that stays flat as the length grows is the point of the streaming design.

Input shapes (``shapes``), the same audio each time: ``single`` (one input of the length, split
across the workers when there are more workers than inputs), ``unsplit`` (the same input with
``--no-split``: one worker scores it), ``multi`` (:data:`MULTI_INPUTS` inputs of a quarter of the
length each). Their real-time factors, measured in the same interleaved runs, give the
single-input speed-up of splitting and how close one long input comes to many.
"""

from __future__ import annotations

import logging
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from streamer.config import ARCHIVE_BENCH_SHAPES
from streamer.files import save_figure
from streamer.bench.runner import BenchModels, _machine, environment_note, run_streamer_subprocess

log = logging.getLogger(__name__)

DEFAULT_SOURCE = "jura_S4A03895_20190522_24h_16min_22k.ogg"
LENGTHS_MIN = (4, 16, 64, 128)
QUICK_LENGTHS_MIN = (4, 16, 32)
SHAPES = ARCHIVE_BENCH_SHAPES
#: Inputs of the ``multi`` shape (each a quarter of the length).
MULTI_INPUTS = 4


def default_source() -> Path:
    """The long real recording shipped with streamer's tests, or the package's own audio."""
    here = Path(__file__).resolve().parent.parent.parent
    for candidate in (here / "tests" / "data" / "audio" / DEFAULT_SOURCE, here.parent / "shared" / "audio" / DEFAULT_SOURCE):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{DEFAULT_SOURCE} not found; pass a long recording with --source")


def make_long_input(source: Path, minutes: float, out: Path) -> Path:
    """``out`` (FLAC at the source's rate, mono): ``source`` looped to ``minutes``, written block
    by block so that building a long input needs little memory."""
    import soundfile as sf

    info = sf.info(str(source))
    rate = int(info.samplerate)
    n_total = int(round(minutes * 60 * rate))
    if out.is_file() and sf.info(str(out)).frames == n_total:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".partial.flac")
    written = 0
    with sf.SoundFile(str(tmp), "w", rate, 1, format="FLAC") as dst:
        while written < n_total:
            with sf.SoundFile(str(source)) as src:
                for block in src.blocks(blocksize=rate * 30, dtype="float32", always_2d=True):
                    block = block.mean(axis=1, dtype=np.float32)[: n_total - written]
                    dst.write(block)
                    written += block.shape[0]
                    if written >= n_total:
                        break
    tmp.replace(out)
    return out


def run_archive_subprocess(models: BenchModels, inputs: Path, engine_args: tuple[str, ...], work: Path, tag: str) -> dict:
    report, wall = run_streamer_subprocess(
        "archive",
        [str(inputs), "--out", str(work / f"out-{tag}"), "--data-dir", str(models.data_dir), "--perch", str(models.perch),
         "--moe-dir", str(models.moe_dir), *engine_args],
        work / f"{tag}.json", tag,
    )
    audio_s = report["audio_hours"] * 3600
    return {
        "wall_s": wall,
        "audio_s": audio_s,
        "rtf": audio_s / wall if wall > 0 else 0.0,
        "layout": report["layout"],
        "peak_worker_rss_mb": report["peak_worker_rss_mb"],
        "peak_parent_rss_mb": report["peak_parent_rss_mb"],
        "stage_seconds": report["stage_seconds"],
        "ranges": sum(report.get("ranges", {}).values()),
    }


ENGINE_ARGS = {
    "local": (),
    "sequential": ("--engine", "sequential"),
    "ray": ("--engine", "ray"),
}


def run_archive_bench(
    models: BenchModels,
    *,
    source: Path | None = None,
    lengths_min: tuple[float, ...] | None = None,
    engines: tuple[str, ...] = ("local",),
    repeats: int | None = None,
    quick: bool = False,
    work_dir: Path | None = None,
    labels: tuple[str, ...] = ("competition",),
    shapes: tuple[str, ...] = ("single",),
) -> dict:
    """Measure every (engine, labels, input shape, length); returns the results (see
    :func:`archive_markdown`).

    ``labels``: ``competition`` (the ensemble) and/or ``perch`` (Perch alone, top-3 of its own
    labels); ``shapes``: see the module notes. Everything is measured in the same interleaved
    runs so that ratios mean something. Perch alone is measured on the ``single`` shape only."""
    source = Path(source) if source is not None else default_source()
    lengths = tuple(lengths_min) if lengths_min else (QUICK_LENGTHS_MIN if quick else LENGTHS_MIN)
    repeats = repeats or (1 if quick else 2)
    for engine in engines:
        if engine not in ENGINE_ARGS:
            raise ValueError(f"unknown engine {engine!r}; expected one of {sorted(ENGINE_ARGS)}")
    for shape in shapes:
        if shape not in SHAPES:
            raise ValueError(f"unknown input shape {shape!r}; expected one of {SHAPES}")
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="streamer-bench-archive-", dir=work_dir) as tmp:
        work = Path(tmp)
        inputs = {}
        for minutes in lengths:
            folder = work / f"in-{minutes:g}min"
            make_long_input(source, minutes, folder / f"recording_{minutes:g}min.flac")
            inputs[("single", minutes)] = inputs[("unsplit", minutes)] = folder
            if "multi" in shapes:
                folder = work / f"in-{MULTI_INPUTS}x{minutes / MULTI_INPUTS:g}min"
                for i in range(MULTI_INPUTS):
                    make_long_input(source, minutes / MULTI_INPUTS, folder / f"recording_{i}.flac")
                inputs[("multi", minutes)] = folder
        runs: dict[tuple[str, str, str, float], list[dict]] = {
            (e, lab, shape, m): [] for e in engines for lab in labels for shape in shapes for m in lengths
            if lab == "competition" or shape == "single"
        }
        keys = list(runs)
        for rep in range(repeats):
            order = keys[rep % len(keys):] + keys[: rep % len(keys)]  # rotate, so no pair always goes first
            for engine, lab, shape, minutes in order:
                tag = f"{engine}-{lab}-{shape}-{minutes:g}-{rep}"
                log.info("bench-archive: %s, %s labels, %s, %g min (repeat %d/%d)", engine, lab, shape, minutes, rep + 1, repeats)
                args = ENGINE_ARGS[engine] + (("--labels", "perch") if lab == "perch" else ()) + (("--no-split",) if shape == "unsplit" else ())
                runs[(engine, lab, shape, minutes)].append(run_archive_subprocess(models, inputs[(shape, minutes)], args, work, tag))
    rows = []
    for (engine, lab, shape, minutes), rs in runs.items():
        name = engine + ("" if lab == "competition" else ", Perch alone") + {
            "single": ", 1 input", "unsplit": ", 1 input not split", "multi": f", {MULTI_INPUTS} inputs"}[shape]
        rows.append({
            "engine": name,
            "labels": lab,
            "shape": shape,
            "minutes": minutes,
            "layout": rs[0]["layout"],
            "rtf": statistics.median(r["rtf"] for r in rs),
            "ranges": rs[0]["ranges"],
            "wall_s": statistics.median(r["wall_s"] for r in rs),
            "peak_worker_rss_mb": max(r["peak_worker_rss_mb"] for r in rs),
            "peak_parent_rss_mb": max(r["peak_parent_rss_mb"] for r in rs),
            "runs": rs,
        })
    return {
        "machine": _machine(),
        "models": models.description,
        "source": source.name,
        "repeats": repeats,
        "quick": quick,
        "environment": environment_note(),
        "bench_s": time.perf_counter() - t_start,
        "rows": rows,
    }


def archive_markdown(result: dict) -> str:
    m = result["machine"]
    lines = [
        f"Machine: {m['cpu_model']}, {m.get('n_cpus', '?')} usable CPU(s), {m['memory_gb']} GB. Models: {result['models']}.",
        f"Input: {result['source']} looped to each length (FLAC at its own rate, resampled to 32 kHz while streaming); "
        f"medians of {result['repeats']} interleaved repeat(s); real-time factor = audio seconds per wall second, start-up included.",
        "",
        "| engine | layout | length (min) | ranges | wall (s) | real-time factor | peak worker RSS (MB) | peak parent RSS (MB) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(f"| {r['engine']} | {r['layout']} | {r['minutes']:g} | {r.get('ranges', 0) or '-'} | {r['wall_s']:.1f} | "
                     f"{r['rtf']:.0f}x | {r['peak_worker_rss_mb']:.0f} | {r['peak_parent_rss_mb']:.0f} |")
    lines.append("")
    lines += [f"- {line}" for line in archive_ratios(result)]
    lines += ["", f"Benchmark time: {result['bench_s'] / 60:.1f} min. Thread variables: {result['environment']}."]
    return "\n".join(lines) + "\n"


def archive_ratios(result: dict) -> list[str]:
    """The ratios of real-time factors measured in the same run: one input split across the
    workers against the same input not split and against many inputs, and Perch alone against
    the ensemble."""
    by_key = {(r["engine"].split(",")[0], r.get("labels", "competition"), r.get("shape", "single"), r["minutes"]): r
              for r in result["rows"]}
    out = []
    for (engine, lab, shape, minutes), r in by_key.items():
        if shape != "single" or r["rtf"] <= 0:
            continue
        if lab == "competition":
            for other, what in (("unsplit", "the same input not split"), ("multi", f"{MULTI_INPUTS} inputs of the same audio")):
                o = by_key.get((engine, lab, other, minutes))
                if o is not None and o["rtf"] > 0:
                    out.append(f"one {minutes:g}-min input ({engine}, {r.get('ranges') or 1} range(s)) vs {what}: "
                               f"{r['rtf'] / o['rtf']:.2f}x the real-time factor")
        else:
            ensemble = by_key.get((engine, "competition", "single", minutes))
            if ensemble is not None and ensemble["rtf"] > 0:
                out.append(f"Perch alone vs the ensemble ({engine}, {minutes:g} min): {r['rtf'] / ensemble['rtf']:.2f}x the real-time factor")
    return out


def draw_archive_chart(result: dict, path: Path) -> Path | None:
    """Real-time factor and peak worker memory against input length (PNG)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        from streamer.install import install_hint
        log.warning("matplotlib is not installed (%s): no chart", install_hint("bench"))
        return None
    fig, (ax_rtf, ax_mem) = plt.subplots(1, 2, figsize=(10, 4))
    for engine in sorted({r["engine"] for r in result["rows"]}):
        rows = sorted((r for r in result["rows"] if r["engine"] == engine), key=lambda r: r["minutes"])
        x = [r["minutes"] for r in rows]
        ax_rtf.plot(x, [r["rtf"] for r in rows], marker="o", label=engine)
        ax_mem.plot(x, [r["peak_worker_rss_mb"] for r in rows], marker="o", label=f"{engine}: worker")
        ax_mem.plot(x, [r["peak_parent_rss_mb"] for r in rows], marker="x", linestyle="--", label=f"{engine}: parent")
    for ax in (ax_rtf, ax_mem):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("input length (minutes)")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    ax_rtf.set_ylabel("real-time factor (x)")
    ax_mem.set_ylabel("peak resident memory (MB)")
    ax_mem.set_ylim(bottom=0)
    fig.suptitle("streamer archive: speed and memory against input length", fontsize=10)
    return save_figure(fig, path)
