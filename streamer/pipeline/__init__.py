"""The process layer that ``infer``, ``archive`` and the benchmarks share.

:mod:`~streamer.pipeline.children` is the only place that creates processes and pipes;
:mod:`~streamer.pipeline.layout` turns CPUs into processes and threads;
:mod:`~streamer.pipeline.attempts` is the rule of how often a unit of work is tried. Nothing
here knows what a submission or an archive is, so it imports neither :mod:`streamer.infer`
nor :mod:`streamer.archive`.
"""
