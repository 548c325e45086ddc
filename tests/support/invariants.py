"""The invariants every fault test checks, read from the streams and the mock's own log:
every job id has exactly one terminal result; the provider's request log and the cost records
agree one to one; nothing is left unacked."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError, ServiceUnavailableError

from panelboard.transport.streams import BROKER_CONSUMER, pool_of
from panelboard.schemas import wire
from panelboard.schemas.codec import decode_cost, decode_result
from panelboard.schemas.job import Completed, CostRecord, Result


async def read_all(js: JetStreamContext, stream: str, subject: str) -> list[tuple[str, bytes]]:
    """Every message on a subject filter, through an ephemeral pull consumer. The count to
    expect comes from the stream itself, not the consumer's num_pending, which a cluster
    that just changed leaders can under-report."""
    info = await js.stream_info(stream, subjects_filter=subject)
    expected = sum((info.state.subjects or {}).values())
    psub = await js.pull_subscribe(subject, stream=stream)
    out: list[tuple[str, bytes]] = []
    # Just after a leader change, a new consumer's first pulls can find no consumer leader
    # yet and the server answers 503; that is the cluster settling, so wait it out (bounded).
    deadline = time.monotonic() + 60
    try:
        while len(out) < expected:
            try:
                batch = await psub.fetch(min(expected - len(out), 1000), timeout=10)
            except ServiceUnavailableError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)
                continue
            for m in batch:
                out.append((m.subject, m.data))
                await m.ack()
    finally:
        await psub.unsubscribe()
    return out


@dataclass
class Report:
    submitted: int
    terminal: int = 0
    completed: int = 0
    failed: int = 0
    missing: list[str] = field(default_factory=list)
    duplicate_results: list[str] = field(default_factory=list)
    provider_calls: int = 0
    duplicate_calls: list[str] = field(default_factory=list)  # the same request id served twice
    cost_records: int = 0
    lost_calls: int = 0  # cost records for calls cut off by a dead worker
    calls_without_cost: list[str] = field(default_factory=list)
    costs_without_call: list[str] = field(default_factory=list)  # non-lost records the provider never saw
    ok_calls_not_billed: list[str] = field(default_factory=list)  # answered 200, but billed as a failed call
    reexecuted_jobs: int = 0  # jobs the provider answered more than once (a worker died mid-call)
    # Answered and billed (ok record) but superseded by a later attempt of the same hop: the
    # worker died after the cost record and before the result, so the answer never reached anyone.
    cut_after_answer: int = 0
    unacked: dict[str, int] = field(default_factory=dict)
    results: dict[str, Result] = field(default_factory=dict)
    costs: list[CostRecord] = field(default_factory=list)
    mock_log: list[dict] = field(default_factory=list)  # the provider's request log these counts came from

    def line(self) -> str:
        return (f"submitted={self.submitted} terminal={self.terminal} completed={self.completed} failed={self.failed} "
                f"provider_calls={self.provider_calls} cost_records={self.cost_records} lost_calls={self.lost_calls} "
                f"duplicates={len(self.duplicate_results) + len(self.duplicate_calls)} reexecuted={self.reexecuted_jobs} "
                f"cut_after_answer={self.cut_after_answer} "
                f"lost_jobs={len(self.missing)}")

    def assert_holds(self) -> None:
        assert not self.missing, f"jobs with no terminal result: {self.missing[:5]} ({self.line()})"
        assert not self.duplicate_results, f"jobs with several results: {self.duplicate_results[:5]}"
        assert self.terminal == self.submitted
        assert not self.duplicate_calls, f"request ids served twice: {self.duplicate_calls[:5]}"
        assert not self.calls_without_cost, f"provider calls with no cost record: {self.calls_without_cost[:5]}"
        assert not self.costs_without_call, f"cost records for calls the provider never served: {self.costs_without_call[:5]}"
        assert not self.ok_calls_not_billed, f"calls answered 200 whose cost record is not the ok one: {self.ok_calls_not_billed[:5]}"
        assert not any(self.unacked.values()), f"left unacked or pending: {self.unacked}"


async def check(js: JetStreamContext, team: str, job_ids: list[str], mock_log: Callable[[], list[dict]], providers: list[str],
                settle_s: float = 30.0) -> Report:
    """The promises, counted from raw sources, for the jobs `job_ids` of `team` (results are
    addressed by team and job id, pb.results.<team>.<job>). `mock_log` reads the provider's
    request log: it is called only once the consumers have drained, so a call still queued
    behind the answers the test waited for (a busy box) is in the log with its cost record."""
    unacked: dict[str, int] = {}
    # "Left" unacked: a restarted server redelivers deliveries whose acks it lost, and the
    # workers ack them (the job is done) once ack_wait passes; wait for that, bounded.
    # Every pool consumer there is (one per team and lane, workers/fair.py), not only today's.
    pool_consumers = [ci.name for ci in await js.consumers_info(wire.DISPATCH_STREAM) if (pool := pool_of(ci.config)) and pool[0] in providers]
    consumers = [(wire.JOBS_STREAM, BROKER_CONSUMER), *((wire.DISPATCH_STREAM, name) for name in pool_consumers)]
    deadline = time.monotonic() + settle_s
    while True:
        for stream, consumer in consumers:
            try:
                info = await js.consumer_info(stream, consumer)
            except NotFoundError:  # a provider without a batch lane
                continue
            unacked[consumer] = info.num_ack_pending + info.num_pending
        if not any(unacked.values()) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.25)
    ids = set(job_ids)
    rep = Report(submitted=len(job_ids), unacked=unacked)
    rep.mock_log = log = await asyncio.to_thread(mock_log)
    per_job = Counter()
    for subject, data in await read_all(js, wire.RESULTS_STREAM, wire.results_of(team)):
        job_id = subject.rsplit(".", 1)[-1]
        if job_id in ids:
            per_job[job_id] += 1
            rep.results[job_id] = decode_result(data)
    rep.missing = [j for j in job_ids if per_job[j] == 0]
    rep.duplicate_results = [j for j, n in per_job.items() if n > 1]
    rep.terminal = sum(1 for j in job_ids if per_job[j] >= 1)
    rep.completed = sum(isinstance(r, Completed) for r in rep.results.values())
    rep.failed = rep.terminal - rep.completed

    calls = Counter(e["request_id"] for e in log if e["request_id"].split(":")[0].split("~")[0] in ids)
    rep.provider_calls = sum(calls.values())
    rep.duplicate_calls = [r for r, n in calls.items() if n > 1]
    ok_calls = Counter(e["request_id"].split(":")[0] for e in log  # shadow calls (":s") are mirrors, not re-runs
                       if e["status"] == 200 and e["request_id"].split(":")[0] in ids and not e["request_id"].endswith(":s"))
    rep.reexecuted_jobs = sum(1 for n in ok_calls.values() if n > 1)

    for _, data in await read_all(js, wire.COSTS_STREAM, "pb.costs.>"):
        rec = decode_cost(data)
        if rec.job_id in ids:
            rep.costs.append(rec)
    rep.cost_records = len(rep.costs)
    rep.lost_calls = sum(r.outcome == "lost" for r in rep.costs)
    last_attempt: dict[tuple[str, int, int], int] = {}
    for r in rep.costs:
        if not r.shadow:
            k = (r.job_id, r.run, r.hop)
            last_attempt[k] = max(last_attempt.get(k, -1), r.attempt)
    rep.cut_after_answer = sum(1 for r in rep.costs if r.outcome == "ok" and not r.shadow and r.attempt < last_attempt[(r.job_id, r.run, r.hop)])
    cost_ids = Counter(r.request_id for r in rep.costs)
    rep.calls_without_cost = [r for r in calls if cost_ids[r] == 0]
    # Calls whose fate we cannot know: cut off with their worker ("lost"), or given up on by us
    # ("Timeout": on a busy box a call may time out before the provider reads it, or the
    # provider may answer it after we left). Their records may lack a provider entry, and a
    # 200 the provider sent after we left is billed by the record of what we saw.
    unknown = ("lost", "Timeout")
    rep.costs_without_call = [f"{r.request_id} ({r.outcome}, {r.latency_ms:.0f} ms)" for r in rep.costs if r.outcome not in unknown and calls[r.request_id] == 0]
    # Otherwise a call the provider answered 200 is billed by its ok record: a record of another
    # outcome under its request id (a reused id) means its price never reached the ledger.
    billed = {r.request_id for r in rep.costs if r.outcome == "ok" or r.outcome in unknown}
    outcomes = {r.request_id: r.outcome for r in rep.costs}
    rep.ok_calls_not_billed = [f"{i} (billed as {outcomes.get(i)})" for i in
                               sorted({e["request_id"] for e in log if e["status"] == 200 and e["request_id"] in calls} - billed)]

    return rep
