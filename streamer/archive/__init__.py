"""Long soundscape archives (issue #5): inputs of any length and format, streamed in chunks.

Building blocks so far: :func:`streamer.archive.inputs.expand_inputs` (what to score),
:func:`streamer.audio.iter_chunks` (streaming decode), :mod:`streamer.archive.timing` (site and
per-chunk hour), :mod:`streamer.archive.journal` (resume) and :mod:`streamer.archive.output`
(per-recording Parquet/CSV score files). The ``streamer archive`` command itself is not there yet.
"""
