"""The chaneyma mixture-of-experts networks and their log-mel front end.

The three networks reproduce the released checkpoints' module trees exactly, so that
``load_state_dict(strict=True)`` accepts the real files; ``tests/test_networks.py`` compares
their ``state_dict()`` keys, shapes and dtypes with ``shared/artifact_format``.

Shapes in docstrings: B batch, T windows per file (12), D model width, N SSM state size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from streamer.models.logmel import (  # noqa: F401 - one definition, shared with the numpy front end
    MEL_F_MAX_HZ,
    MEL_F_MIN_HZ,
    MEL_HOP_LENGTH,
    MEL_LOG_OFFSET,
    MEL_N_FFT,
    MEL_N_MELS,
    MEL_SAMPLE_RATE_HZ,
    MEL_WIN_LENGTH,
)


def _hz_to_mel_htk(freq_hz: float) -> float:
    return 2595.0 * math.log10(1.0 + freq_hz / 700.0)


def mel_filterbank(
    n_freqs: int = MEL_N_FFT // 2 + 1,
    f_min_hz: float = MEL_F_MIN_HZ,
    f_max_hz: float = MEL_F_MAX_HZ,
    n_mels: int = MEL_N_MELS,
    sample_rate_hz: int = MEL_SAMPLE_RATE_HZ,
) -> torch.Tensor:
    """Triangular HTK mel filters without area normalisation, as torchaudio builds them.

    Returns:
        float32 tensor ``[n_freqs, n_mels]``.
    """
    all_freqs = torch.linspace(0, sample_rate_hz // 2, n_freqs)
    m_min = _hz_to_mel_htk(f_min_hz)
    m_max = _hz_to_mel_htk(f_max_hz)
    m_pts = torch.linspace(m_min, m_max, n_mels + 2)
    f_pts = 700.0 * (10 ** (m_pts / 2595.0) - 1.0)
    f_diff = f_pts[1:] - f_pts[:-1]
    slopes = f_pts.unsqueeze(0) - all_freqs.unsqueeze(1)  # [n_freqs, n_mels + 2]
    down_slopes = (-1.0 * slopes[:, :-2]) / f_diff[:-1]
    up_slopes = slopes[:, 2:] / f_diff[1:]
    return torch.clamp(torch.min(down_slopes, up_slopes), min=0.0)


class LogMel(nn.Module):
    """Waveform windows to the students' log-mel input.

    Numerically equal to ``torchaudio.transforms.MelSpectrogram(sample_rate=32000, n_fft=1024,
    win_length=1024, hop_length=320, f_min=20, f_max=14000, n_mels=128)`` (periodic Hann window,
    centred frames with reflect padding, power 2, HTK scale, no filter normalisation) followed by
    ``log(mel + 1e-6)``, without depending on torchaudio.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("window", torch.hann_window(MEL_WIN_LENGTH, periodic=True), persistent=False)
        self.register_buffer("fbank", mel_filterbank(), persistent=False)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        """Args: waveform float32 ``[B, n_samples]``. Returns float32 ``[B, 1, 128, n_frames]``
        (501 frames for 160,000 samples)."""
        spec = torch.stft(
            waveform,
            n_fft=MEL_N_FFT,
            hop_length=MEL_HOP_LENGTH,
            win_length=MEL_WIN_LENGTH,
            window=self.window,
            center=True,
            pad_mode="reflect",
            normalized=False,
            onesided=True,
            return_complex=True,
        )
        power = spec.abs().pow(2.0)  # [B, n_freqs, n_frames]
        mel = torch.matmul(power.transpose(-1, -2), self.fbank).transpose(-1, -2)  # [B, n_mels, n_frames]
        return torch.log(mel + MEL_LOG_OFFSET).unsqueeze(1)


def _conv_block(c_in: int, c_out: int, pool: bool) -> list[nn.Module]:
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, kernel_size=3, padding=1),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    ]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return layers


