"""``streamer infer``, the Kaggle path: every file of a folder scored into one submission CSV.

:mod:`~streamer.infer.run` (the command: row sink, backends, then an engine),
:mod:`~streamer.infer.runner` (the multiprocess engine's event loop) with
:mod:`~streamer.infer.scheduler` (its decisions, without processes),
:mod:`~streamer.infer.workers` (its child bodies) and :mod:`~streamer.infer.messages`,
:mod:`~streamer.infer.sequential` (the one-process reference engine),
:mod:`~streamer.infer.rows` (the row sink), :mod:`~streamer.infer.submission` (the CSV writer),
:mod:`~streamer.infer.budget` (deadline and tiers), :mod:`~streamer.infer.report` (the run
report). The processes themselves are :mod:`streamer.pipeline`'s, shared with ``archive``.
"""
