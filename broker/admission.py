"""Admission: what the broker checks before a job may cost anything.

Pure checks on every job (governance on or off), cheap enough for the hot path:
    screen(raw, limits)      oversized payloads (PromptTooLarge), JSON nested too deep
    forbidden_fields(raw)    jobs that try to name an address or credential (api_base, ...),
                             however the field name is spelled (JSON escapes included)
    check_fields(job)        team and feature (subject tokens, SQL columns) and the request's
                             numbers (max_tokens, temperature, top_p) a provider would choke on
    public(job)              the job as it travels on: the key cut to its visible prefix
    scrub_raw(raw)           an undecodable payload fit for a dead letter (broker/keys.py)
Key-shaped values anywhere else in what is stored (metadata, prompts, echoed error text) are
cut to their prefix by panelboard.transport.bus.publish, on every message it writes.

The Governor is the I/O shell for keys, rate limits and budgets: off, it costs one attribute
read per job; on, one SQL transaction per batch of a team's jobs (broker/governance_admit.py):
the admissions that arrive while a team's transaction runs are admitted together in its next.
"""

from __future__ import annotations

import asyncio
import math
import re
from dataclasses import dataclass
from typing import Any

import msgspec
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from panelboard.broker import budgets, ratelimit
from panelboard.broker.governance_store import AdmitOutcome, AdmitRequest, Admitted, Store, Throttled
from panelboard.broker.settle import Settler
from panelboard.schemas.redact import PREFIX_LEN
from panelboard.transport import db, logs
from panelboard.schemas.chat import MODELLED, ChatRequest
from panelboard.schemas.config import Config, Governance
from panelboard.schemas.errors import InvalidJob, JobError, PromptTooLarge
from panelboard.schemas.job import ID_RE, Job, Route

log = logs.get("admission")

# Fields that could point a worker somewhere the config did not name, or carry a credential
# past it. The typed decoder drops unknown fields anyway; refusing says so out loud.
FORBIDDEN = frozenset({
    "api_base", "base_url", "api_url", "url", "endpoint", "azure_endpoint", "api_key", "api_version", "api_type",
    "headers", "extra_headers", "default_headers", "extra_query", "extra_body", "proxy", "proxies", "host",
    "custom_llm_provider", "deployment_id", "organization", "http_client", "provider",
})
# The lookahead on first letters lets the scan skip most quotes at once: ~2 us for a typical job.
_FORBIDDEN_RE = re.compile(rb'"(?=[' + bytes(sorted({f.encode()[0] for f in FORBIDDEN})) + rb'])(?:'
                           + b"|".join(re.escape(f.encode()) for f in sorted(FORBIDDEN)) + rb')"\s*:')
_TOKENS_RE = re.compile(rb'"(?:[^"\\]++|\\.)*+"|[\[\]{}]')
MAX_FEATURE = 128
# Larger than any model's output cap: a bigger max_tokens is a client bug, and would make
# the budget's worst case (tokens x price, in nano-dollars) an absurd number.
MAX_TOKENS = 1_000_000


def json_depth(data: bytes) -> int:
    """How deeply the JSON nests, strings skipped (C-speed regex; a loop per bracket)."""
    depth = deepest = 0
    for m in _TOKENS_RE.finditer(data):
        c = m.group()[0]
        if c in b"[{":
            depth += 1
            if depth > deepest:
                deepest = depth
        elif c in b"]}":
            depth -= 1
    return deepest


def screen(data: bytes, g: Governance) -> PromptTooLarge | InvalidJob | None:
    """Checks on the raw payload, before it is decoded at all."""
    if len(data) > g.max_job_bytes:
        return PromptTooLarge(
            message=f"the job is {len(data)} bytes, over this gateway's limit of {g.max_job_bytes} bytes",
            hint="send a shorter prompt (split the document, or summarise it in parts), or ask an operator to raise governance.max_job_bytes",
        )
    # Cheap bound first: the depth cannot exceed the number of opening brackets.
    if data.count(b"{") + data.count(b"[") > g.max_json_depth and (depth := json_depth(data)) > g.max_json_depth:
        return InvalidJob(message=f"the job's JSON nests {depth} levels deep, over the limit of {g.max_json_depth}",
                          hint="flatten metadata, tools and response_format; deep nesting is refused so that it cannot exhaust a decoder")
    return None


