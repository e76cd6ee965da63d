"""TD3's delayed policy updates (TD3, O2TD3's stage C, TD3+BC) as a cycle of update phases.

The actor step (and the Polyak step of the targets) comes after every `delay`-th critic step:
the update at the cycle's last position is CRITIC_ACTOR, the others CRITIC. The graphed learner
captures the phases as they fall (a graph of whole cycles, or of one update), so a graph holds
exactly the work of its updates.
"""

from __future__ import annotations

from distributed_o2o.algorithms.capturable import PhaseCycle

CRITIC, CRITIC_ACTOR = "critic", "critic+actor"


def policy_delay(delay: int) -> PhaseCycle:
    """`delay - 1` critic steps, then a critic step and the actor step; the count is the critic steps taken."""
    return PhaseCycle((CRITIC,) * (delay - 1) + (CRITIC_ACTOR,))