class StudentCNN(nn.Module):
    """Log-mel ``[B,1,128,F]`` → (embedding ``[B,1536]``, logits ``[B,n_classes]``)."""

    def __init__(self, n_classes: int = 234, emb_dim: int = 1536, hidden: int = 512, dropout: float = 0.3) -> None:
        super().__init__()
        self.body = nn.Sequential(
            *_conv_block(1, 32, pool=True),
            *_conv_block(32, 64, pool=True),
            *_conv_block(64, 128, pool=False),
            nn.AdaptiveAvgPool2d(1),
        )
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(128, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout))
        self.emb_head = nn.Linear(hidden, emb_dim)
        self.logit_head = nn.Linear(hidden, n_classes)

    def forward(self, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.fc(self.body(mel))
        return self.emb_head(z), self.logit_head(z)


class StudentCRNN(nn.Module):
    """Log-mel ``[B,1,128,F]`` → (embedding ``[B,1536]``, logits ``[B,n_classes]``).

    Two conv blocks give ``[B,64,32,F/4]``; time-major with channel-major flattening gives a
    ``[B,F/4,2048]`` sequence for a bidirectional GRU whose outputs are averaged over time.
    """

    def __init__(
        self, n_classes: int = 234, emb_dim: int = 1536, gru_hidden: int = 192, n_mels: int = 128, dropout: float = 0.3
    ) -> None:
        super().__init__()
        self.conv = nn.Sequential(*_conv_block(1, 32, pool=True), *_conv_block(32, 64, pool=True))
        self.gru = nn.GRU(64 * (n_mels // 4), gru_hidden, num_layers=1, batch_first=True, bidirectional=True)
        self.fc = nn.Sequential(nn.Linear(2 * gru_hidden, 2 * gru_hidden), nn.ReLU(inplace=True), nn.Dropout(dropout))
        self.emb_head = nn.Linear(2 * gru_hidden, emb_dim)
        self.logit_head = nn.Linear(2 * gru_hidden, n_classes)

    def forward(self, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.conv(mel)  # [B, C, M, T]
        b, c, m, t = x.shape
        x = x.permute(0, 3, 1, 2).reshape(b, t, c * m)  # channel-major: index = c * M + m
        seq, _ = self.gru(x)
        z = self.fc(seq.mean(dim=1))
        return self.emb_head(z), self.logit_head(z)


class SelectiveSSM(nn.Module):
    """The chaneyma SelectiveSSM block, quirks included.

    The scan is driven by the block's *input* ``x``, not by the ``in_proj`` output nor the
    convolved signal; only the convolved signal ``xc`` feeds ``dt``, ``B`` and ``C``. The second
    half of ``in_proj``'s output is computed and discarded, as in the original. Both quirks change
    the numbers, so they are kept.
    """

    def __init__(self, d_model: int, d_state: int = 24, d_conv: int = 4) -> None:
        super().__init__()
        self.d_model = d_model
        self.d_state = d_state
        self.in_proj = nn.Linear(d_model, 2 * d_model, bias=False)
        self.conv1d = nn.Conv1d(d_model, d_model, kernel_size=d_conv, padding=d_conv - 1, groups=d_model)
        self.dt_proj = nn.Linear(d_model, d_model)
        a_init = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(d_model, 1)
        self.A_log = nn.Parameter(torch.log(a_init))
        self.D = nn.Parameter(torch.ones(d_model))
        self.B_proj = nn.Linear(d_model, d_state, bias=False)
        self.C_proj = nn.Linear(d_model, d_state, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x ``[B,T,D]``. Returns ``[B,T,D]``."""
        n_batch, n_steps, _ = x.shape
        x_proj, _unused_gate = self.in_proj(x).chunk(2, dim=-1)
        xc = self.conv1d(x_proj.transpose(1, 2))[..., :n_steps].transpose(1, 2)
        xc = F.silu(xc)
        dt = F.softplus(self.dt_proj(xc))  # [B,T,D]
        a = -torch.exp(self.A_log)  # [D,N]
        b_t = self.B_proj(xc)  # [B,T,N]
        c_t = self.C_proj(xc)  # [B,T,N]
        # h[t] = h[t-1]·exp(A·dt[t]) + x[t]·dt[t]·B[t]. The decay and the input term of every
        # step are computed for all steps at once (the same element-wise operations, in the same
        # order, as inside a step-by-step loop, so the numbers are identical); only the
        # recurrence itself stays a loop, which keeps the per-step operator count small.
        dt4 = dt[..., None]  # [B,T,D,1]
        decay = torch.exp(a * dt4)  # [B,T,D,N]
        drive = x[..., None] * dt4 * b_t[:, :, None, :]  # [B,T,D,N]
        states = []
        state = x.new_zeros(n_batch, self.d_model, self.d_state)
        for t in range(n_steps):
            state = state * decay[:, t] + drive[:, t]
            states.append(state)
        y = (torch.stack(states, dim=1) * c_t[:, :, None, :]).sum(dim=-1)  # [B,T,D]
        return y + x * self.D


class ProtoSSM(nn.Module):
    """Sequence model over a file's window embeddings, fused with the teacher logits.

    Inputs: embedding ``[B,T,1536]``, teacher logits ``[B,T,n_classes]``, site ids ``[B]``
    (int64), hours ``[B]`` (int64). Output: logits ``[B,T,n_classes]``.
    """

    def __init__(
        self,
        d_input: int = 1536,
        d_model: int = 320,
        d_state: int = 24,
        n_layers: int = 3,
        n_classes: int = 234,
        n_windows: int = 12,
        n_sites: int = 7,
        meta_dim: int = 16,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.n_windows = n_windows
        self.input_proj = nn.Sequential(
            nn.Linear(d_input, d_model), nn.LayerNorm(d_model), nn.GELU(), nn.Dropout(dropout)
        )
        self.pos_enc = nn.Parameter(torch.zeros(1, n_windows, d_model))
        self.site_emb = nn.Embedding(n_sites, meta_dim)
        self.hour_emb = nn.Embedding(24, meta_dim)
        self.meta_proj = nn.Linear(2 * meta_dim, d_model)
        self.ssm_fwd = nn.ModuleList([SelectiveSSM(d_model, d_state) for _ in range(n_layers)])
        self.ssm_bwd = nn.ModuleList([SelectiveSSM(d_model, d_state) for _ in range(n_layers)])
        self.merge = nn.ModuleList([nn.Linear(2 * d_model, d_model) for _ in range(n_layers)])
        self.norms = nn.ModuleList([nn.LayerNorm(d_model) for _ in range(n_layers)])
        self.drop = nn.Dropout(dropout)
        self.prototypes = nn.Parameter(torch.randn(n_classes, d_model) * 0.02)
        self.proto_temp = nn.Parameter(torch.tensor(5.0))
        self.class_bias = nn.Parameter(torch.zeros(n_classes))
        self.fusion_alpha = nn.Parameter(torch.zeros(n_classes))

    def forward(
        self, embedding: torch.Tensor, teacher_logits: torch.Tensor, site_ids: torch.Tensor, hours: torch.Tensor
    ) -> torch.Tensor:
        return self.fuse(self.similarity(embedding, site_ids, hours), teacher_logits)

    def similarity(self, embedding: torch.Tensor, site_ids: torch.Tensor, hours: torch.Tensor) -> torch.Tensor:
        """The prototype branch ``[B,T,n_classes]``: everything that does not see the teacher."""
        n_steps = embedding.shape[1]
        h = self.input_proj(embedding) + self.pos_enc[:, :n_steps]
        meta = torch.cat([self.site_emb(site_ids), self.hour_emb(hours)], dim=-1)
        h = h + self.meta_proj(meta).unsqueeze(1)
        for fwd, bwd, merge, norm in zip(self.ssm_fwd, self.ssm_bwd, self.merge, self.norms):
            a = fwd(h)
            b = bwd(h.flip(1)).flip(1)
            h = norm(h + self.drop(merge(torch.cat([a, b], dim=-1))))
        h_unit = F.normalize(h, dim=-1)
        p_unit = F.normalize(self.prototypes, dim=-1)
        return torch.matmul(h_unit, p_unit.t()) * F.softplus(self.proto_temp) + self.class_bias

    def fuse(self, sim: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        """Per-class mix of the prototype branch and the teacher logits: the only place the
        teacher enters (the local-validation sweep reuses :meth:`similarity` across settings)."""
        alpha = torch.sigmoid(self.fusion_alpha)
        return alpha * sim + (1.0 - alpha) * teacher_logits