def forbidden_fields(data: bytes) -> list[str]:
    """Fields of the job or its request that name an address or a credential, as the decoder
    reads their names: "api\\u005fbase" is api_base. The common case is two C-speed scans that
    find no such name and no \\u escape at all; anything else is decoded (msgspec decodes
    faster than a regex can tell escaped keys from escaped text) and its keys checked."""
    if not _FORBIDDEN_RE.search(data) and b"\\u" not in data:
        return []
    try:
        raw = msgspec.json.decode(data)
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):
        return []
    if not isinstance(raw, dict):
        return []
    found = [k for k in raw if k in FORBIDDEN]
    req = raw.get("request")
    if isinstance(req, dict):
        found += [f"request.{k}" for k in req if k in FORBIDDEN]
        if isinstance(extra := req.get("passthrough"), dict):  # sent on to OpenAI-family providers as is
            found += [f"request.passthrough.{k}" for k in extra if k in FORBIDDEN]
    return found


class _Peek(msgspec.Struct):
    request: dict[str, msgspec.Raw] = {}


_peek = msgspec.json.Decoder(_Peek).decode


def with_passthrough(job: Job, data: bytes) -> Job:
    """The job with every request field the schema does not model (`prediction`, `audio`,
    `modalities`, a provider's own extension...) kept in request.passthrough, so it reaches
    OpenAI-family providers unchanged instead of being dropped by the typed decoder. The keys
    are peeked at without decoding their values (~1 us for a typical job)."""
    unknown = [k for k in _peek(data).request if k not in MODELLED]
    if not unknown:
        return job
    raw = msgspec.json.decode(data)["request"]
    extra = {**job.request.passthrough, **{k: raw[k] for k in unknown}}
    return msgspec.structs.replace(job, request=msgspec.structs.replace(job.request, passthrough=extra))


def refuse_fields(found: list[str]) -> InvalidJob:
    return InvalidJob(message=f"the job sets {', '.join(sorted(found))}, which a client may not set",
                      hint="providers, their addresses and credentials come from the gateway's config; pick them with an intent, and drop these fields")


def check_fields(job: Job) -> InvalidJob | None:
    """The team names a subject (pb.costs.<team>) and, with the feature, a ledger column; the
    request's numbers go to a provider, which would refuse (or bill) what is out of range."""
    if not ID_RE.match(job.team):
        return InvalidJob(message=f"team {job.team[:64]!r} is not a valid name", hint="use 1-128 characters from A-Z a-z 0-9 _ -")
    if job.feature is not None and (len(job.feature) > MAX_FEATURE or not job.feature.isprintable()):
        return InvalidJob(message=f"feature {job.feature[:64]!r}... is not a valid label", hint=f"use at most {MAX_FEATURE} printable characters")
    return check_request(job.request)


def check_request(req: ChatRequest) -> InvalidJob | None:
    """Bounds msgspec's types cannot express. Pure."""
    for name in ("max_tokens", "max_completion_tokens"):
        if (v := getattr(req, name)) is not None and not 1 <= v <= MAX_TOKENS:
            return InvalidJob(message=f"{name} is {v}, outside 1..{MAX_TOKENS:,}",
                              hint=f"set {name} to the longest answer you want (at least 1), or leave it out to get the model's own cap")
    if req.n is not None and not 1 <= req.n <= 128:
        return InvalidJob(message=f"n is {req.n}, outside 1..128", hint="ask for 1 to 128 choices, or leave n out for one")
    if req.temperature is not None and not (math.isfinite(req.temperature) and 0 <= req.temperature <= 2):
        return InvalidJob(message=f"temperature is {req.temperature}, outside 0..2", hint="use a temperature from 0 (focused) to 2 (random), or leave it out")
    if req.top_p is not None and not (math.isfinite(req.top_p) and 0 <= req.top_p <= 1):
        return InvalidJob(message=f"top_p is {req.top_p}, outside 0..1", hint="use a top_p from 0 to 1, or leave it out")
    return None


