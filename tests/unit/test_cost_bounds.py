"""Which cost records can become ledger rows: db.problem names what is out of bounds, the same
on SQLite and Postgres, so a record lands on both or is quarantined on both. Pure."""

from __future__ import annotations

import pytest

from panelboard.schemas.job import CostRecord
from panelboard.transport import db


def record(**kw: object) -> CostRecord:
    base: dict[str, object] = dict(job_id="j1", team="t", key_prefix="pb_abcd", feature="f", intent="fast", tier="fast",
                                   provider="oa", model="oa/small", quantization="fp8", hop=0, attempt=0, prompt_tokens=12,
                                   completion_tokens=3, cost_usd=1e-5, latency_ms=42.5, queue_ms=3.2, outcome="ok", ts=1.78e9)
    return CostRecord(**{**base, **kw})  # type: ignore[arg-type]


def test_a_plausible_record_has_no_problem() -> None:
    assert db.problem(record()) is None
    assert db.problem(record(feature=None, quantization=None, ttft_ms=None)) is None  # NULLs are not checked


@pytest.mark.parametrize("kw, named", [
    (dict(prompt_tokens=2**63), "prompt_tokens is 9223372036854775808: outside 0..2^63-1"),
    (dict(completion_tokens=-1), "completion_tokens is -1: outside 0..2^63-1"),
    (dict(ttft_ms=float(2**64)), "ttft_ms is 18446744073709551616: outside 0..2^63-1"),
    (dict(provider="p" * 300), "provider is 300 characters long, over its"),
    (dict(feature="a\x00b"), "feature holds a NUL character"),
    (dict(cost_usd=float("nan")), "cost_usd is nan: not a finite, non-negative number"),
    (dict(latency_ms=-1.0), "latency_ms is -1.0: not a finite, non-negative number"),
])
def test_an_out_of_bounds_record_is_refused_with_the_field_named(kw: dict[str, object], named: str) -> None:
    why = db.problem(record(**kw))
    assert why is not None and why.startswith(named), why
