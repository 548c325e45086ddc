"""Per-provider backpressure decisions, from tables."""

from panelboard.schemas.chat import ChatResponse
from panelboard.schemas.pacing import RateSignal
from panelboard.workers.outcome import Ok, RateLimited, ServerError
from panelboard.workers.pressure import MAX_PAUSE_S, pause_s

OK = ChatResponse(id="x", model="m", choices=[])


def test_retry_after_sets_the_pause():
    assert pause_s(RateLimited(1, "slow down", retry_after_s=7.0), streak=0) == 7.0


def test_a_429_storm_without_retry_after_backs_off_harder_and_is_capped():
    pauses = [pause_s(RateLimited(1, "slow down"), streak=n) for n in range(12)]
    assert pauses[:4] == [0.25, 0.5, 1.0, 2.0]
    assert max(pauses) <= MAX_PAUSE_S and pauses == sorted(pauses)


def test_a_success_never_pauses_the_pool_its_window_is_paced_instead():
    # An exhausted window holds calls until its reset (workers/pacing.py), not the whole pool for a guess.
    assert pause_s(Ok(OK, 1.0, rate=RateSignal(at=0.0, requests_remaining=0, requests_reset_at=2.0)), streak=0) == 0.0


def test_hard_quota_errors_and_server_errors_do_not_pause_the_pool():
    assert pause_s(RateLimited(1, "insufficient_quota", hard=True), streak=3) == 0.0
    assert pause_s(ServerError(503, 1, "down"), streak=0) == 0.0
