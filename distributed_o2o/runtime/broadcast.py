"""Broadcast: the acting policy's weights, from the learner to the rollout workers.

    learner side  `policy_weights`: a CPU copy of a policy's weights, published with the
                  learner's version (`Learner.weights`; the Ray learner puts it into the object
                  store once and every worker gets the reference)
    driver side   `Broadcast`: the version published, when the next publish starts (the learner
                  `broadcast_every` versions past the last one asked for), what each worker was
                  sent, and the staleness of what the workers collected
    worker side   `WeightsInbox`: the weights a worker acts with. A new acting spec (or a
                  restarted worker) goes through `set_weights`, which runs before the worker's
                  next collect; newer weights alone are offered (`offer_weights`) and taken up
                  at its next vector step, even inside a chunk already running

Versions count the learner's gradient steps (`Learner.version`), so staleness (the learner's
version less the version a transition was acted with) reads in gradient steps.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def policy_weights(policy: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of `policy`'s weights (never a view of the learner's tensors)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in policy.state_dict().items()}


class Broadcast:
    """The driver's side. Calls go through the transport; the futures it returns are the
    online loop's to keep in flight."""

    def __init__(self, transport: Any, learner: Any, workers: list[Any], every: int):
        self.t, self.learner, self.workers, self.every = transport, learner, workers, every
        self.published: tuple[int, Any] | None = None  # (version, weights) the workers should act with
        self.publishing = False
        # The learner's version when weights were last asked for: a graphed learner answers with
        # those from before the updates it has queued (`Learner.weights`), which can be older.
        self.requested = 0
        self.learner_version = 0
        self.spec = None  # the acting spec the workers should act with
        self.sent: list[tuple[int, Any] | None] = [None] * len(workers)  # (version, spec) each was sent
        self.staleness: list[tuple[float, int]] = []  # (learner version - mean acting version, transitions)

    def publish_now(self) -> Any:
        """Publish the learner's current weights (at a point where it is not updating); returns them."""
        self.published = self.t.call(self.learner, "weights")
        self.learner_version = self.requested = self.published[0]
        return self.published[1]

    def start_publish(self) -> Any | None:
        """Start fetching the learner's weights once it is `every` versions past those last asked
        for; the call's future, or None."""
        if self.publishing or self.learner_version - self.requested < self.every:
            return None
        self.publishing = True
        self.requested = self.learner_version
        return self.t.submit(self.learner, "weights")

    def published_arrived(self, published: tuple[int, Any]) -> None:
        self.published = published
        self.publishing = False

    def sync(self, i: int, ordered: bool = False) -> Any | None:
        """Give worker i the published weights and the current spec if it lacks them; the
        call's future, or None. `ordered`: through `set_weights`, before its next collect."""
        version, weights = self.published
        sent = self.sent[i]
        if sent == (version, self.spec):
            return None
        if sent is None or sent[1] != self.spec or ordered:
            payload = weights if sent is None or sent[0] != version else None
            future = self.t.submit(self.workers[i], "set_weights", version, payload, self.spec)
        else:
            future = self.t.submit(self.workers[i], "offer_weights", version, weights)
        self.sent[i] = (version, self.spec)
        return future

    def forget(self, i: int) -> None:
        """Worker i restarted: it gets the weights and the spec anew."""
        self.sent[i] = None

    def collected(self, acted_version: float, transitions: int) -> None:
        self.staleness.append((self.learner_version - acted_version, transitions))

    def take_staleness(self) -> float | None:
        """Gradient steps the collected transitions were behind the learner, weighted by their
        count, since the last call (None: none collected)."""
        if not self.staleness:
            return None
        lags, weights = zip(*self.staleness)
        self.staleness.clear()
        return float(np.average(lags, weights=weights))


class WeightsInbox:
    """The worker's side: the policy it acts with, its version and the newest weights offered."""

    def __init__(self, policy: torch.nn.Module):
        self.policy = policy
        self.version = -1
        self.offered: tuple[int, dict] | None = None  # newer weights, taken up between vector steps

    def set(self, version: int, state_dict: dict | None) -> None:
        """Act with these weights from now on (None: keep them)."""
        if state_dict is not None:
            self.policy.load_state_dict(state_dict)
            self.version = version

    def offer(self, version: int, state_dict: dict) -> None:
        self.offered = (version, state_dict)

    def take_offered(self) -> None:
        offered = self.offered  # one read: the slot may be replaced meanwhile
        if offered is not None and offered[0] > self.version:
            self.policy.load_state_dict(offered[1])
            self.version = offered[0]
