"""Governance decisions, pure and from tables: keys, worst-case estimates, reservations,
settlement, rate windows, and the screening of raw payloads."""

from __future__ import annotations

import random
import re

import msgspec
import pytest

from panelboard.broker import admission, budgets, keys, ratelimit
from panelboard.schemas import redact
from panelboard.broker.budgets import Budget, Delta, OverBudget, Reserved, Ticket
from panelboard.broker.keys import KeyRecord
from panelboard.broker.ratelimit import Bucket, Limits
from panelboard.transport import logs
from panelboard.config import parse
from panelboard.schemas.config import Governance
from panelboard.schemas.errors import BadKey, InvalidJob, PromptTooLarge
from panelboard.schemas.job import Hop, Job, Route

DAY = 86_400.0
NOW = 1_780_000_000.0  # 2026-05-28 20:26:40 UTC
CENT = 10_000_000  # nano-dollars
ROUTE = Route(tier="fast", chain=(Hop("oa/small", "oa"), Hop("oa/big", "oa")))

CFG = parse("""
providers: {oa: {api: openai, base_url: "http://127.0.0.1:9/v1"}}
models:
  oa/small: {provider: oa, model: s, input_per_m: 1.0, output_per_m: 2.0, max_output_tokens: 1000}
  oa/big:   {provider: oa, model: b, input_per_m: 10.0, output_per_m: 30.0, max_output_tokens: 500}
tiers: {fast: {fallbacks: [{model: oa/small}, {model: oa/big}]}}
intents: {fast: fast}
""")


def job(content: str = "hello", max_tokens: int | None = None, **kw) -> Job:
    return msgspec.convert({"id": "j1", "client": "c1", "request": {"messages": [{"role": "user", "content": content}], "max_tokens": max_tokens}, **kw}, Job)


# -- keys -----------------------------------------------------------------------------------------
def test_generated_keys_have_190_random_bits_a_visible_prefix_and_a_sha256_hash():
    seen = set()
    for _ in range(200):
        key, prefix = keys.generate()
        assert keys.KEY_RE.match(key) and key.startswith(prefix + "_") and len(prefix) == redact.PREFIX_LEN == 8
        assert keys.prefix_of(key) == prefix and re.fullmatch(r"[0-9a-f]{64}", keys.digest(key))
        seen.add(key)
    assert len(seen) == 200
    # 32 characters of base62 after the prefix: log2(62) * 32 = 190.5 bits, >= 128.
    assert redact.SECRET_LEN * 5.95 >= 128


def _rec(key: str, **kw) -> KeyRecord:
    return KeyRecord(prefix=keys.prefix_of(key) or "", hash=keys.digest(key), team="t", **kw)


KEY, _ = keys.generate()
OTHER, _ = keys.generate()


@pytest.mark.parametrize("given, record, expect", [
    (KEY, _rec(KEY), "ok"),
    (None, None, "requires a virtual key"),
    ("", None, "requires a virtual key"),
    ("sk-live-abcdefgh", None, "not a panelboard key"),
    ("pb_x'; DROP TABLE virtual_keys;--", None, "not a panelboard key"),
    (KEY, None, "unknown key"),
    (KEY[:-1] + ("A" if KEY[-1] != "A" else "B"), _rec(KEY), "unknown key"),  # same prefix, wrong secret
    (KEY, _rec(KEY, revoked_at=NOW - 1), "was revoked"),
    (KEY, _rec(KEY, revoked_at=NOW + 60), "ok"),  # rotated with a grace period: still works
    (KEY, _rec(KEY, expires_at=NOW - 1), "expired"),
    (KEY, _rec(KEY, expires_at=NOW + 1), "ok"),
    (KEY, _rec(KEY, tiers=frozenset({"cheap"})), "may not use tier 'fast'"),
    (KEY, _rec(KEY, tiers=frozenset({"fast"})), "ok"),
    (KEY, _rec(KEY, models=frozenset({"oa/small"})), "may not use model(s) oa/big"),
    (KEY, _rec(KEY, models=frozenset({"oa/small", "oa/big"})), "ok"),
])
def test_key_verification(given, record, expect):
    out = keys.verify(given, record, ROUTE, NOW)
    if expect == "ok":
        assert out == record
    else:
        assert isinstance(out, BadKey) and expect in out.message and out.hint
        if given and len(given) > redact.PREFIX_LEN:
            assert given not in out.message + out.hint  # never the whole key back


