"""The pipeline's scheduler without processes: dispatch, the end-of-run split, the death and
hang rules and the budget, driven by hand with a fake clock (milliseconds per test)."""

import numpy as np
import pytest

from streamer.infer.budget import TIER_FULL, Budget
from streamer.infer import scheduler as sch
from streamer.pipeline.children import MAX_DEATHS_WITHOUT_PROGRESS
from streamer.stages import ModelOutputs


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def outputs(n: int, start: int = 0) -> ModelOutputs:
    """Outputs whose rows say which window they are."""
    rows = np.arange(start, start + n, dtype=np.float32)[:, None]
    return ModelOutputs(np.repeat(rows, 3, axis=1), {"perch": np.repeat(rows, 2, axis=1)})


def make(n_files=4, n_consumers=1, n_decoders=1, budget_s=3600.0, **kw):
    clock = Clock()
    budget = Budget(budget_s=budget_s, start=0.0, clock=clock, drop_order=("crnn", "cnn"))
    s = sch.Scheduler([f"f{i}" for i in range(n_files)], n_consumers=n_consumers, n_decoders=n_decoders,
                      n_slots=(n_consumers + n_decoders) * sch.PREFETCH + 1, budget=budget, **kw)
    return s, clock


def of(actions, kind):
    return [a for a in actions if isinstance(a, kind)]


def ready_all(s):
    actions = s.start()
    for key in s.slots:
        actions += s.on_ready(*key)
    return actions


def decode_all(s, actions):
    """Answer every SendDecode in ``actions`` (and those they lead to); returns the actions."""
    out = list(actions)
    queue = of(actions, sch.SendDecode)
    while queue:
        send = queue.pop(0)
        more = s.on_decoded(send.wid, send.task_id)
        out += more
        queue += of(more, sch.SendDecode)
    return out


def test_start_decodes_while_consumers_load_and_prefetch_is_bounded():
    s, _ = make(n_files=5, n_consumers=2)
    actions = s.start()
    assert sorted((a.role, a.wid) for a in of(actions, sch.StartChild)) == [("consumer", 0), ("consumer", 1), ("decoder", 0)]
    actions = s.on_ready("decoder", 0)
    sends = of(actions, sch.SendDecode)
    assert [a.index for a in sends] == [0, 1]  # the decoder holds PREFETCH files, no more
    assert not of(actions, sch.SendModel)  # no consumer is ready yet
    actions = s.on_decoded(0, sends[0].task_id)
    assert [a.index for a in of(actions, sch.SendDecode)] == [2]
    actions = s.on_ready("consumer", 0)
    models = of(actions, sch.SendModel)
    assert [(m.unit.index, m.unit.start, m.unit.n, m.dropped) for m in models] == [(0, 0, 12, frozenset())]


def test_a_file_is_modelled_once_its_windows_are_all_in():
    s, _ = make(n_files=1)
    actions = decode_all(s, ready_all(s))
    (send,) = of(actions, sch.SendModel)
    done = s.on_model_done(send.wid, send.task_id, outputs=outputs(12))
    (modelled,) = of(done, sch.Modelled)
    assert modelled.index == 0 and modelled.tier == TIER_FULL
    assert s.all_resolved and len(s.free_slots) == (1 + 1) * sch.PREFETCH + 1  # the slot went back


def test_end_of_run_split_into_parts_and_joined_in_order():
    s, _ = make(n_files=2, n_consumers=2)
    actions = decode_all(s, ready_all(s))
    models = of(actions, sch.SendModel)
    # Every file has gone to the decoder: the waiting files are cut into one part per consumer,
    # and each consumer holds one task at a time.
    assert [(m.unit.index, m.unit.start, m.unit.n) for m in models] == [(0, 0, 6), (0, 6, 6)]
    assert s.n_files_in_parts == 1
    second = s.on_model_done(models[1].wid, models[1].task_id, outputs=outputs(6, start=6))
    assert not of(second, sch.Modelled)
    assert [(m.unit.index, m.unit.start) for m in of(second, sch.SendModel)] == [(1, 0)]
    first = s.on_model_done(models[0].wid, models[0].task_id, outputs=outputs(6, start=0))
    (modelled,) = of(first, sch.Modelled)
    np.testing.assert_array_equal(modelled.outputs.embedding[:, 0], np.arange(12))  # parts in window order


def test_parts_are_at_least_min_part_windows():
    s, _ = make(n_files=1, n_consumers=8)
    models = of(decode_all(s, ready_all(s)), sch.SendModel)
    assert [m.unit.n for m in models] == [3, 3, 3, 3]


