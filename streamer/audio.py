"""Audio decoding: any file soundfile reads, to mono float32 at 32 kHz.

Decoding never reads more of a file than it needs: the Kaggle path reads the first 60 s only,
so a long archive file costs no more memory than a one-minute one. Channels are averaged; other
sample rates are resampled with soxr (the original script refused them). Anything that goes
wrong while opening or reading becomes :class:`~streamer.errors.AudioDecodeError`, which callers
turn into fallback rows.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass

import numpy as np

from streamer.errors import AudioDecodeError

log = logging.getLogger(__name__)

#: Perch 2.0's input rate and window.
TARGET_SAMPLE_RATE_HZ = 32000
WINDOW_S = 5
WINDOW_SAMPLES = TARGET_SAMPLE_RATE_HZ * WINDOW_S

#: Frames per soundfile read/write call. Large single OGG writes have crashed libsndfile here
#: (measured on the development VMs), and bounded reads keep memory flat.
IO_BLOCK_FRAMES = 1 << 18

#: Extra input read past the needed span before resampling, so the resampler's filter sees
#: real signal at the cut rather than an artificial end (0.25 s is far beyond soxr HQ's delay).
RESAMPLE_MARGIN_S = 0.25


@dataclass(frozen=True)
class WindowFraming:
    """How a recording becomes model windows: the model's rate, the window, the resampler and
    what happens to a short last window. A recipe's ``[framing]`` gives one; the archive streams
    ``windows_per_chunk`` windows at a time.

    Attributes:
        rate_hz: the model's sample rate.
        window_samples: samples of one window (windows follow each other, no overlap).
        windows_per_chunk: windows streamed and reduced together (60 s of audio in both shipped
            framings: 12 x 5 s for Perch, 20 x 3 s for BirdNET).
        resampler: ``soxr-hq`` (streaming soxr, Perch's recipes) or ``kaiser_fast`` (resampy's
            filter as librosa applies it, :mod:`streamer.kaiser`: BirdNET-Analyzer's numbers).
        piece_s: with ``kaiser_fast``, the input is resampled in independent pieces of this many
            seconds (BirdNET-Analyzer reads and resamples a file 600 s at a time, and its
            windows near a piece's edge see the zero padding there); ``None``: the whole file.
        min_last_window_s: a last window holding less audio than this is dropped
            (BirdNET-Analyzer: 1 s); 0: every window with any audio is kept.
    """

    rate_hz: int = 32000
    window_samples: int = 160000
    windows_per_chunk: int = 12
    resampler: str = "soxr-hq"
    piece_s: int | None = None
    min_last_window_s: float = 0.0

    @property
    def window_s(self) -> float:
        return self.window_samples / self.rate_hz

    @property
    def chunk_samples(self) -> int:
        return self.window_samples * self.windows_per_chunk

    @property
    def chunk_s(self) -> float:
        return self.chunk_samples / self.rate_hz

    def windows_of(self, n_real: int) -> int:
        """Windows kept from a stretch of ``n_real`` samples that starts on a window boundary
        and ends where the audio ends: every window with audio, but a last one shorter than
        ``min_last_window_s``."""
        if n_real <= 0:
            return 0
        n = -(-n_real // self.window_samples)
        tail = n_real - (n - 1) * self.window_samples
        if tail < self.min_last_window_s * self.rate_hz:
            n -= 1
        return n


#: Perch 2.0's framing: 5-s windows at 32 kHz (soxr HQ), streamed 12 at a time.
PERCH_FRAMING = WindowFraming()


@dataclass(frozen=True)
class DecodedAudio:
    """Mono samples at :data:`TARGET_SAMPLE_RATE_HZ`.

    Attributes:
        samples: float32 ``[n_samples]``; exactly the requested length (zero-padded or cut).
        source_rate_hz: the file's own sample rate.
        source_channels: the file's channel count.
        n_source_samples: how many real (not padded) samples at 32 kHz the span held.
        notes: human-readable remarks (resampled, padded, cut, ...) for the log.
    """

    samples: np.ndarray
    source_rate_hz: int
    source_channels: int
    n_source_samples: int
    notes: tuple[str, ...] = ()


def _import_soundfile():
    try:
        import soundfile
    except ImportError as exc:  # pragma: no cover - depends on the environment
        from streamer.errors import DependencyError

        raise DependencyError("the 'soundfile' package is required to decode audio: pip install soundfile") from exc
    return soundfile


#: Extensions taken as audio without opening the file (what libsndfile reads, plus MP3 and Opus,
#: which recent libsndfile builds decode). Other files are opened to ask soundfile.
AUDIO_EXTENSIONS = frozenset(
    {".ogg", ".oga", ".opus", ".flac", ".wav", ".wave", ".mp3", ".aif", ".aiff", ".aifc", ".au", ".snd", ".w64", ".caf", ".rf64"}
)


def _decode_error(exc: Exception, path) -> str:
    """``exc`` in words, without the path libsndfile repeats ("Error opening '<path>': ..."):
    the message names the file once, at its start."""
    return f"{type(exc).__name__}: {str(exc).replace(f'Error opening {os.fspath(path)!r}: ', '')}"


def is_audio(path: str | os.PathLike) -> bool:
    """True for a file with an audio extension (any case), or one soundfile can open."""
    from pathlib import Path

    path = Path(path)
    if path.suffix.lower() in AUDIO_EXTENSIONS:
        return True
    sf = _import_soundfile()
    try:
        sf.info(str(path))
    except Exception as exc:  # noqa: BLE001 - libsndfile's errors are not one type: any means "not audio"
        log.debug("%s: not audio (%s)", path, exc)
        return False
    return True


def find_audio(folder: str | os.PathLike) -> tuple[list, list]:
    """(audio files, other files) directly in ``folder``; hidden files are ignored."""
    from pathlib import Path

    audio, other = [], []
    for path in sorted(Path(folder).iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        (audio if is_audio(path) else other).append(path)
    return audio, other


def resample(samples: np.ndarray, rate_in_hz: int, rate_out_hz: int = TARGET_SAMPLE_RATE_HZ) -> np.ndarray:
    """Resample mono float32 audio with soxr's high-quality filter."""
    if rate_in_hz == rate_out_hz:
        return samples
    import soxr

    return soxr.resample(samples, rate_in_hz, rate_out_hz, quality="HQ").astype(np.float32, copy=False)


def read_span(
    path: str | os.PathLike, n_samples: int, offset_samples: int = 0, out: np.ndarray | None = None
) -> DecodedAudio:
    """Decode ``n_samples`` at 32 kHz starting at ``offset_samples`` (32 kHz units).

    The result is zero-padded when the file ends early. Only the needed part of the file is read.

    Args:
        out: optional float32 ``[n_samples]`` array to decode into (for example a shared-memory
            slot); the result's ``samples`` is then that array.

    Raises:
        AudioDecodeError: the file cannot be opened or read, or holds no samples at all.
    """
    sf = _import_soundfile()
    path = os.fspath(path)
    notes: list[str] = []
    if out is not None and (out.dtype != np.float32 or out.shape != (n_samples,)):
        raise ValueError(f"out must be float32 [{n_samples}], got {out.dtype} {out.shape}")
    try:
        with sf.SoundFile(path) as handle:
            rate = int(handle.samplerate)
            channels = int(handle.channels)
            total_frames = int(handle.frames)
            if rate <= 0:
                raise AudioDecodeError(f"{path}: invalid sample rate {rate}")
            start = int(round(offset_samples * rate / TARGET_SAMPLE_RATE_HZ))
            if channels == 1 and rate == TARGET_SAMPLE_RATE_HZ:
                # The common case: decode straight into the destination, no intermediate copies.
                if start > 0:
                    handle.seek(min(start, total_frames) if total_frames > 0 else start)
                dest = out if out is not None else np.empty(n_samples, dtype=np.float32)
                n_read = handle.read(n_samples, dtype="float32", out=dest).shape[0]
                return _finish_span(path, dest, n_read, offset_samples, total_frames, rate, channels)
            if rate == TARGET_SAMPLE_RATE_HZ:
                want = n_samples
            else:
                want = int(np.ceil((n_samples / TARGET_SAMPLE_RATE_HZ + RESAMPLE_MARGIN_S) * rate))
            if start > 0:
                handle.seek(min(start, total_frames) if total_frames > 0 else start)
            blocks = []
            remaining = want
            while remaining > 0:
                block = handle.read(min(IO_BLOCK_FRAMES, remaining), dtype="float32", always_2d=True)
                if block.shape[0] == 0:
                    break
                blocks.append(block)
                remaining -= block.shape[0]
    except AudioDecodeError:
        raise
    except Exception as exc:  # soundfile raises several types (LibsndfileError, RuntimeError, TypeError)
        raise AudioDecodeError(f"{path}: cannot decode audio ({_decode_error(exc, path)})") from exc

    if not blocks:
        if offset_samples == 0:
            raise AudioDecodeError(f"{path}: the file holds no audio samples")
        mono = np.zeros(0, dtype=np.float32)
    else:
        frames = np.concatenate(blocks, axis=0)
        mono = frames[:, 0] if channels == 1 else frames.mean(axis=1, dtype=np.float32)
        if channels > 1:
            notes.append(f"{channels} channels averaged")
    if rate != TARGET_SAMPLE_RATE_HZ:
        mono = resample(mono, rate)
        notes.append(f"resampled {rate} Hz -> {TARGET_SAMPLE_RATE_HZ} Hz")
    n_real = min(mono.shape[0], n_samples)
    dest = out if out is not None else np.empty(n_samples, dtype=np.float32)
    dest[:n_real] = mono[:n_real]
    return _finish_span(path, dest, n_real, offset_samples, total_frames, rate, channels, notes)


def _finish_span(
    path: str,
    dest: np.ndarray,
    n_read: int,
    offset_samples: int,
    total_frames: int,
    rate: int,
    channels: int,
    notes: list[str] | None = None,
) -> DecodedAudio:
    """Zero-pad, clean and describe a span whose first ``n_read`` samples are in ``dest``
    (shared by the in-place fast path and the general path)."""
    if n_read == 0 and offset_samples == 0:
        raise AudioDecodeError(f"{path}: the file holds no audio samples")
    notes = list(notes or ())
    n_samples = dest.shape[0]
    dest[n_read:] = 0.0
    real = dest[:n_read]
    bad = ~np.isfinite(real)
    if bad.any():
        notes.append(f"{int(bad.sum())} non-finite samples set to 0")
        real[bad] = 0.0
    if n_read < n_samples and offset_samples == 0:
        notes.append(f"padded from {n_read / TARGET_SAMPLE_RATE_HZ:.2f} s")
    if offset_samples == 0 and total_frames / rate > n_samples / TARGET_SAMPLE_RATE_HZ:
        notes.append(f"cut from {total_frames / rate:.2f} s")
    return DecodedAudio(
        samples=dest, source_rate_hz=rate, source_channels=channels, n_source_samples=n_read, notes=tuple(notes)
    )


@dataclass(frozen=True)
class AudioChunk:
    """One consecutive piece of a long recording, at 32 kHz mono.

    Attributes:
        index: 0 for the first chunk.
        samples: float32 ``[chunk_samples]``; the last chunk is zero-padded.
        n_real: how many of ``samples`` are real audio.
    """

    index: int
    samples: np.ndarray
    n_real: int
    rate_hz: int = TARGET_SAMPLE_RATE_HZ

    @property
    def start_s(self) -> float:
        return self.index * self.samples.shape[0] / self.rate_hz


#: Whole seconds of input a range of chunks (see :func:`iter_chunks`) decodes before its first
#: chunk, so the resampler's filter is filled with the real signal (soxr HQ's filter spans
#: milliseconds). Measured: a range's samples then equal the whole file's to float32 round-off
#: (at most 1.8e-7 apart on 22-48 kHz stereo FLAC, Opus and MP3, and on noise at 8-96 kHz) from
#: 1 s on; 2 s leaves a margin at the cost of 2 s of decoding per range.
RANGE_WARMUP_S = 2


def iter_chunks(path: str | os.PathLike, chunk_samples: int, first_chunk: int = 0, end_chunk: int | None = None,
                *, framing: WindowFraming | None = None):
    """Stream a recording of any length, rate and channel count as consecutive 32-kHz chunks.

    Memory stays bounded by one chunk plus one read block, whatever the file's length. Channels
    are averaged; other rates go through soxr's streaming resampler, whose output is identical
    to resampling the whole file at once (no seams between chunks).

    A *range* of chunks ``first_chunk .. end_chunk - 1`` (``end_chunk=None``: to the end of the
    file) gives the same chunks as the whole file's stream, so that several processes can score
    one recording: the decoder seeks (sample-exact in libsndfile for WAV, FLAC, Vorbis, Opus and
    MP3) to a whole second of input :data:`RANGE_WARMUP_S` before the range, the resampler runs
    from there and its output before the range is dropped. Starting on a whole second puts the
    resampler on the same sample grid as the whole file's; its samples then equal the whole
    file's to float32 round-off (exactly, for 32-kHz input). A range past the end of the file
    yields nothing.

    ``framing`` (default: Perch's) sets the output rate and the resampler; with
    ``kaiser_fast`` the chunks come from :func:`_iter_chunks_kaiser` (BirdNET-Analyzer's
    resampling, piece by piece).

    Yields:
        :class:`AudioChunk` objects, the last one of the file zero-padded.

    Raises:
        AudioDecodeError: the file cannot be opened, holds no samples, or fails mid-way (the
            chunks yielded before stay valid).
    """
    sf = _import_soundfile()
    path = os.fspath(path)
    if first_chunk < 0 or (end_chunk is not None and end_chunk <= first_chunk):
        raise ValueError(f"bad chunk range {first_chunk}..{end_chunk}")
    framing = framing or PERCH_FRAMING
    if framing.resampler == "kaiser_fast":
        yield from _iter_chunks_kaiser(path, chunk_samples, first_chunk, end_chunk, framing)
        return
    target = framing.rate_hz
    try:
        handle = sf.SoundFile(path)
    except Exception as exc:
        raise AudioDecodeError(f"{path}: cannot decode audio ({_decode_error(exc, path)})") from exc
    with handle:
        rate, channels = int(handle.samplerate), int(handle.channels)
        start_out = first_chunk * chunk_samples  # the range's first sample at 32 kHz
        if rate == target:
            start_in, drop = start_out, 0
        else:
            warm_s = max(0, start_out // target - RANGE_WARMUP_S)
            start_in, drop = warm_s * rate, start_out - warm_s * target
        if start_in > 0 and not _skip_to(handle, path, start_in):
            return  # the range starts past the end of the file
        stream = None
        if rate != target:
            import soxr

            stream = soxr.ResampleStream(rate, target, 1, dtype="float32", quality="HQ")
        pending = np.zeros(0, dtype=np.float32)
        index = first_chunk
        stop = math.inf if end_chunk is None else end_chunk
        n_total = 0
        while index < stop:
            try:
                block = handle.read(IO_BLOCK_FRAMES, dtype="float32", always_2d=True)
            except Exception as exc:
                raise AudioDecodeError(
                    f"{path}: decoding failed after {(start_out + n_total) / target:.1f} s "
                    f"({type(exc).__name__}: {exc})"
                ) from exc
            last = block.shape[0] == 0
            mono = block[:, 0] if channels == 1 else block.mean(axis=1, dtype=np.float32)
            if stream is not None:
                mono = stream.resample_chunk(np.ascontiguousarray(mono), last=last)
            if drop and mono.size:  # the warm-up before the range
                cut = min(drop, mono.shape[0])
                mono, drop = mono[cut:], drop - cut
            if mono.size:
                mono = np.nan_to_num(mono, nan=0.0, posinf=0.0, neginf=0.0)
                pending = np.concatenate([pending, mono])
                n_total += mono.shape[0]
            while pending.shape[0] >= chunk_samples and index < stop:
                yield AudioChunk(index, pending[:chunk_samples].copy(), chunk_samples, target)
                pending = pending[chunk_samples:]
                index += 1
            if last:
                break
        if n_total == 0 and first_chunk == 0:
            raise AudioDecodeError(f"{path}: the file holds no audio samples")
        if pending.shape[0] and index < stop:
            padded = np.zeros(chunk_samples, dtype=np.float32)
            padded[: pending.shape[0]] = pending
            yield AudioChunk(index, padded, int(pending.shape[0]), target)


def _iter_chunks_kaiser(path: str, chunk_samples: int, first_chunk: int, end_chunk: int | None, framing: WindowFraming):
    """:func:`iter_chunks` with resampy's ``kaiser_fast`` filter (:class:`streamer.kaiser.KaiserFast`).

    The output is BirdNET-Analyzer's: the input's channels averaged, then each piece of
    ``framing.piece_s`` seconds of input resampled on its own (zero signal beyond the piece's
    edges) to librosa's length for it. Each chunk decodes only the input its outputs need
    (:meth:`KaiserFast.support`), so a range of chunks starting anywhere gives exactly the
    whole file's samples, with no warm-up. Input already at the model's rate is not resampled
    (librosa returns it as it is).
    """
    sf = _import_soundfile()
    try:
        handle = sf.SoundFile(path)
    except Exception as exc:
        raise AudioDecodeError(f"{path}: cannot decode audio ({_decode_error(exc, path)})") from exc
    with handle:
        rate, channels, n_in = int(handle.samplerate), int(handle.channels), int(handle.frames)
        if rate <= 0:
            raise AudioDecodeError(f"{path}: invalid sample rate {rate}")
        if n_in <= 0:
            if first_chunk == 0:
                raise AudioDecodeError(f"{path}: the file holds no audio samples")
            return
        out_rate = framing.rate_hz
        piece_in = framing.piece_s * rate if framing.piece_s else n_in
        piece_out = framing.piece_s * out_rate if framing.piece_s else None
        if piece_out is not None and piece_out % chunk_samples:
            raise ValueError(f"a resampling piece of {framing.piece_s} s is not a whole number of chunks")
        resampler = None
        if rate != out_rate:
            from streamer.kaiser import KaiserFast

            resampler = KaiserFast(rate, out_rate)
        reader = _MonoReader(handle, path, channels)
        index = first_chunk
        while end_chunk is None or index < end_chunk:
            out0 = index * chunk_samples
            piece = out0 // piece_out if piece_out else 0
            in0 = piece * piece_in
            n_piece = min(piece_in, n_in - in0)
            if n_piece <= 0:
                break
            n_out = n_piece if resampler is None else resampler.n_out(n_piece)
            o0 = out0 - (piece * piece_out if piece_out else 0)
            if o0 >= n_out:
                break
            o1 = min(o0 + chunk_samples, n_out)
            s0, s1 = (o0, o1) if resampler is None else resampler.support(o0, o1, n_piece)
            # non-finite input samples are silence here (resampy would spread them over the filter's reach)
            x = np.nan_to_num(reader.read(in0 + s0, in0 + s1), nan=0.0, posinf=0.0, neginf=0.0)
            y = x if resampler is None else resampler.span(x, s0, n_piece, o0, o1)
            samples = np.zeros(chunk_samples, dtype=np.float32)
            samples[: o1 - o0] = np.nan_to_num(y, nan=0.0, posinf=0.0, neginf=0.0)
            yield AudioChunk(index, samples, o1 - o0, out_rate)
            index += 1


class _MonoReader:
    """Mono float32 input frames ``[a, b)`` of an open file, read forward with a small buffer
    (consecutive chunks' inputs overlap by the filter's reach); a file that ends before its
    header's length reads as zeros there."""

    def __init__(self, handle, path: str, channels: int) -> None:
        self.handle, self.path, self.channels = handle, path, channels
        self.buf = np.zeros(0, dtype=np.float32)
        self.start = 0  # input frame of buf[0]
        self.at = None  # the handle's position (None: not positioned yet)

    def read(self, a: int, b: int) -> np.ndarray:
        if self.at is None or a < self.start or a > self.start + self.buf.shape[0]:
            if a > 0 and not _skip_to(self.handle, self.path, a):
                return np.zeros(b - a, dtype=np.float32)
            self.buf, self.start, self.at = np.zeros(0, dtype=np.float32), a, a
        else:
            self.buf, self.start = self.buf[a - self.start:], a
        parts = [self.buf]
        have = self.buf.shape[0]
        while have < b - a:
            try:
                block = self.handle.read(min(IO_BLOCK_FRAMES, max(b - a - have, 1 << 14)), dtype="float32", always_2d=True)
            except Exception as exc:
                raise AudioDecodeError(
                    f"{self.path}: decoding failed after {self.at / self.handle.samplerate:.1f} s ({type(exc).__name__}: {exc})"
                ) from exc
            if block.shape[0] == 0:
                break
            self.at += block.shape[0]
            mono = block[:, 0] if self.channels == 1 else block.mean(axis=1, dtype=np.float32)
            parts.append(np.ascontiguousarray(mono, dtype=np.float32))
            have += block.shape[0]
        self.buf = np.concatenate(parts) if len(parts) > 1 else self.buf
        out = self.buf[: b - a]
        if out.shape[0] < b - a:
            out = np.concatenate([out, np.zeros(b - a - out.shape[0], dtype=np.float32)])
        return out


def _skip_to(handle, path: str, frame: int) -> bool:
    """Move ``handle`` to ``frame`` of its input (seek, or read and drop where the file cannot
    seek); False when the file ends before it."""
    total = int(handle.frames)
    if handle.seekable() and 0 < total:
        if frame >= total:
            return False
        try:
            handle.seek(frame)
        except Exception as exc:
            raise AudioDecodeError(f"{path}: cannot seek to {frame / handle.samplerate:.1f} s ({type(exc).__name__}: {exc})") from exc
        return True
    remaining = frame
    while remaining > 0:
        try:
            n = handle.read(min(IO_BLOCK_FRAMES, remaining), dtype="float32", always_2d=True).shape[0]
        except Exception as exc:
            raise AudioDecodeError(f"{path}: decoding failed before {frame / handle.samplerate:.1f} s ({type(exc).__name__}: {exc})") from exc
        if n == 0:
            return False
        remaining -= n
    return True


def write_audio(path: str | os.PathLike, samples: np.ndarray, sample_rate_hz: int, *, subtype: str | None = None) -> None:
    """Write float audio (``[n]`` or ``[n, channels]``) in blocks.

    OGG Vorbis is written block by block: one large write call has crashed libsndfile here.
    """
    sf = _import_soundfile()
    data = np.asarray(samples, dtype=np.float32)
    if data.ndim == 1:
        data = data[:, None]
    from streamer.files import install, temporary_sibling

    kwargs = {"samplerate": int(sample_rate_hz), "channels": int(data.shape[1])}
    if subtype is not None:
        kwargs["subtype"] = subtype
    fmt = os.path.splitext(os.fspath(path))[1][1:].upper()
    if fmt not in sf.available_formats():
        raise ValueError(f"{path}: no audio format for the extension {fmt!r}")
    fd, tmp = temporary_sibling(path)  # written whole, then renamed into place
    os.close(fd)
    try:
        with sf.SoundFile(str(tmp), mode="w", format=fmt, **kwargs) as handle:
            for start in range(0, data.shape[0], IO_BLOCK_FRAMES // 4):
                handle.write(data[start : start + IO_BLOCK_FRAMES // 4])
        install(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
