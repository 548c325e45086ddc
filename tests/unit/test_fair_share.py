"""The pure parts of fair share: each team's slots (workers/share.py), the steps that move the
consumers' limits without ever exceeding the cap, the local start order, the subjects."""

from __future__ import annotations

import random

from panelboard.schemas import wire
from panelboard.transport.fair_consumer import FairOrder
from panelboard.workers.fair import demand
from panelboard.workers.share import Seen, lowers, raises, targets


def test_a_lone_team_gets_the_whole_cap():
    assert targets(4, {"a": 5000}, {}) == {"a": 4}


def test_equal_weights_split_a_saturated_pool_evenly():
    assert targets(4, {"a": 5000, "b": 300}, {}) == {"a": 2, "b": 2}


def test_a_team_that_needs_less_leaves_the_rest_to_the_others():
    assert targets(4, {"a": 5000, "b": 1}, {}) == {"a": 3, "b": 1}
    assert targets(8, {"a": 5000, "b": 1, "c": 2}, {"c": 5}) == {"a": 5, "b": 1, "c": 2}


def test_weights_split_by_ratio():
    assert targets(4, {"a": 100, "b": 100}, {"a": 3, "b": 1}) == {"a": 3, "b": 1}
    assert targets(32, {"a": 100, "b": 100}, {"a": 3}) == {"a": 24, "b": 8}


def test_odd_slots_go_to_the_largest_remainders_and_nobody_gets_more_than_it_wants():
    got = targets(5, {"a": 10, "b": 10}, {})
    assert sorted(got.values()) == [2, 3] and sum(got.values()) == 5
    for _ in range(500):
        rng = random.Random(_)
        cap = rng.randint(1, 40)
        want = {f"t{i}": rng.choice([0, 1, 2, 5, 1000]) for i in range(rng.randint(1, 8))}
        w = {t: rng.choice([0.5, 1.0, 3.0]) for t in want}
        got = targets(cap, want, w)
        assert sum(got.values()) == min(cap, sum(want.values()))
        assert all(0 <= got[t] <= want[t] for t in want)


def test_more_teams_than_slots_the_heaviest_get_them_for_now():
    assert targets(2, {"a": 9, "b": 9, "c": 9}, {"c": 2}) == {"a": 1, "b": 0, "c": 1}


def test_a_new_team_gets_slots_only_as_the_old_ones_give_them_back():
    # Team a holds all 4 slots; b arrives: a is lowered to 2 at once...
    goal = targets(4, {"a": 5000, "b": 1000}, {})
    lower, delete = lowers(goal, {"a": Seen(limit=4, ack_pending=4, pending=900)})
    assert lower == {"a": 2} and delete == []
    # ...but still holds 4 deliveries: nothing is free for b yet
    assert raises(4, goal, {"a": Seen(limit=2, ack_pending=4, pending=900)}) == {}
    # One of a's calls finishes: b gets that slot, and the second once a is down to its share
    assert raises(4, goal, {"a": Seen(limit=2, ack_pending=3, pending=900)}) == {"b": 1}
    assert raises(4, goal, {"a": Seen(limit=2, ack_pending=2, pending=900), "b": Seen(limit=1, ack_pending=1, pending=0)}) == {"b": 2}


def test_an_idle_consumer_without_a_goal_is_deleted_a_busy_one_keeps_one_slot():
    seen = {"idle": Seen(limit=1, ack_pending=0, pending=0), "busy": Seen(limit=3, ack_pending=2, pending=5)}
    assert lowers({}, seen) == ({"busy": 1}, ["idle"])


def test_what_the_server_may_hand_out_never_exceeds_the_cap():
    # Random arrivals, completions and steps: after every step, the sum over consumers of the
    # most each may hold (its limit, or what it already holds if more) stays within the cap.
    for run in range(200):
        rng = random.Random(run)
        cap = rng.randint(1, 12)
        queued = {t: 0 for t in "abcd"}
        held = {t: 0 for t in "abcd"}
        limit: dict[str, int] = {}
        for _ in range(60):
            for t in queued:
                queued[t] += rng.choice([0, 0, 1, 5])
            for t in limit:  # the server delivers up to each limit; some calls finish
                take = max(0, min(queued[t], limit[t] - held[t]))
                queued[t] -= take
                held[t] += take
                held[t] -= rng.randint(0, held[t])
            want = {t: queued[t] + held[t] for t in queued if queued[t] + held[t]}
            goal = targets(cap, want, {"a": 3})
            seen = {t: Seen(limit=limit[t], ack_pending=held[t], pending=queued[t]) for t in limit}
            low, delete = lowers(goal, seen)
            for t, n in low.items():
                limit[t] = n
            seen = {t: Seen(limit=limit[t], ack_pending=held[t], pending=queued[t]) for t in limit}
            for t, n in raises(cap, goal, seen).items():
                limit[t] = n
            for t in delete:
                del limit[t]
            assert sum(max(limit[t], held[t]) for t in limit) <= cap, (run, limit, held)


def test_fair_order_starts_by_weight_and_idling_earns_no_burst():
    order = FairOrder({"a": 3.0, "b": 1.0}.__getitem__)
    picks = []
    for _ in range(400):
        t = order.pick(["a", "b"])
        order.started(t)
        picks.append(t)
    assert picks.count("a") == 300
    # b idles while a runs alone, then comes back: it alternates by weight, no catching up
    for _ in range(100):
        order.started("a")
    picks = []
    for _ in range(8):
        t = order.pick(["a", "b"])
        order.started(t)
        picks.append(t)
    assert picks.count("b") in (2, 3) and picks[:2] != ["b", "b"], picks  # 1 in 4, within one start


def test_dispatch_subjects_carry_the_team_and_old_ones_still_parse():
    assert wire.dispatch("mock", "batch", "team-a") == "pb.dispatch.mock.batch.team-a"
    assert wire.dispatch_parts("pb.dispatch.mock.batch.team-a") == ("mock", "batch", "team-a")
    assert wire.dispatch_parts("pb.dispatch.mock.interactive") == ("mock", "interactive", None)
    assert wire.dispatch_parts("pb.results.a.b") is None


def test_demand_counts_a_lane_per_team_and_a_one_lane_pool_takes_both_subjects():
    subjects = {"pb.dispatch.p.interactive.a": 3, "pb.dispatch.p.batch.a": 2, "pb.dispatch.p.interactive": 1, "pb.dispatch.q.interactive.b": 9}
    assert demand(subjects, "p", {"interactive": 4}) == {"interactive": {"a": 5, "": 1}}
    assert demand(subjects, "p", {"interactive": 2, "batch": 2}) == {"interactive": {"a": 3, "": 1}, "batch": {"a": 2}}