@pytest.mark.parametrize("text, seconds", [("30d", 30 * DAY), ("12h", 12 * 3600), ("90m", 5400), ("1.5h", 5400), ("10s", 10)])
def test_expiry_durations(text, seconds):
    assert keys.parse_expiry(text, now=NOW) == NOW + seconds


def test_expiry_dates_and_nonsense():
    assert keys.parse_expiry("2026-12-31", now=NOW) == 1_798_675_200.0
    with pytest.raises(ValueError, match="duration"):
        keys.parse_expiry("soon")


# -- worst-case estimate --------------------------------------------------------------------------
@pytest.mark.parametrize("content, max_tokens, cost_nano, tokens, model", [
    # 5 bytes + 4 per message + 3 = 12 prompt tokens. The dearer hop prices it, at its output cap
    # (500) when max_tokens is unset: 12*10 + 500*30 = 15120 $/M-tokens -> 15,120,000 nano.
    ("hello", None, 15_120_000, 12 + 500, "oa/big"),
    # max_tokens applies to every hop: 12*10 + 100*30 = 3120 -> 3,120,000.
    ("hello", 100, 3_120_000, 112, "oa/big"),
    ("héllo", 100, 3_130_000, 113, "oa/big"),  # bytes, not characters: é is two
])
def test_estimate_is_the_dearest_hop_at_max_tokens_or_the_output_cap(content, max_tokens, cost_nano, tokens, model):
    est = budgets.estimate(job(content, max_tokens), ROUTE, CFG)
    assert (est.cost_nano, est.tokens, est.model) == (cost_nano, tokens, model)