def public(job: Job, team: str | None = None) -> Job:
    """The job as it goes on to workers, dead letters and results: never the whole key (its
    visible prefix stays, for cost records); the team its key belongs to under governance."""
    if (job.key is None or len(job.key) <= PREFIX_LEN) and (team is None or team == job.team):
        return job
    return msgspec.structs.replace(job, key=job.key[:PREFIX_LEN] if job.key else None, team=team or job.team)


def bound(job: Job, route: Route, cfg: Config) -> Job:
    """Under governance a job without max_tokens gets the smallest output cap of its chain:
    then no hop can answer at more length than its reservation assumed (a provider's own
    default can exceed the catalog's cap), and every hop accepts it."""
    if job.request.output_cap() is not None or job.embeddings is not None:
        return job
    cap = min(cfg.models[h.model].max_output_tokens for h in route.chain)
    return msgspec.structs.replace(job, request=msgspec.structs.replace(job.request, max_tokens=cap))


# -- the governor ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Wait:
    """Over a rate limit with on_limit=wait: leave the job in the stream for `delay_s`."""

    delay_s: float
    reason: str


class Governor:
    def __init__(self, cfg: Config, store: Store | None):
        self.cfg = cfg
        self.g = cfg.governance
        self.store = store
        # None: not known yet (auto mode, database not read yet): admit nothing until it is.
        self.on: bool | None = False if store is None or self.g.require_keys is False else (True if self.g.require_keys else None)
        self.batcher = Batcher(store) if store is not None else None
        self.tasks: list[asyncio.Task[None]] = []
        self.stopping = asyncio.Event()
        self.soft_alerts = 0
        self.settler: Any = None

    async def start(self, js: JetStreamContext) -> None:
        if self.store is None or self.on is False:
            return
        self.js = js
        await self._refresh()
        if not self.on:
            self.tasks.append(asyncio.create_task(self._watch()))

    async def _turn_on(self) -> None:
        assert self.store is not None
        await self.store.create()
        settler = Settler(self.js, self.store)
        await settler.prepare()
        self.settler = settler
        self.tasks.append(asyncio.create_task(settler.run(self.stopping)))
        self.tasks.append(asyncio.create_task(self._sweep()))
        self.on = True
        log.info("governance.on", database=_display(self.store), mode="required" if self.g.require_keys else "auto (a key exists)")

    async def _refresh(self) -> None:
        """On with require_keys, or (auto) once a key exists. While the database cannot be
        read, admit nothing (on = None): jobs wait in PB_JOBS rather than pass unchecked."""
        assert self.store is not None
        try:
            if self.g.require_keys or await self.store.has_keys():
                await self._turn_on()
            else:
                self.on = False
        except Exception as e:
            self.on = None
            log.warning("governance.database_unavailable", database=_display(self.store), error=str(e).splitlines()[0][:300],
                        hint="jobs wait in PB_JOBS until the key database can be read")

    async def _watch(self) -> None:
        """Auto mode: the first `panelboard keys create` turns governance on within refresh_s;
        an unreadable database is retried as often."""
        while not self.on and not self.stopping.is_set():
            try:
                await asyncio.wait_for(self.stopping.wait(), self.g.refresh_s if self.on is False else 1.0)
            except (asyncio.TimeoutError, TimeoutError):
                await self._refresh()

    async def _sweep(self) -> None:
        assert self.store is not None
        while not self.stopping.is_set():
            try:
                await asyncio.wait_for(self.stopping.wait(), 30.0)
                return
            except (asyncio.TimeoutError, TimeoutError):
                pass
            try:
                stats = await self.store.sweep(self.g.reservation_ttl_s)
                if stats.ended:
                    log.warning("budget.reservations_expired", jobs=stats.ended, released_usd=budgets.usd(stats.released_nano),
                                hint="these jobs never reported an end; their reservations were released")
            except Exception as e:
                log.warning("governance.sweep_failed", error=str(e).splitlines()[0][:300])

    async def stop(self) -> None:
        self.stopping.set()
        if self.batcher is not None and self.batcher.batches:
            log.info("governance.admitted", jobs=self.batcher.jobs, transactions=self.batcher.batches,
                     jobs_per_transaction=round(self.batcher.jobs / self.batcher.batches, 1))
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=10)
        if self.store is not None:
            await self.store.close()

    async def admit(self, job: Job, route: Route, msg: Msg, now: float, shadow: Route | None = None) -> Admitted | Wait | JobError:
        """Key, rate limits and budget, in one transaction. Admitted: dispatch it (and its
        `shadow` mirror only if Admitted.shadow_nano: the mirror's worst case was reserved
        with it). Wait: nak it with that delay. A JobError: fail it."""
        assert self.store is not None
        deliveries = msg.metadata.num_delivered or 1
        if self.on is None:
            return Wait(delay_s=min(0.5 * deliveries, 5.0), reason="key database unavailable")
        est = budgets.estimate(job, route, self.cfg, self.g.bytes_per_token)
        mirror = budgets.estimate(job, shadow, self.cfg, self.g.bytes_per_token).cost_nano if shadow is not None else 0
        assert self.batcher is not None
        try:
            out = await self.batcher.admit(AdmitRequest(job.id, job.run, job.key, route, est, redelivered=deliveries > 1, team=job.team,
                                                        shadow_nano=mirror), now)
        except Exception as e:  # the database is away: the job waits in the stream, nothing is lost
            log.warning("governance.admit_failed", job_id=job.id, error=str(e).splitlines()[0][:300])
            return Wait(delay_s=min(0.5 * deliveries, 5.0), reason="key database unavailable")
        if isinstance(out, Throttled):
            lim = out.limited
            published = msg.metadata.timestamp.timestamp() if msg.metadata.timestamp else now
            if out.on_limit == "wait" and not lim.never and now - published < self.g.max_wait_s:
                return Wait(delay_s=ratelimit.wait_delay(lim, deliveries), reason=f"{lim.owner} {lim.what}")
            return lim.error()
        if isinstance(out, Admitted) and out.soft_crossed:
            self.soft_alerts += len(out.soft_crossed)
            for owner in out.soft_crossed:
                log.warning("budget.soft_limit", owner=owner, job_id=job.id, hint="spend crossed the soft limit this period")
        return out


