"""Long soundscape archives (issue #5): inputs of any length and format, streamed in chunks.

Building blocks so far: :func:`streamer.archive.inputs.expand_inputs` and
:func:`streamer.audio.iter_chunks`. The ``streamer archive`` command is not there yet.
"""
