"""Pure parts of the engine: layout planning, the budget's decisions (fake clock), the writer."""

import math

import numpy as np
import pandas as pd
import pytest

from streamer.infer.budget import TIER_FULL, Budget
from streamer.errors import ConfigError
from streamer.pipeline.layout import CONSUMER_MEMORY_BYTES, plan_layout, sequential_threads
from streamer.infer.submission import SubmissionWriter

BIG = 64 * 2**30


def test_auto_layout_one_consumer_per_core(monkeypatch):
    from streamer.pipeline import layout as layout_mod

    monkeypatch.setattr(layout_mod, "_siblings", lambda cpu: (cpu,))  # no SMT visible: a consumer per CPU
    lay = plan_layout(cpus=(0, 1, 2, 3), memory_bytes=BIG)
    assert (lay.n_workers, lay.threads, lay.n_decoders) == (4, 1, 1)
    assert lay.worker_cpus == ((0,), (1,), (2,), (3,))
    many = plan_layout(cpus=tuple(range(64)), memory_bytes=BIG)  # capped processes, more threads each
    assert (many.n_workers, many.threads) == (8, 8)
    monkeypatch.setattr(layout_mod, "_siblings", lambda cpu: None)  # topology unknown: the same
    assert plan_layout(cpus=(0, 1), memory_bytes=BIG).worker_cpus == ((0,), (1,))
    # 2-way SMT with siblings numbered n/2 apart (0 and 2 share a core): a consumer per core, on its siblings
    monkeypatch.setattr(layout_mod, "_siblings", lambda cpu: (cpu % 2, cpu % 2 + 2))
    lay = plan_layout(cpus=(0, 1, 2, 3), memory_bytes=BIG)
    assert (lay.n_workers, lay.threads) == (2, 2)
    assert lay.worker_cpus == ((0, 2), (1, 3))
    assert plan_layout(cpus=(0, 1, 2, 3), threads=1, memory_bytes=BIG).worker_cpus == ((0,), (1,), (2,), (3,))
    monkeypatch.setattr(layout_mod, "_siblings", lambda cpu: tuple(range(cpu // 4 * 4, cpu // 4 * 4 + 4)))  # 4-way SMT
    assert plan_layout(cpus=tuple(range(8)), memory_bytes=BIG).worker_cpus == ((0, 1, 2, 3), (4, 5, 6, 7))
    assert plan_layout(cpus=(0,), memory_bytes=BIG).threads == 1


def test_smt_width_reads_sysfs():
    from streamer.pipeline.layout import available_cpus, smt_width

    assert smt_width(available_cpus()) >= 0
    assert smt_width((10**6,)) == 0  # no such CPU: unknown


def test_layout_uses_the_given_cpu_ids():
    lay = plan_layout(cpus=(5, 9), threads=1, memory_bytes=BIG)
    assert lay.worker_cpus == ((5,), (9,))


def test_explicit_workers_share_cpus():
    lay = plan_layout(cpus=tuple(range(8)), workers=2, memory_bytes=BIG)
    assert lay.threads == 4 and lay.worker_cpus == ((0, 1, 2, 3), (4, 5, 6, 7))


def test_layout_caps():
    assert plan_layout(cpus=tuple(range(64)), memory_bytes=BIG).n_workers == 8
    assert plan_layout(cpus=tuple(range(64)), memory_bytes=BIG).threads == 8
    assert plan_layout(cpus=tuple(range(64)), memory_bytes=BIG).n_decoders == 8
    assert plan_layout(cpus=(0, 1, 2, 3), threads=1, memory_bytes=2 * CONSUMER_MEMORY_BYTES).n_workers == 2
    assert plan_layout(cpus=(0, 1, 2, 3), memory_bytes=BIG, n_files=1).n_workers == 1


def test_default_threads_are_not_pinned():
    lay = plan_layout(cpus=(0, 1, 2, 3), threads="default", memory_bytes=BIG)
    assert lay.threads is None and lay.n_workers >= 1 and lay.worker_cpus == ((),) * lay.n_workers
    assert plan_layout(cpus=(0, 1), threads=1, pin=False, memory_bytes=BIG).worker_cpus == ((), ())


def test_oversubscribed_layout_wraps_around():
    lay = plan_layout(cpus=(0, 1), workers=3, threads=1, memory_bytes=BIG)
    assert lay.worker_cpus == ((0,), (1,), (0,))


def test_bad_threads():
    with pytest.raises(ConfigError):
        plan_layout(cpus=(0,), threads="many")


def test_sequential_threads():
    assert sequential_threads("auto", (0, 1, 2)) == 3
    assert sequential_threads("default") is None
    assert sequential_threads(2) == 2


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_budget_reserve_and_stop():
    clock = FakeClock()
    b = Budget(budget_s=600.0, start=clock.now, clock=clock)
    assert b.reserve_s == pytest.approx(18.0)  # 3 % of 10 min
    assert b.stop_at == pytest.approx(clock.now + 582.0)
    clock.now += 581.9
    assert not b.must_stop()
    clock.now += 0.2
    assert b.must_stop()
    assert Budget(budget_s=10.0, start=0.0, clock=clock).reserve_s == 2.0
    assert Budget(budget_s=85 * 60.0, start=0.0, clock=clock).reserve_s == 90.0


def test_budget_keeps_full_tier_while_it_fits():
    clock = FakeClock()
    b = Budget(budget_s=600.0, start=clock.now, clock=clock, drop_order=("crnn", "cnn"))
    for _ in range(3):
        b.costs.observe_model(perch_s=1.0, member_s={"cnn": 0.5, "crnn": 0.5})
    # 100 files x 2 s / 2 consumers = 100 s; 582 s left
    assert b.choose_tier(100, 2) == TIER_FULL and not b.decisions


def test_budget_needs_measurements_before_deciding():
    clock = FakeClock()
    b = Budget(budget_s=60.0, start=clock.now, clock=clock, drop_order=("crnn", "cnn"))
    b.costs.observe_model(perch_s=10.0, member_s={"cnn": 5.0, "crnn": 5.0})
    assert b.choose_tier(1000, 1) == TIER_FULL  # one observation only


def test_budget_steps_down_and_never_back_up():
    clock = FakeClock()
    b = Budget(budget_s=600.0, start=clock.now, clock=clock, drop_order=("crnn", "cnn"))
    for _ in range(2):
        b.costs.observe_model(perch_s=1.0, member_s={"cnn": 1.0, "crnn": 2.0})
    clock.now += 300.0  # 282 s left to the stop
    # 100 files: 400 s with both members (over), 200 s without crnn (fits)
    assert b.choose_tier(100, 1) == "without crnn" and b.dropped() == {"crnn"}
    assert "dropping crnn" in b.decisions[0] and "prior-only" not in b.decisions[0]
    assert b.choose_tier(1, 8) == "without crnn"  # plenty of time now, but no step back up
    # later, less time: the next member of the order goes too (100 files: 200 s > 0.85 x 182 s)
    clock.now += 100.0
    assert b.choose_tier(100, 1) == "without crnn+cnn" and b.dropped() == {"crnn", "cnn"}
    assert "dropping cnn" in b.decisions[1]


def test_budget_says_when_even_the_cheap_tier_will_not_fit():
    clock = FakeClock()
    b = Budget(budget_s=100.0, start=clock.now, clock=clock, drop_order=("crnn", "cnn"))
    for _ in range(2):
        b.costs.observe_model(perch_s=5.0, member_s={"cnn": 2.5, "crnn": 2.5})
    assert b.choose_tier(100, 1) == "without crnn+cnn"  # the cheapest tier
    assert "prior-only" in b.decisions[0]


def test_no_step_down_when_the_droppable_members_cost_nothing():
    clock = FakeClock()
    b = Budget(budget_s=60.0, start=clock.now, clock=clock, drop_order=("crnn", "cnn"))
    for _ in range(3):
        b.costs.observe_model(perch_s=5.0, member_s={})
    assert b.choose_tier(100, 1) == TIER_FULL and not b.decisions  # the stop time handles it
    b = Budget(budget_s=60.0, start=clock.now, clock=clock)  # a recipe with no drop order
    for _ in range(3):
        b.costs.observe_model(perch_s=5.0, member_s={"cnn": 5.0})
    assert b.choose_tier(100, 1) == TIER_FULL and not b.decisions


def test_member_costs_are_means_over_the_files_each_ran_on():
    b = Budget(budget_s=600.0, start=0.0, clock=FakeClock(), drop_order=("crnn",))
    b.costs.observe_model(perch_s=1.0, member_s={"cnn": 2.0, "crnn": 4.0})
    b.costs.observe_model(perch_s=1.0, member_s={"cnn": 2.0})  # crnn dropped for this file
    assert b.costs.member_s == {"cnn": 2.0, "crnn": 4.0}
    assert b.costs.consumer_seconds() == pytest.approx(7.0)
    assert b.costs.consumer_seconds(b.dropped("without crnn")) == pytest.approx(3.0)


def test_slots_fall_back_when_dev_shm_is_small(monkeypatch):
    import tempfile

    from streamer.infer import runner

    class Small:
        f_bavail, f_frsize = 10, 4096

    monkeypatch.setattr(runner.os, "statvfs", lambda path: Small())
    assert runner._shm_dir(64 * 2**20) == tempfile.gettempdir()


def test_projection_counts_the_parents_reduction():
    b = Budget(budget_s=math.inf, start=0.0, clock=FakeClock())
    b.costs.observe_model(perch_s=1.0, member_s={})
    b.costs.observe_reduce(0.5)
    assert b.projected_seconds(TIER_FULL, 10, 4) == pytest.approx(5.0)  # reduce-bound: 10 x 0.5
    assert b.projected_seconds(TIER_FULL, 10, 1) == pytest.approx(10.0)


def _block(value, n_classes=3):
    return np.full((12, n_classes), value, np.float32)


def test_writer_out_of_order_rows_come_out_sorted(tmp_path):
    out = tmp_path / "sub.csv"
    w = SubmissionWriter(out, ["a", "b", "c"], ("x", "y", "z"))
    w.set_file(2, _block(0.3))
    w.set_file(0, _block(0.1))
    assert not out.exists()  # nothing under the final name before close
    w.set_file(1, _block(0.2))
    w.close()
    frame = pd.read_csv(out)
    assert list(frame.columns) == ["row_id", "x", "y", "z"]
    assert frame["row_id"].tolist() == [f"{s}_{5 * (i + 1)}" for s in "abc" for i in range(12)]
    np.testing.assert_array_equal(frame["y"].to_numpy(np.float32), np.repeat(np.float32([0.1, 0.2, 0.3]), 12))
    assert not list(tmp_path.glob(".*.tmp"))


def test_writer_float32_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    block = rng.random((12, 5), dtype=np.float32)
    w = SubmissionWriter(tmp_path / "s.csv", ["f"], tuple("abcde"))
    w.set_file(0, block)
    w.close()
    np.testing.assert_array_equal(pd.read_csv(tmp_path / "s.csv").iloc[:, 1:].to_numpy(np.float32), block)


def test_writer_refuses_bad_rows_and_missing_files(tmp_path):
    out = tmp_path / "sub.csv"
    out.write_text("old\n")
    w = SubmissionWriter(out, ["a", "b"], ("x",))
    with pytest.raises(ValueError, match="outside"):
        w.set_file(0, _block(1.5, 1))
    with pytest.raises(ValueError, match="non-finite"):
        w.set_file(0, _block(np.nan, 1))
    with pytest.raises(ValueError, match="expected"):
        w.set_file(0, np.zeros((11, 1)))
    w.set_file(0, _block(0.5, 1))
    with pytest.raises(ValueError, match="twice"):
        w.set_file(0, _block(0.5, 1))
    with pytest.raises(ValueError, match="1 files have no rows"):
        w.close()
    w.abort()
    assert out.read_text() == "old\n"  # the previous file is untouched
    assert not list(tmp_path.glob(".*.tmp"))