def test_estimate_bounds_the_real_cost_of_any_answer():
    rng = random.Random(7)
    for _ in range(200):
        content = "".join(rng.choice("abc é漢字 \n{}") for _ in range(rng.randint(1, 400)))
        mt = rng.choice([None, 1, 50, 400])
        est = budgets.estimate(job(content, mt), ROUTE, CFG)
        for hop in ROUTE.chain:
            m = CFG.models[hop.model]
            real_prompt = -(-len(content) // 4) + 7  # a typical tokenizer: ~4 chars per token
            out = mt if mt is not None else m.max_output_tokens
            real = round((real_prompt * m.input_per_m + out * m.output_per_m) * 1000)
            assert real <= est.cost_nano


# -- reservations ---------------------------------------------------------------------------------
def B(limit=1000, spent=0, reserved=0, period="none", pk="", soft=None, alerted=None) -> Budget:
    return Budget(owner="team t", limit_nano=limit, period=period, period_key=pk, spent_nano=spent, reserved_nano=reserved,
                  soft_nano=soft, soft_alerted=alerted)


TODAY = budgets.period_key("daily", NOW)


@pytest.mark.parametrize("budget, amount, fits, remaining", [
    (None, 500, True, None),
    (B(limit=None), 10**12, True, None),
    (B(), 1000, True, 0),
    (B(), 1001, False, 1000),
    (B(spent=600, reserved=300), 100, True, 0),
    (B(spent=600, reserved=300), 101, False, 100),
    (B(spent=1200), 1, False, 0),  # overspent (a call dearer than its estimate): remaining shows 0
    # A new day: yesterday's spend no longer counts, running jobs' reservations still do.
    (B(spent=1000, reserved=300, period="daily", pk="2026-05-27"), 700, True, 0),
    (B(spent=1000, reserved=300, period="daily", pk="2026-05-27"), 701, False, 700),
    (B(spent=1000, period="daily", pk=TODAY), 1, False, 0),
])
def test_reserve(budget, amount, fits, remaining):
    out = budgets.reserve(budget, amount, NOW)
    if fits:
        assert isinstance(out, Reserved)
        if budget is not None and budget.limit_nano is not None:
            assert out.after.reserved_nano == budget.reserved_nano + amount and out.after.remaining_nano() == remaining
    else:
        assert isinstance(out, OverBudget)
        assert out.remaining_usd == pytest.approx(remaining / 1e9)
        assert f"remaining budget ${remaining / 1e9:.6f}" in out.hint


def test_soft_limit_fires_once_a_period():
    first = budgets.reserve(B(limit=1000, soft=500, spent=450, period="daily", pk=TODAY), 100, NOW)
    assert isinstance(first, Reserved) and first.soft_crossed and first.after.soft_alerted == TODAY
    again = budgets.reserve(first.after, 100, NOW)
    assert isinstance(again, Reserved) and not again.soft_crossed
    tomorrow = budgets.reserve(first.after, 600, NOW + DAY)  # spend restarts: 0 + 200 reserved + 600 > 500
    assert isinstance(tomorrow, Reserved) and tomorrow.soft_crossed


def test_period_boundaries_are_utc():
    assert budgets.period_key("daily", NOW) == "2026-05-28" and budgets.period_key("monthly", NOW) == "2026-05"
    assert budgets.period_key("none", NOW) == ""
    assert str(budgets.period_end("monthly", 1_798_675_200.0 + 3600)) == "2027-01-01 00:00:00+00:00"


# -- settlement -----------------------------------------------------------------------------------
T0 = Ticket(reserved_nano=100, est_tokens=50)


@pytest.mark.parametrize("events, spent, reserved, tokens, inflight", [
    ([("cost", 30, 20, True)], 30, -100, -30, -1),  # answered: real cost in, the rest released
    ([("cost", 0, 0, False), ("cost", 0, 0, False), ("dead",)], 0, -100, -50, -1),  # failed calls cost nothing
    ([("dead",), ("cost", 30, 20, True)], 30, -100, -30, -1),  # any order, same totals
    ([("cost", 30, 20, True), ("dead",)], 30, -100, -30, -1),
    ([("cost", 120, 70, True)], 120, -100, 20, -1),  # dearer than reserved: spent is what it cost
    ([("cost", 40, 10, False)], 40, -40, 0, 0),  # mid-way (a billed retry): still running
    ([("cost", 40, 10, False), ("cost", 30, 20, True)], 70, -100, -20, -1),
])
def test_settlement_sums_are_order_free(events, spent, reserved, tokens, inflight):
    for order in (events, list(reversed(events))):
        t, total = T0, Delta()
        for e in order:
            t, d = budgets.settle_cost(t, e[1], e[2], e[3]) if e[0] == "cost" else budgets.settle_done(t)
            total += d
        assert total == Delta(spent_nano=spent, reserved_nano=reserved, window_tokens=tokens, inflight=inflight), order
        assert t.holds_nano() == 0 or not t.done


# -- rate windows ---------------------------------------------------------------------------------
@pytest.mark.parametrize("limits, buckets, tokens, limited, retry", [
    (Limits("k"), [Bucket(int(NOW), 10**6, 10**9)], 10, None, None),
    (Limits("k", rpm=3), [Bucket(int(NOW) - 5, 2, 0)], 1, None, None),
    (Limits("k", rpm=3), [Bucket(int(NOW) - 5, 3, 0)], 1, "rpm", NOW - 5 + 61 - NOW),
    (Limits("k", rpm=3), [Bucket(int(NOW) - 60, 3, 0)], 1, "rpm", 1.0),  # the oldest counted second
    (Limits("k", rpm=3), [Bucket(int(NOW) - 61, 3, 0)], 1, None, None),  # out of the window
    (Limits("k", rpm=3), [Bucket(int(NOW) - 50, 1, 0), Bucket(int(NOW) - 10, 2, 0)], 1, "rpm", 11.0),
    (Limits("k", rpm=3), [Bucket(int(NOW) - 50, 2, 0), Bucket(int(NOW) - 10, 2, 0)], 1, "rpm", 11.0),  # dropping 2 is enough
    (Limits("k", rpm=3), [Bucket(int(NOW) - 50, 1, 0), Bucket(int(NOW) - 10, 3, 0)], 1, "rpm", 51.0),
    (Limits("k", tpm=100), [Bucket(int(NOW) - 30, 1, 60)], 40, None, None),
    (Limits("k", tpm=100), [Bucket(int(NOW) - 30, 1, 61)], 40, "tpm", 31.0),
    (Limits("k", tpm=100), [], 101, "tpm", 0.0),  # the job alone is over: never fits
])
def test_rate_window(limits, buckets, tokens, limited, retry):
    out = ratelimit.check(limits, buckets, tokens, NOW)
    if limited is None:
        assert out is None
    else:
        assert out is not None and out.what == limited and out.retry_after_s == pytest.approx(retry)
        err = out.error()
        assert err.retry_after_s == pytest.approx(round(retry, 3)) and err.hint


def test_no_60_second_window_ever_admits_more_than_the_limit():
    """Simulated arrivals over ten minutes, bursts included, through the same decision the
    store makes: the admitted times never put more than `rpm` into any 60 s window."""
    rng = random.Random(42)
    rpm = 60
    arrivals = sorted([NOW + rng.uniform(0, 600) for _ in range(3000)] + [NOW + 123.999] * 200 + [NOW + 184.0] * 200)
    buckets: dict[int, int] = {}
    admitted: list[float] = []
    for t in arrivals:
        window = [Bucket(s, n, 0) for s, n in buckets.items()]
        if ratelimit.check(Limits("k", rpm=rpm), window, 1, t) is None:
            buckets[int(t)] = buckets.get(int(t), 0) + 1
            admitted.append(t)
    j = 0
    worst = 0
    for i, t in enumerate(admitted):  # every window that starts at an admission
        while admitted[j] < t - 60:
            j += 1
        worst = max(worst, i - j + 1)
    assert worst <= rpm
    assert len(admitted) >= 9 * rpm  # and it is not starved: ~one window's worth per minute


def test_parallel_cap():
    assert ratelimit.check_parallel("key k", 2, 1) is None
    out = ratelimit.check_parallel("key k", 2, 2)
    assert out is not None and out.what == "parallel" and "retry when one of its jobs has finished" in out.error().message
    assert ratelimit.check_parallel("key k", None, 10**6) is None
    assert 0.2 < ratelimit.wait_delay(out, 1) < ratelimit.wait_delay(out, 5) <= 5.0


# -- screening raw payloads -----------------------------------------------------------------------
G = Governance(max_job_bytes=4096, max_json_depth=16)
OK_JOB = b'{"id":"a","client":"c","request":{"messages":[{"role":"user","content":"hi"}]}}'


@pytest.mark.parametrize("data, expect", [
    (OK_JOB, None),
    (b'{"id":"a","client":"c","request":{"messages":[{"role":"user","content":"' + b"x" * 5000 + b'"}]}}', PromptTooLarge),
    (b'{"id":"a","metadata":' + b"[" * 40 + b"]" * 40 + b"}", InvalidJob),
    (b'{"id":"a","metadata":' + b"[" * 15 + b"]" * 15 + b"}", None),
    # brackets inside strings are text, not nesting
    (b'{"id":"a","request":{"messages":[{"role":"user","content":"' + b"{[" * 100 + b'\\"]"}]}}', None),
])
def test_screen(data, expect):
    out = admission.screen(data, G)
    assert (out is None) if expect is None else isinstance(out, expect)


@pytest.mark.parametrize("data, found", [
    (OK_JOB, []),
    (b'{"id":"a","request":{"messages":[],"api_base":"http://evil"}}', ["request.api_base"]),
    (b'{"id":"a","base_url":"http://evil","request":{"messages":[]}}', ["base_url"]),
    (b'{"id":"a","request":{"messages":[],"extra_headers":{"x":1},"api_key":"sk-x"}}', ["request.extra_headers", "request.api_key"]),
    # a JSON schema property named "url" is not a field of the request
    (b'{"id":"a","request":{"messages":[],"response_format":{"type":"json_schema","schema":{"properties":{"url":{}}}}}}', []),
    (b'{"id":"a","request":{"messages":[{"role":"user","content":"set \\"base_url\\": x"}]}}', []),
    # The check reads names as the decoder does: JSON escapes spell the same field.
    (b'{"id":"a","request":{"messages":[],"api\\u005fbase":"http://evil"}}', ["request.api_base"]),
    (b'{"id":"a","\\u0062ase_url":"http://evil","request":{"messages":[]}}', ["base_url"]),
    (b'{"id":"a","request":{"messages":[],"\\u0061\\u0070\\u0069_key":"sk-x","extra\\u005Fbody":{}}}', ["request.api_key", "request.extra_body"]),
    (b'{"id":"a","he\\u0061ders":{"x":"y"},"request":{"messages":[]}}', ["headers"]),
    # escapes in text (json.dumps writes every non-ASCII character so) are only text
    (b'{"id":"a","request":{"messages":[{"role":"user","content":"caf\\u00e9 \\"api\\u005fbase\\": x"}]}}', []),
])
def test_forbidden_fields(data, found):
    assert sorted(admission.forbidden_fields(data)) == sorted(found)


@pytest.mark.parametrize("request_, fragment", [
    ({"max_tokens": -5}, "max_tokens is -5"),
    ({"max_tokens": 0}, "max_tokens is 0"),
    ({"max_tokens": 10**18}, "max_tokens is 1000000000000000000"),
    ({"max_tokens": 2**63 - 1}, "outside 1..1,000,000"),
    ({"temperature": -0.1}, "temperature is -0.1"),
    ({"temperature": 9.0}, "temperature is 9.0"),
    ({"temperature": float("inf")}, "temperature is inf"),
    ({"top_p": 1.5}, "top_p is 1.5"),
    ({"max_tokens": 1, "temperature": 0.0, "top_p": 0.0}, None),
    ({"max_tokens": 1_000_000, "temperature": 2.0, "top_p": 1.0}, None),
    ({}, None),
])
def test_request_numbers_a_provider_would_refuse_are_invalid_jobs_with_a_hint(request_, fragment):
    j = msgspec.convert({"id": "j1", "client": "c1", "request": {"messages": [{"role": "user", "content": "hi"}], **request_}}, Job)
    out = admission.check_fields(j)
    if fragment is None:
        assert out is None
    else:
        assert isinstance(out, InvalidJob) and fragment in out.message and "leave it out" in out.hint, out


@pytest.mark.parametrize("team, feature, ok", [
    ("default", None, True), ("team-a_1", "invoices", True),
    ("x'; DROP TABLE teams;--", None, False), ("a.b", None, False), ("a b", None, False), ("", None, False),
    ("t", "x" * 129, False), ("t", "bad\nfeature", False),
])
def test_check_fields(team, feature, ok):
    assert (admission.check_fields(job(team=team, feature=feature)) is None) == ok


def test_public_job_keeps_only_the_key_prefix_and_the_keys_team():
    key, prefix = keys.generate()
    j = job(key=key, team="claimed")
    out = admission.public(j, team="real")
    assert out.key == prefix and out.team == "real" and j.key == key
    assert admission.public(job()) is not None and admission.public(job(key="short")).key == "short"


KEY, PREFIX = keys.generate()
SECRET = KEY[len(PREFIX) + 1:]


@pytest.mark.parametrize("where, data", [
    ("metadata value", b'{"metadata":{"note":"my key is ' + KEY.encode() + b'"}}'),
    ("metadata name", b'{"metadata":{"' + KEY.encode() + b'":1}}'),
    ("decode error quoting a value", b'{"error":{"message":"Invalid enum value \'' + KEY.encode() + b'\' - at `$.priority`"}}'),
    ("prompt", b'{"messages":[{"role":"user","content":"use ' + KEY.encode() + b' please"}]}'),
    ("twice, and glued to text", b'["x' + KEY.encode() + b'", "' + KEY.encode() + b'yz"]'),
])
def test_key_shaped_values_in_stored_messages_keep_only_their_prefix(where, data):
    out = redact.scrub(data)
    assert SECRET.encode() not in out and PREFIX.encode() + redact.REDACTED in out, where
    assert redact.scrub(out) == out  # idempotent: what was scrubbed is no longer key-shaped
    assert msgspec.json.decode(out) is not None  # still the same JSON shape


def test_scrub_leaves_messages_without_keys_untouched():
    for data in (b'{"key":"pb_ab12c"}', b'{"x":"pb_ab12c_short"}', b'{"team":"pb_team"}', b"plain"):
        assert redact.scrub(data) is data


@pytest.mark.parametrize("where, data", [
    ("plain", b'{"key":"' + KEY.encode() + b'","request":12'),
    ("spelled with escapes", b'{"key":"' + KEY.replace("_", "\\u005f").replace("p", "\\u0070", 1).encode() + b'","request":12'),
    ("provider key", b'{"x":"sk-ant-api03-abcdefghijkl","bad":"\xff"}'),
    # scrub first, then cut: a key straddling the 64 KiB cut keeps neither prefix nor secret
    *((f"straddling the cut by {k}", b"x" * (redact.RAW_KEEP - k) + KEY.encode() + b"tail") for k in (1, 9, 12, 20, 40)),
    ("escaped, straddling the cut", b"x" * (redact.RAW_KEEP - 100) + KEY.replace("_", "\\u005f").encode() + b"tail"),
    ("many keys before the cut", (b'"' + KEY.encode() + b'",') * 2000),
])
def test_raw_payloads_are_scrubbed_then_cut(where, data):
    out = redact.scrub_raw(data)
    assert len(out) <= redact.RAW_KEEP, where
    assert b"abcdefghijkl" not in out
    for n in range(11, len(SECRET) + 1):  # no run of the secret's characters at all
        assert SECRET[:n].encode() not in out and SECRET[-n:].encode() not in out, (where, n)
    assert redact.scrub_raw(out) == out


def test_scrubbed_raw_payloads_and_log_lines_never_hold_a_key():
    key, prefix = keys.generate()
    raw = b'{"key":"' + key.encode() + b'","x":"sk-ant-api03-abcdefghijkl","bad":"\xff"}'
    out = redact.scrub_raw(raw)
    assert key.encode() not in out and prefix.encode() in out and b"abcdefghijkl" not in out
    line = logs.redact_text(f"job with key {key} failed")
    assert key not in line and key[:7] in line
    logs.register_secret("provider-secret-value-123")
    assert "provider-secret-value-123" not in logs.redact_text("Authorization: provider-secret-value-123")


def test_a_job_without_max_tokens_is_bound_to_the_smallest_cap_of_its_chain():
    j = job("hello")
    out = admission.bound(j, ROUTE, CFG)
    assert out.request.max_tokens == 500 and j.request.max_tokens is None
    assert budgets.estimate(out, ROUTE, CFG).output_tokens == 500
    assert admission.bound(job("hello", 7), ROUTE, CFG).request.max_tokens == 7


# -- shadow mirrors inside the budget ----------------------------------------------------------------
@pytest.mark.parametrize("left, live, shadow, want_shadow", [
    (10 * CENT, 4 * CENT, 5 * CENT, 5 * CENT),  # both fit: reserved together
    (10 * CENT, 4 * CENT, 6 * CENT, 6 * CENT),  # exactly
    (10 * CENT, 4 * CENT, 7 * CENT, 0),  # the mirror does not fit: the job runs alone
    (10 * CENT, 4 * CENT, 0, 0),  # not sampled
])
def test_a_mirror_is_reserved_with_its_job_or_dropped(left, live, shadow, want_shadow):
    team = budgets.Budget(owner="team t", limit_nano=left)
    plan = budgets.reserve_all([None, team], live, shadow, NOW)
    assert isinstance(plan, budgets.Plan) and plan.shadow_nano == want_shadow
    assert plan.reserved[0] is None and plan.reserved[1].after.reserved_nano == live + want_shadow == plan.amount_nano


def test_a_job_that_does_not_fit_is_refused_whatever_its_mirror():
    key = budgets.Budget(owner="key pb_abcde", limit_nano=3 * CENT)
    team = budgets.Budget(owner="team t", limit_nano=100 * CENT)
    out = budgets.reserve_all([key, team], 4 * CENT, 1 * CENT, NOW)
    assert isinstance(out, OverBudget) and out.message.startswith("key pb_abcde")
    # The key's budget has room for the job but not the pair: the mirror is dropped.
    plan = budgets.reserve_all([budgets.Budget(owner="key pb_abcde", limit_nano=5 * CENT), team], 4 * CENT, 2 * CENT, NOW)
    assert plan.shadow_nano == 0 and all(r.after.reserved_nano == 4 * CENT for r in plan.reserved)


def test_shadow_settlement_spends_against_the_mirror_and_never_touches_rate_windows():
    t = budgets.Ticket(reserved_nano=5 * CENT, est_tokens=0)
    t1, d = budgets.settle_shadow_cost(t, 0, terminal=False)  # a failed shadow call: costs nothing
    assert d == budgets.Delta() and not t1.done
    t2, d = budgets.settle_shadow_cost(t1, 3 * CENT, terminal=True)  # its answer: spent, the rest released
    assert d == budgets.Delta(spent_nano=3 * CENT, reserved_nano=-5 * CENT, shadow_spent_nano=3 * CENT) and t2.done
    _, d = budgets.settle_shadow_done(t1)  # or its chain failed
    assert d == budgets.Delta(reserved_nano=-5 * CENT)


# -- schema upgrades ------------------------------------------------------------------------------
def test_an_old_table_is_upgraded_by_widening_and_adding_columns():
    from sqlalchemy import BigInteger, Column, Integer, MetaData, Table, text

    from panelboard.transport import db

    t = Table("t", MetaData(), Column("n", BigInteger, nullable=False), Column("m", BigInteger, nullable=False, server_default=text("0")))
    old = {"n": Integer()}
    assert db.upgrade_plan("postgresql", t, old, '"s"."t"') == [  # one statement: the table is rewritten once
        'ALTER TABLE "s"."t" ALTER COLUMN "n" TYPE BIGINT, ADD COLUMN IF NOT EXISTS "m" BIGINT DEFAULT 0 NOT NULL',
    ]
    assert db.upgrade_plan("sqlite", t, old, '"t"') == ['ALTER TABLE "t" ADD COLUMN "m" BIGINT DEFAULT 0 NOT NULL']
    assert db.upgrade_plan("postgresql", t, {"n": BigInteger(), "m": BigInteger()}, '"t"') == []