class Batcher:
    """Group commit for admissions: a team's first job goes to the database at once; the jobs
    of that team that arrive while its transaction runs wait for it and go together in the
    next (up to MAX_BATCH), in arrival order. No linger: a lone job is never held back. One
    transaction per team at a time, and at most `parallel` at once (SQLite has one writer)."""

    MAX_BATCH = 256

    def __init__(self, store: Store):
        self.store = store
        self.pending: dict[str, list[tuple[AdmitRequest, float, asyncio.Future[AdmitOutcome]]]] = {}
        self.draining: dict[str, asyncio.Task[None]] = {}
        self.sem = asyncio.Semaphore(2 if store.dialect == "sqlite" else 8)
        self.batches = self.jobs = 0  # for the benchmark's figures

    async def admit(self, req: AdmitRequest, now: float) -> AdmitOutcome:
        fut: asyncio.Future[AdmitOutcome] = asyncio.get_running_loop().create_future()
        team = req.team or ""
        self.pending.setdefault(team, []).append((req, now, fut))
        if team not in self.draining:
            self.draining[team] = asyncio.create_task(self._drain(team))
        return await fut

    async def _drain(self, team: str) -> None:
        try:
            while queued := self.pending.pop(team, None):
                batch, rest = queued[:self.MAX_BATCH], queued[self.MAX_BATCH:]
                if rest:
                    self.pending[team] = rest
                async with self.sem:
                    try:
                        # The batch is decided at its latest job's time: every job in it was handled by then.
                        outs = await self.store.admit_many([r for r, _, _ in batch], max(t for _, t, _ in batch))
                    except Exception as e:  # every job of the batch waits in the stream (Governor.admit)
                        outs = None
                        for _, _, fut in batch:
                            if not fut.done():
                                fut.set_exception(e)
                self.batches += 1
                self.jobs += len(batch)
                for (_, _, fut), out in zip(batch, outs or []):
                    if not fut.done():
                        fut.set_result(out)
        finally:
            self.draining.pop(team, None)


def _display(store: Store) -> str:
    return db.display(str(store.engine.url))
