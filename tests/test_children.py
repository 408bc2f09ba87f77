"""The child-process layer's environment: what a child sees before its own code runs."""

import os

from streamer.pipeline.children import Body, ChildSpec, Message, Supervisor

SEEN_AT_UNPICKLE = {}


class _Probe:
    """Records the thread variables at the moment the child unpickles it: when numpy (and
    its BLAS pool) would be imported, before child_main sets anything."""

    def __reduce__(self):
        return (_probe, ())


def _probe():
    SEEN_AT_UNPICKLE.update({k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")})
    return _Probe()


class EnvBody(Body):
    def __init__(self) -> None:
        self.probe = _Probe()

    def handle(self, msg, send) -> None:
        send(dict(SEEN_AT_UNPICKLE))


def test_a_child_has_its_thread_variables_before_it_unpickles_anything(monkeypatch):
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "7")
    supervisor = Supervisor()
    try:
        child = supervisor.start(ChildSpec("probe", 0, EnvBody(), threads=1))
        assert os.environ["OPENBLAS_NUM_THREADS"] == "7"  # the parent's own environment is restored
        got, asked = None, False
        while got is None:
            for event in supervisor.wait(5.0):
                assert not hasattr(event, "exitcode"), event  # a death fails the test
                if isinstance(event, Message) and isinstance(event.msg, dict):
                    got = event.msg
            if child.ready and not asked:
                asked = supervisor.send(child, "which")
    finally:
        supervisor.shutdown()
    assert got == {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
