"""Pure decisions of fair share (see workers/fair.py for the loop that applies them).

`targets` says how many of a lane's slots each team should hold: weighted max-min fairness over
the jobs each team has queued or running, so a team that needs less than its share gets what it
needs and the rest is split by weight; a lone team gets the whole cap. `lowers` and `raises`
move the consumers' max_ack_pending towards the targets without ever letting what the server
may hand out exceed the cap: a lowered limit stops new deliveries but does not take back the
ones already out, so a raise only spends what every other consumer provably cannot use.
"""

from __future__ import annotations

from collections.abc import Mapping

import msgspec


class Seen(msgspec.Struct, frozen=True):
    """A team consumer as the server reported it."""

    limit: int  # max_ack_pending
    ack_pending: int  # delivered, not yet acked
    pending: int  # not yet delivered


def targets(cap: int, want: Mapping[str, int], weights: Mapping[str, float]) -> dict[str, int]:
    """Slots per team, summing to at most `cap`: water-filling by weight, each team capped at
    what it wants. Integer slots; when the shares are fractions the largest remainders (then
    the heavier weight, then the name) get the odd slots, so with more teams than slots the
    lightest get none for now."""
    out = {t: 0 for t in want}
    left = cap
    open_ = {t for t, n in want.items() if n > 0}
    while left > 0 and open_:
        total = sum(weights.get(t, 1.0) for t in open_)
        share = {t: left * weights.get(t, 1.0) / total for t in open_}
        met = [t for t in open_ if want[t] - out[t] <= share[t]]
        if met:  # they need no more than their share: give it, split the rest again
            for t in met:
                left -= want[t] - out[t]
                out[t] = want[t]
                open_.discard(t)
            continue
        for t in open_:
            n = int(share[t])
            out[t] += n
            left -= n
        for t in sorted(open_, key=lambda t: (int(share[t]) - share[t], -weights.get(t, 1.0), t))[:left]:
            out[t] += 1
        break
    return out


def lowers(goal: Mapping[str, int], seen: Mapping[str, Seen]) -> tuple[dict[str, int], list[str]]:
    """The first half of a step: limits to lower now, and consumers to delete (no goal, and
    nothing queued or out). A consumer cannot go below 1, so a busy one without a goal keeps 1."""
    lower: dict[str, int] = {}
    delete: list[str] = []
    for t, s in seen.items():
        g = goal.get(t, 0)
        if g == 0 and s.ack_pending == 0 and s.pending == 0:
            delete.append(t)
        elif max(g, 1) < s.limit:
            lower[t] = max(g, 1)
    return lower, delete


def raises(cap: int, goal: Mapping[str, int], seen: Mapping[str, Seen]) -> dict[str, int]:
    """The second half, with `seen` read after the lowering: limits to raise (or consumers to
    create, those not in `seen`), spending only what is free for certain. A consumer may still
    hold more than its new limit, so each counts for the larger of the two. Teams without a
    consumer go first (a trickle gets its first slot), then the largest shortfall."""
    free = cap - sum(max(s.limit, s.ack_pending) for s in seen.values())
    out: dict[str, int] = {}
    have = {t: seen[t].limit if t in seen else 0 for t in goal}
    for t in sorted(goal, key=lambda t: (have[t] > 0, have[t] - goal[t], t)):
        n = min(goal[t] - have[t], free)
        if n > 0:
            out[t] = have[t] + n
            free -= n
    return out
