"""Settings of a run, checked once when they are made."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from streamer.errors import ConfigError

#: Model-card blend (Perch, CNN, CRNN) and prior scale of the public LB 0.914 run (SPEC §3).
DEFAULT_BLEND = (0.80, 0.13, 0.07)
DEFAULT_PRIOR_SCALE = 0.20
DEFAULT_DRY_RUN_FILES = 20
DEFAULT_N_FOLDS = 4


@dataclass(frozen=True)
class InferConfig:
    """Everything ``streamer infer`` needs.

    Attributes:
        data_dir: competition folder (SPEC §1).
        perch: Perch ONNX file or its folder.
        moe_dir: folder of the MoE bundle.
        out: submission CSV to write.
        perch_labels: explicit Perch label list (else found beside the ONNX file).
        weights_prefix: fold file prefix (else discovered from the folder).
        n_folds: number of ProtoSSM folds required.
        cnn, crnn: explicit student checkpoints (else found in ``moe_dir``).
        use_cnn, use_crnn: whether to load each student at all.
        blend_perch, blend_cnn, blend_crnn: blend weights of the pre-sigmoid logits.
        prior_scale: weight of the site/hour prior logit.
        proto_d_model: ProtoSSM width; ``None`` reads it from the checkpoint.
        dry_run_files: how many training soundscapes to score when ``test_soundscapes`` is empty.
        threads: intra-op threads for onnxruntime and torch; ``None`` leaves the libraries'
            own defaults (how the original script ran).
        allow_spinning: let onnxruntime's idle threads spin (off by default: spinning steals CPU
            from neighbouring processes).
    """

    data_dir: Path
    perch: Path
    moe_dir: Path
    out: Path = Path("submission.csv")
    perch_labels: Path | None = None
    weights_prefix: str | None = None
    n_folds: int = DEFAULT_N_FOLDS
    cnn: Path | None = None
    crnn: Path | None = None
    use_cnn: bool = True
    use_crnn: bool = True
    blend_perch: float = DEFAULT_BLEND[0]
    blend_cnn: float = DEFAULT_BLEND[1]
    blend_crnn: float = DEFAULT_BLEND[2]
    prior_scale: float = DEFAULT_PRIOR_SCALE
    proto_d_model: int | None = None
    dry_run_files: int = DEFAULT_DRY_RUN_FILES
    threads: int | None = None
    allow_spinning: bool = False

    def __post_init__(self) -> None:
        for name in ("blend_perch", "blend_cnn", "blend_crnn"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be a finite number >= 0, got {value}")
        if not math.isfinite(self.prior_scale):
            raise ConfigError(f"--prior-scale must be finite, got {self.prior_scale}")
        if self.n_folds < 1:
            raise ConfigError(f"--n-folds must be >= 1, got {self.n_folds}")
        if self.dry_run_files < 0:
            raise ConfigError(f"--dry-run-files must be >= 0, got {self.dry_run_files}")
        if self.proto_d_model is not None and self.proto_d_model < 1:
            raise ConfigError(f"--proto-d-model must be >= 1, got {self.proto_d_model}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"--threads must be >= 1 or 'default', got {self.threads}")

    @property
    def blend_weights(self) -> tuple[float, float, float]:
        return (self.blend_perch, self.blend_cnn, self.blend_crnn)
