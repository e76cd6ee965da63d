"""The online loop's update calls in flight (Components.update_calls_in_flight): a Ray learner
gets the next call queued behind the one it runs, and the learner counts as idle
(`update_gaps`) only while none is in flight; publishing beside queued updates."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from rich.console import Console

from distributed_o2o.runtime.broadcast import Broadcast
from distributed_o2o.runtime.online import OnlineLoop
from distributed_o2o.runtime.replay import RateLimiter
from distributed_o2o.runtime.timings import UPDATE_GAPS, Timings
from distributed_o2o.runtime.transport import LocalTransport


class HeldTransport:
    """Submitted calls stay in flight until the test hands their result back."""

    def __init__(self):
        self.submitted: list[tuple[str, tuple]] = []

    def submit(self, component, method, *args):
        self.submitted.append((method, args))
        return len(self.submitted) - 1  # the future: the call's index

    def get(self, future):
        return future, {"critic_loss": 1.0}  # (the learner's version, its metrics)


def make_loop(in_flight: int) -> tuple[OnlineLoop, HeldTransport, Timings]:
    transport, timings = HeldTransport(), Timings()
    components = SimpleNamespace(transport=transport, learner=object(), workers=[], replays=[], seeds=None,
                                 update_calls_in_flight=in_flight, max_updates_per_call=64)
    counters = SimpleNamespace(env_steps=1_000, updates=0)
    broadcast = SimpleNamespace(learner_version=0)
    loop = OnlineLoop(None, components, counters, broadcast, [object()], Console(quiet=True), False, timings)
    loop.limiter = RateLimiter(max_lag=10_000, owed=1_000)
    return loop, transport, timings


@pytest.mark.parametrize("in_flight", [1, 2])
def test_the_loop_keeps_at_most_the_set_number_of_update_calls_in_flight(in_flight):
    loop, transport, _ = make_loop(in_flight)
    started = [loop._start_update() for _ in range(3)]
    assert started == [True] * in_flight + [False] * (3 - in_flight)
    assert [method for method, _ in transport.submitted] == ["update_from_replay"] * in_flight
    assert loop.limiter.running == 64 * in_flight

    loop._handle([0], bar=None, task=None)  # the first call's result arrives: room for one more
    assert loop._start_update()
    assert loop.counters.updates == 64


def test_the_learner_counts_as_idle_only_once_no_update_call_is_in_flight():
    loop, _, timings = make_loop(2)
    assert loop._start_update() and loop._start_update()
    loop._handle([0], bar=None, task=None)
    assert loop.idle_since is None  # the second call still runs: no gap opens
    loop._learner_busy()
    assert UPDATE_GAPS not in timings.seconds

    loop._handle([1], bar=None, task=None)
    assert loop.idle_since is not None  # nothing in flight: the learner waits for the driver
    loop._learner_busy()
    assert timings.seconds[UPDATE_GAPS] > 0


class LaggingLearner:
    """Answers `weights` as a graphed learner does while an update call of 64 is queued: with
    the version (and weights) from before it."""

    def __init__(self):
        self.version, self.queued = 0, 0

    def weights(self):
        return self.version - self.queued, {}


def test_a_publish_answered_with_older_weights_is_not_asked_for_again_until_the_learner_moves_on():
    learner = LaggingLearner()
    broadcast = Broadcast(LocalTransport(), learner, workers=[], every=1)
    broadcast.publish_now()
    learner.version = learner.queued = 64
    broadcast.learner_version = 64  # an update call's reply

    broadcast.published_arrived(broadcast.start_publish().value)
    assert broadcast.published[0] == 0  # the weights from before the queued updates
    assert broadcast.start_publish() is None  # the same answer would come back

    learner.version += 64
    broadcast.learner_version = learner.version
    broadcast.published_arrived(broadcast.start_publish().value)
    assert broadcast.published[0] == 64
