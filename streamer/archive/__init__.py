"""Long soundscape archives (issue #5): inputs of any length and format, streamed in chunks.

Building blocks so far: :func:`streamer.archive.inputs.expand_inputs` (what to score),
:func:`streamer.audio.iter_chunks` (streaming decode) and :mod:`streamer.archive.timing` (site and
per-chunk hour). The ``streamer archive`` command itself is not there yet.
"""
