"""Pacing from the provider's headers and the adaptive concurrency limit, from tables."""

from __future__ import annotations

from datetime import datetime, timezone

import httpx
import pytest

from panelboard.schemas.chat import ChatResponse
from panelboard.schemas.pacing import RateSignal, duration_s, rate_signal
from panelboard.workers.outcome import ClientError, Ok, RateLimited, ServerError, Timeout
from panelboard.workers.pacing import RESET_MARGIN_S, Limit, adapt, congestion, lane_caps, merge, plan

NOW = 1_800_000_000.0
OK = ChatResponse(id="x", model="m", choices=[])


@pytest.mark.parametrize("text, seconds", [("1s", 1.0), ("6m0s", 360.0), ("20ms", 0.02), ("1h2m3.5s", 3723.5), ("0.5", 0.5),
                                           ("250us", 0.00025), ("soon", None), ("1s later", None)])
def test_go_durations_read_as_seconds(text, seconds):
    assert duration_s(text) == (pytest.approx(seconds) if seconds is not None else None)


def test_openai_headers_give_both_windows():
    h = httpx.Headers({"x-ratelimit-limit-requests": "60", "x-ratelimit-remaining-requests": "59", "x-ratelimit-reset-requests": "1s",
                       "x-ratelimit-limit-tokens": "150000", "x-ratelimit-remaining-tokens": "149984", "x-ratelimit-reset-tokens": "6m0s"})
    assert rate_signal(h, NOW) == RateSignal(at=NOW, requests_limit=60, requests_remaining=59, requests_reset_at=NOW + 1,
                                             tokens_limit=150000, tokens_remaining=149984, tokens_reset_at=NOW + 360)


def test_anthropic_headers_give_both_windows_with_their_rfc3339_resets():
    reset = datetime.fromtimestamp(NOW + 2.5, timezone.utc).isoformat().replace("+00:00", "Z")
    h = httpx.Headers({"anthropic-ratelimit-requests-limit": "50", "anthropic-ratelimit-requests-remaining": "0",
                       "anthropic-ratelimit-requests-reset": reset, "anthropic-ratelimit-input-tokens-limit": "40000",
                       "anthropic-ratelimit-input-tokens-remaining": "39000", "anthropic-ratelimit-input-tokens-reset": reset})
    sig = rate_signal(h, NOW)
    assert sig is not None and (sig.requests_limit, sig.requests_remaining, sig.tokens_limit, sig.tokens_remaining) == (50, 0, 40000, 39000)
    assert sig.requests_reset_at == pytest.approx(NOW + 2.5) and sig.tokens_reset_at == pytest.approx(NOW + 2.5)


def test_no_rate_headers_no_signal():
    assert rate_signal(httpx.Headers({"content-type": "application/json", "x-request-id": "r"}), NOW) is None


def test_the_remaining_budget_is_spread_evenly_until_the_reset():
    sig = RateSignal(at=NOW, requests_remaining=4, requests_reset_at=NOW + 2)
    starts, free, owed = [], 0.0, 0
    for _ in range(4):  # four calls taken up at once: they get slots 0.5 s apart, none past the reset
        slot = plan(sig, NOW, free, owed, 0, 0)
        starts.append(slot.start - NOW)
        free, owed = slot.start + slot.spacing, owed + 1
    assert starts == pytest.approx([0.0, 0.5, 1.0, 1.5])
    # The fifth would spend the window early: it waits for the reset
    assert plan(sig, NOW, free, owed, 0, 0).start == pytest.approx(NOW + 2 + RESET_MARGIN_S)


def test_a_spent_window_waits_for_its_reset_and_calls_in_flight_count_as_spent():
    spent = RateSignal(at=NOW, requests_remaining=0, requests_reset_at=NOW + 3)
    assert plan(spent, NOW, 0.0, 0, 0, 0).start == pytest.approx(NOW + 3 + RESET_MARGIN_S)
    two_left = RateSignal(at=NOW, requests_remaining=2, requests_reset_at=NOW + 3)
    assert plan(two_left, NOW, 0.0, owed=2, owed_tokens=0, tokens=0).start == pytest.approx(NOW + 3 + RESET_MARGIN_S)
    # After the reset the window is full again: no wait, without word of it yet
    assert plan(spent, NOW + 4, 0.0, 0, 0, 0).start == NOW + 4


