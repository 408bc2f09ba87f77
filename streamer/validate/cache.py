"""``streamer cache``: the networks' outputs on the labelled training soundscapes, stored once.

Everything the local-validation sweep varies comes after the networks (blend weights, prior,
the heads' fusion, the steps), so Perch and the recipe's blend members run once, through the
same stages as ``infer`` (:func:`streamer.stages.prepare`, :func:`~streamer.stages.decode_job`,
:class:`~streamer.stages.ModelStage`), and their outputs are kept per window in one ``.npz``:

====================  =========  ==========================
array                 dtype      shape
====================  =========  ==========================
``embedding``         float32    ``[files, 12, 1536]`` (Perch's)
``logits.NAME``       float32    ``[files, 12, C]``, one per member that ran, by member name
                                 (in the submission's columns; Perch's mapped, −8.0 where
                                 unmatched)
``meta``              str        JSON header (below)
====================  =========  ==========================

The header holds the format version, the file stems, the class list, the members, and the
path, size and SHA-256 of every file the cached numbers depend on: the Perch ONNX file and
label list, each member's file that ran, ``taxonomy.csv`` (names → columns) and
``sample_submission.csv`` (column order). The heads' files (the ProtoSSM folds) and the labels
are not among them: the sweep reads those itself, so they may change without invalidating the
cache.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from streamer.files import atomic_open, sha256_file
from streamer import __version__
from streamer.audio import find_audio
from streamer.config import InferConfig
from streamer.errors import ArtifactError, AudioDecodeError
from streamer.metadata import N_WINDOWS_PER_FILE, file_stem, load_competition
from streamer.stages import ModelStage, decode_job, dependency_paths, prepare

log = logging.getLogger(__name__)

CACHE_FORMAT = 2
_LOGITS = "logits."


def hash_dependencies(paths: dict[str, Path]) -> dict[str, dict]:
    """``{role: {"path", "size", "sha256"}}`` of :func:`dependency_paths`."""
    out = {}
    for role, path in paths.items():
        path = Path(path)
        out[role] = {"path": str(path.resolve()), "size": path.stat().st_size, "sha256": sha256_file(path)}
    return out


@dataclass
class ModelCache:
    """Cached network outputs of some files (see the module docstring for the arrays).

    Attributes:
        stems: file stems, aligned with the arrays' first dimension, sorted.
        classes: class columns (sample_submission order).
        dependencies: ``{role: {"path", "size", "sha256"}}`` of the files the numbers depend on.
        info: the rest of the header (format, streamer version, creation time, file selection).
    """

    stems: tuple[str, ...]
    classes: tuple[str, ...]
    embedding: np.ndarray
    logits: dict
    dependencies: dict[str, dict]
    info: dict = field(default_factory=dict)

    @property
    def backend(self) -> str:
        """What ran the ONNX graphs when the cache was made (a header of format 1 without the
        ``backend`` key names it ``engine``; one with neither was made in onnxruntime fp32)."""
        return self.info.get("backend", self.info.get("engine", "onnxruntime fp32"))

    def index(self, stems) -> np.ndarray:
        """Positions of ``stems`` in the cache.

        Raises:
            ArtifactError: some are not cached (names them).
        """
        where = {s: i for i, s in enumerate(self.stems)}
        missing = [s for s in stems if s not in where]
        if missing:
            raise ArtifactError(
                f"{len(missing)} labelled files are not in the cache, e.g. {missing[:3]}; run 'streamer cache' again"
            )
        return np.array([where[s] for s in stems], dtype=np.int64)

    def check_dependencies(self, current: dict[str, dict], cache_path: str | Path) -> None:
        """Raise unless ``current`` (see :func:`hash_dependencies`) matches the cache's record.

        A cached member that does not run now is fine (its logits are simply not used).

        Raises:
            ArtifactError: a file changed, or a member runs now that the cache lacks; names
                them.
        """
        problems = []
        for role in sorted(set(self.dependencies) | set(current)):
            old, new = self.dependencies.get(role), current.get(role)
            if old is None:
                problems.append(f"{role} {new['path']} is loaded now but was not when the cache was made")
            elif new is None:
                if role in ("perch_onnx", "perch_labels", "taxonomy", "sample_submission"):
                    problems.append(f"{role} {old['path']} was used for the cache but is not given now")
            elif old["sha256"] != new["sha256"]:
                problems.append(
                    f"{role} changed: cached {old['path']} (sha256 {old['sha256'][:12]}…), now {new['path']} "
                    f"(sha256 {new['sha256'][:12]}…)"
                )
        if problems:
            raise ArtifactError(
                f"{cache_path}: the cache does not match the artifacts given: " + "; ".join(problems)
                + ". Run 'streamer cache' with these artifacts again."
            )

    def save(self, path: str | Path) -> Path:
        """Write the ``.npz`` atomically (temporary file, then rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        header = dict(self.info)
        header.update(format=CACHE_FORMAT, stems=list(self.stems), classes=list(self.classes), dependencies=self.dependencies)
        arrays = {"meta": np.array(json.dumps(header)), "embedding": np.ascontiguousarray(self.embedding, dtype=np.float32)}
        for name, value in self.logits.items():
            arrays[_LOGITS + name] = np.ascontiguousarray(value, dtype=np.float32)
        with atomic_open(path, "wb") as handle:
            np.savez(handle, **arrays)
        return path


def load_cache(path: str | Path) -> ModelCache:
    """Read a cache written by :meth:`ModelCache.save`.

    Raises:
        ArtifactError: missing, unreadable, another format version, or inconsistent shapes.
    """
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: cache not found (make it with 'streamer cache')")
    try:
        with np.load(path, allow_pickle=False) as npz:
            header = json.loads(str(npz["meta"]))
            if header.get("format") == CACHE_FORMAT:
                embedding = npz["embedding"] if "embedding" in npz.files else None
                logits = {name[len(_LOGITS):]: npz[name] for name in npz.files if name.startswith(_LOGITS)}
    except Exception as exc:
        raise ArtifactError(f"{path}: not a streamer cache ({type(exc).__name__}: {exc})") from exc
    if header.get("format") != CACHE_FORMAT:
        raise ArtifactError(f"{path}: cache format {header.get('format')!r}, this streamer reads {CACHE_FORMAT}; run 'streamer cache' again")
    stems, classes = tuple(header.pop("stems")), tuple(header.pop("classes"))
    dependencies = header.pop("dependencies")
    n = len(stems)
    if embedding is None or not logits:
        raise ArtifactError(f"{path}: the cache has no {'embedding' if embedding is None else 'member logits'}")
    for name, a, width in [("embedding", embedding, None), *((_LOGITS + k, v, len(classes)) for k, v in logits.items())]:
        if a.ndim != 3 or a.shape[:2] != (n, N_WINDOWS_PER_FILE) or (width is not None and a.shape[2] != width):
            raise ArtifactError(f"{path}: {name!r} has shape {a.shape}, expected ({n}, {N_WINDOWS_PER_FILE}, {width or 'D'})")
    return ModelCache(stems=stems, classes=classes, embedding=embedding, logits=logits, dependencies=dependencies, info=header)


def cache_files(config: InferConfig, all_files: bool) -> tuple[list[Path], str]:
    """The training soundscapes to cache: those with labels (default) or all of them.

    Raises:
        ArtifactError: a labelled file is missing from ``train_soundscapes/``, or there is
            nothing to cache.
    """
    competition = load_competition(config.artifacts.data_dir)
    train_dir = Path(config.artifacts.data_dir) / "train_soundscapes"
    found = {file_stem(p.name): p for p in find_audio(train_dir)[0]} if train_dir.is_dir() else {}
    missing = [s for s in competition.label_files if s not in found]
    if missing:
        raise ArtifactError(
            f"{train_dir}: {len(missing)} files named in train_soundscapes_labels.csv are missing, e.g. {missing[:3]}"
        )
    if all_files:
        files, selection = list(found.values()), "all train_soundscapes"
    else:
        files, selection = [found[s] for s in competition.label_files], "labelled train_soundscapes"
    if not files:
        raise ArtifactError(f"{config.artifacts.data_dir / 'train_soundscapes_labels.csv'}: no labelled files to cache")
    return files, selection


def build_cache(
    config: InferConfig, out: str | Path, *, all_files: bool = False, force: bool = False, threads: int | None = None
) -> tuple[ModelCache, bool]:
    """Run the networks over the training soundscapes and save their outputs to ``out``.

    An existing cache at ``out`` that matches the artifacts and holds every file is reused
    unless ``force``; one that does not match is rebuilt (and replaced).

    Args:
        config: artifacts and metadata (the ensemble settings are not used).
        out: the ``.npz`` to write.
        all_files: cache every audio file of ``train_soundscapes/``, not only the labelled ones.
        force: rebuild even when the existing cache is up to date.
        threads: intra-op threads of onnxruntime and torch (``None``: the libraries' defaults).

    Returns:
        The cache and whether it was (re)built.

    Raises:
        ArtifactError: a missing or malformed artifact, a missing labelled file.
        AudioDecodeError: a file cannot be decoded (every labelled file is needed).
    """
    from streamer.pipeline.layout import with_threads
    from streamer.backend import describe_models, with_backends

    out = Path(out)
    files, selection = cache_files(config, all_files)
    # The networks' outputs do not depend on a rank blend's reference (it is made from them).
    plan = prepare(replace(config, execution=replace(config.execution, engine="sequential")), files=files, need_reference=False)
    current = hash_dependencies(dependency_paths(plan))
    stems = [job.stem for job in plan.jobs]
    backend = plan.model.backend.describe()
    if out.exists() and not force:
        try:
            existing = load_cache(out)
            existing.check_dependencies(current, out)
            existing.index(stems)
            if existing.backend != backend:
                raise ArtifactError(f"it was made in {existing.backend}, this run asks for {backend}")
        except ArtifactError as exc:
            log.info("rebuilding the cache: %s", exc)
        else:
            log.info("%s is up to date (%d files, same artifacts): reused", out, len(existing.stems))
            return existing, False

    t0 = time.perf_counter()
    plan = replace(plan, model=with_threads(plan.model, threads))
    with tempfile.TemporaryDirectory(prefix="streamer-cache-students-") as tmp:
        plan, check = with_backends(plan, Path(tmp))
        models = ModelStage(plan.model)
        models.check()
        outputs = []
        for i, job in enumerate(plan.jobs, start=1):
            decoded = decode_job(job)
            if decoded.windows is None:
                raise AudioDecodeError(f"{job.path}: {decoded.error} (every cached file must decode)")
            outputs.append(models.run(decoded.windows))
            log.info("[%d/%d] %s", i, len(plan.jobs), job.path.name)

    cache = ModelCache(
        stems=tuple(stems),
        classes=plan.competition.classes,
        embedding=np.stack([o.embedding for o in outputs]).astype(np.float32, copy=False),
        logits={name: np.stack([o.logits[name] for o in outputs]).astype(np.float32, copy=False) for name in plan.model.member_names},
        dependencies=current,
        info={
            "streamer_version": __version__,
            "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "selection": selection,
            "recipe": plan.recipe.recipe.name,
            "members": list(plan.model.member_names),
            "exported_to_onnx": [name for name, _ in plan.model.exported],
            "backend": backend,
            "models": describe_models(plan.model, plan.reducer),
            "backend_check": check.to_dict() if check is not None else None,
            "n_matched_classes": plan.n_matched_classes,
            "seconds": round(time.perf_counter() - t0, 3),
        },
    )
    cache.save(out)
    return cache, True