def test_no_parts_when_consumers_reduce():
    s, _ = make(n_files=2, n_consumers=2, split_end=False)
    models = of(decode_all(s, ready_all(s)), sch.SendModel)
    assert {m.unit.n for m in models} == {12}


def test_decode_failure_gives_the_file_prior_only_rows_and_frees_its_slot():
    s, _ = make(n_files=2)
    actions = ready_all(s)
    first = of(actions, sch.SendDecode)[0]
    actions = s.on_decode_failed(first.wid, first.task_id, "not audio")
    (fallback,) = of(actions, sch.Fallback)
    assert fallback.index == 0 and fallback.reason == "unreadable: not audio"
    assert first.slot in s.free_slots and 0 in s.resolved


def test_a_dead_consumer_s_tasks_go_back_in_order_and_only_the_running_one_counts():
    s, _ = make(n_files=4)
    actions = decode_all(s, ready_all(s))
    sent = of(actions, sch.SendModel)
    assert [m.unit.index for m in sent] == [0, 1]
    actions = s.on_death("consumer", 0, "killed by SIGKILL")
    assert of(actions, sch.StartChild) == [sch.StartChild("consumer", 0)]
    assert s.attempts == {0: 1}  # file 1 was only waiting: not its fault
    assert [u.index for u in list(s.decoded)[:2]] == [0, 1]
    actions = s.on_ready("consumer", 0)
    assert [m.unit.index for m in of(actions, sch.SendModel)] == [0, 1]
    assert {m.slot for m in of(actions, sch.SendModel)} == {m.slot for m in sent}  # not decoded again


def test_a_dead_decoder_s_files_are_decoded_again():
    s, _ = make(n_files=3)
    sends = of(ready_all(s), sch.SendDecode)
    n_free = len(s.free_slots)
    s.on_death("decoder", 0, "killed by SIGKILL")
    assert list(s.pending)[:2] == [0, 1] and len(s.free_slots) == n_free + 2
    again = of(s.on_ready("decoder", 0), sch.SendDecode)
    assert [a.index for a in again] == [a.index for a in sends]


def test_a_file_that_kills_its_child_three_times_gets_fallback_rows():
    s, _ = make(n_files=2)
    ready_all(s)
    reasons = []
    for death in range(sch.MAX_FILE_ATTEMPTS):
        actions = s.on_death("decoder", 0, "killed by SIGKILL")
        reasons += [a.reason for a in of(actions, sch.Fallback)]
        if death < sch.MAX_FILE_ATTEMPTS - 1:
            assert of(actions, sch.StartChild) and not reasons
            s.on_ready("decoder", 0)
    assert s.resolved == {0} and s.attempts == {0: 3}
    assert reasons == ["the decoder died 3 times on this file (last: killed by SIGKILL)"]
    assert not s.slots[("decoder", 0)].health.given_up  # the death was explained: the file is settled
    assert of(actions, sch.StartChild) and s.finish is None


def test_two_poison_files_with_one_decoder_do_not_end_the_run():
    """Restart counters must not last the whole run: each poison file costs its own deaths,
    then gets fallback rows; the decoder slot lives on and the other files are scored."""
    s, _ = make(n_files=4)
    ready_all(s)
    fallbacks = []
    for _ in range(2 * sch.MAX_FILE_ATTEMPTS):
        actions = s.on_death("decoder", 0, "killed by SIGKILL")
        fallbacks += [a.index for a in of(actions, sch.Fallback)]
        assert s.finish is None and of(actions, sch.StartChild)
        sends = of(s.on_ready("decoder", 0), sch.SendDecode)
    assert fallbacks == [0, 1]
    assert [a.index for a in sends] == [2, 3]


@pytest.mark.parametrize("n_consumers", [1, 2])
def test_deaths_without_progress_give_a_slot_up(n_consumers):
    s, _ = make(n_files=3, n_consumers=n_consumers)
    s.start()
    for death in range(MAX_DEATHS_WITHOUT_PROGRESS):
        actions = s.on_death("consumer", 0, "killed by SIGKILL")  # dies while loading its models
    assert s.slots[("consumer", 0)].health.given_up and not of(actions, sch.StartChild)
    if n_consumers == 1:
        (finish,) = of(actions, sch.Finish)
        assert finish.error.startswith("every consumer keeps dying")
    else:
        assert s.finish is None  # the other consumer carries on


def test_progress_resets_the_death_count():
    s, _ = make(n_files=6)
    actions = decode_all(s, ready_all(s))
    for _ in range(MAX_DEATHS_WITHOUT_PROGRESS + 2):
        sent = of(actions, sch.SendModel)
        s.on_model_done(0, sent[0].task_id, outputs=outputs(12))  # progress
        actions = s.on_death("consumer", 0, "killed by SIGKILL")
        assert of(actions, sch.StartChild)
        actions = decode_all(s, s.on_ready("consumer", 0))
    assert not s.slots[("consumer", 0)].health.given_up