def test_a_plentiful_window_barely_spaces_calls_and_tokens_pace_too():
    roomy = RateSignal(at=NOW, requests_limit=10_000, requests_remaining=9_999, requests_reset_at=NOW + 0.006)
    assert plan(roomy, NOW, 0.0, 0, 0, 0).spacing < 1e-5
    tokens = RateSignal(at=NOW, tokens_remaining=1_000, tokens_reset_at=NOW + 10)
    assert plan(tokens, NOW, 0.0, 0, 0, tokens=100).spacing == pytest.approx(1.0)  # a tenth of what is left, a tenth of the time
    assert plan(tokens, NOW, 0.0, 0, owed_tokens=950, tokens=100).start == pytest.approx(NOW + 10 + RESET_MARGIN_S)


def test_merge_keeps_the_freshest_and_the_lowest_count_of_one_window():
    a = RateSignal(at=NOW, requests_remaining=3, requests_reset_at=NOW + 2)
    late_answer = RateSignal(at=NOW + 0.01, requests_remaining=7, requests_reset_at=NOW + 2.01)  # sent earlier, answered later
    assert merge(a, late_answer).requests_remaining == 3 and merge(late_answer, a).requests_remaining == 3
    next_window = RateSignal(at=NOW + 2.1, requests_remaining=19, requests_reset_at=NOW + 4.1)
    assert merge(a, next_window) is next_window
    assert merge(None, a) is a


def test_congestion_of_each_outcome():
    assert congestion(Ok(OK, 1.0)) == "ok"
    assert [congestion(o) for o in (RateLimited(1, "slow"), ServerError(503, 1, "down"), Timeout(1))] == ["congested"] * 3
    assert [congestion(o) for o in (RateLimited(1, "quota", hard=True), RateLimited(1, "flex full", unavailable=True),
                                   ClientError(400, 1, "bad"))] == ["neutral"] * 3


def test_aimd_halves_once_per_burst_and_climbs_back_one_per_limit_successes():
    s = Limit(64)
    s = adapt(s, "congested", started=1.0, now=2.0, floor=8, cap=64)
    assert s.limit == 32
    # Calls launched before the cut fail too: already answered by it
    assert adapt(s, "congested", started=1.5, now=2.1, floor=8, cap=64).limit == 32
    for t in (3.0, 4.0, 5.0):  # new failures keep halving, never below the floor
        s = adapt(s, "congested", started=t, now=t, floor=8, cap=64)
    assert s.limit == 8
    for _ in range(8):
        s = adapt(s, "ok", started=6.0, now=6.0, floor=8, cap=64)
    assert s.limit == 9  # +1 after as many successes as the limit
    for _ in range(10_000):
        s = adapt(s, "ok", started=6.0, now=6.0, floor=8, cap=64)
    assert s.limit == 64  # the cap is the ceiling
    assert adapt(s, "neutral", started=7.0, now=7.0, floor=8, cap=64) == s


def test_lanes_share_the_limit_as_they_share_the_cap():
    assert lane_caps([6, 2], 8, 8) == [6, 2]
    assert lane_caps([6, 2], 4, 8) == [3, 1]
    assert lane_caps([6, 2], 1, 8) == [1, 1]


def test_worker_processes_of_a_pool_split_the_window():
    sig = RateSignal(at=NOW, requests_remaining=8, requests_reset_at=NOW + 2)
    assert plan(sig, NOW, 0.0, 0, 0, 0, share=2).spacing == pytest.approx(0.5)  # 4 each over 2 s, not 8
    assert plan(sig, NOW, 0.0, 4, 0, 0, share=2).start == pytest.approx(NOW + 2 + RESET_MARGIN_S)  # its half is owed already


def test_status_sums_the_processes_limits_under_the_cap_and_says_what_paces_the_pool():
    from panelboard.capacity import hint, pace_figures
    from panelboard.schemas.pacing import PoolPace

    sig = RateSignal(at=NOW, requests_limit=20, requests_remaining=2, requests_reset_at=NOW + 1.3)
    two = [PoolPace(provider="p", limit=8, floor=2, cap=16, at=NOW, paced_until=NOW + 0.4, signal=sig),
           PoolPace(provider="p", limit=12, floor=2, cap=16, at=NOW)]
    assert pace_figures(two, 16, NOW) == (16, "2/20 requests left, resets in 1.3s; next call in 0.4s")
    assert pace_figures(two[1:], 16, NOW) == (12, None)
    assert pace_figures([], 16, NOW) is None
    assert "held to 4 of 16 slots by the adaptive limit" in hint(queued=10, running=4, cap=16, limit=4)
    assert "add worker processes" in hint(queued=10, running=4, cap=16, limit=16)
