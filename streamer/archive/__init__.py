"""Long soundscape archives (issue #5): inputs of any length and format, streamed in chunks.

:mod:`~streamer.archive.inputs` (what to score), :func:`streamer.audio.iter_chunks` (streaming
decode), :mod:`~streamer.archive.timing` (site and per-chunk hour), :mod:`~streamer.archive.journal`
(resume), :mod:`~streamer.archive.output` (score files) and :mod:`~streamer.archive.run` (the
``streamer archive`` command, one process for now).
"""