def test_a_set_up_error_is_not_retried():
    s, _ = make(n_files=2)
    s.start()
    actions = s.on_death("consumer", 0, "failed during setup: ArtifactError: bad", setup_error=True)
    assert not of(actions, sch.StartChild)
    assert of(actions, sch.Finish)[0].error == "every consumer keeps dying (last: consumer 0: failed during setup: ArtifactError: bad)"


def test_budget_stop_finishes_the_run():
    s, clock = make(n_files=3, budget_s=100.0)
    ready_all(s)
    assert s.on_tick() == []
    clock.now = s.budget.stop_at
    (finish,) = s.on_tick()
    assert finish == sch.Finish("not scored before the budget's stop") and finish.error is None
    assert s.on_tick() == [] and s._dispatch() == []


def test_budget_drops_members_in_the_recipes_order_for_later_files_only():
    """Measured costs that do not fit the time left: the files not yet sent lose the first
    member of the drop order whose saving is enough (crnn, then cnn); files already sent keep
    their tier."""
    s, clock = make(n_files=8, budget_s=40.0)
    sent = of(decode_all(s, ready_all(s)), sch.SendModel)
    assert [m.dropped for m in sent] == [frozenset(), frozenset()]
    later = []
    for send in sent:  # 5 s per file (cnn 2.5, crnn 1.5): 6 more files need 30 s, 28 s are left; 21 s without crnn
        clock.now += 5.0
        later += of(s.on_model_done(0, send.task_id, outputs=outputs(12), perch_s=1.0, member_s={"cnn": 2.5, "crnn": 1.5},
                                    busy_s=5.0), sch.SendModel)
    assert [m.dropped for m in later] == [frozenset(), frozenset({"crnn"})]  # decided after the 2nd measurement
    assert s.tier_of[later[0].unit.index] == TIER_FULL and s.tier_of[later[1].unit.index] == "without crnn"
    assert s.budget.decisions and "dropping crnn" in s.budget.decisions[0]


def test_budget_drops_several_members_when_one_is_not_enough():
    s, clock = make(n_files=8, budget_s=30.0)
    sent = of(decode_all(s, ready_all(s)), sch.SendModel)
    later = []
    for send in sent:  # 20 s left for 6 files: 30 s full, 21 s without crnn, 6 s without both
        clock.now += 5.0
        later += of(s.on_model_done(0, send.task_id, outputs=outputs(12), perch_s=1.0, member_s={"cnn": 2.5, "crnn": 1.5},
                                    busy_s=5.0), sch.SendModel)
    assert later[1].dropped == frozenset({"crnn", "cnn"}) and s.tier_of[later[1].unit.index] == "without crnn+cnn"
    assert "dropping crnn, cnn" in s.budget.decisions[0]


def test_a_hung_task_is_killed_then_retried():
    s, clock = make(n_files=2, task_timeout_s=30.0)
    sent = of(decode_all(s, ready_all(s)), sch.SendModel)
    clock.now = 29.0
    assert not of(s.on_tick(), sch.KillChild)
    clock.now = 31.0
    (kill,) = of(s.on_tick(), sch.KillChild)
    assert (kill.role, kill.wid) == ("consumer", 0) and kill.reason == "no answer for 30 s on f0 (hung)"
    assert not of(s.on_tick(), sch.KillChild)  # asked once
    actions = s.on_death("consumer", 0, "killed by SIGKILL")
    assert s.attempts == {sent[0].unit.index: 1} and of(actions, sch.StartChild)


def test_the_hang_limit_grows_with_the_measured_cost():
    s, clock = make(n_files=4, task_timeout_s=10.0)
    sent = of(decode_all(s, ready_all(s)), sch.SendModel)
    s.on_model_done(0, sent[0].task_id, outputs=outputs(12), perch_s=2.0, member_s={}, busy_s=2.0)
    clock.now = 39.0  # 20 x 2 s = 40 s > 10 s
    assert not of(s.on_tick(), sch.KillChild)
    clock.now = 41.0
    assert of(s.on_tick(), sch.KillChild)


def test_a_child_that_never_starts_is_killed():
    s, clock = make(n_files=1, startup_timeout_s=50.0)
    s.start()
    s.on_ready("decoder", 0)
    clock.now = 51.0
    (kill,) = of(s.on_tick(), sch.KillChild)
    assert kill.role == "consumer" and "did not start within 50 s" in kill.reason
    actions = s.on_death("consumer", 0, "killed by SIGKILL")
    assert of(actions, sch.StartChild)  # a hang is retried (it is not a set-up error)
