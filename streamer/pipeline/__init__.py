"""The multiprocess engine: decoder processes → pinned model processes → reducer in the parent.

Only :mod:`streamer.pipeline.runner` creates processes, pipes and shared buffers.
"""
