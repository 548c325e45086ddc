"""Fair share of a provider's slots among teams: the controller and the plan's followers.

Every team's dispatches have their own subject and durable consumer (transport/streams.py
`team_consumer`). One pool process per provider, the holder of a lease in PB_LANE_STATE,
runs the controller: every TICK_S it reads how many dispatches each team has in the stream
(queued or running: one STREAM.INFO with a subjects filter) and the consumers' figures (one
CONSUMER.LIST), decides each team's share (workers/share.py, pure) and moves the consumers'
max_ack_pending towards it, lowering first and raising only by what is provably free, so
the provider's max_concurrency holds across every process at every moment. The consumers it
keeps, with their limits, are the plan (schemas/fair.py) that every pool process follows
(transport/fair_consumer.py pulls from each). Nothing per job: the hot path does not see it.

A team whose jobs stop keeps its consumer (and one slot) for LINGER_S, so a team sending one
job now and then finds it ready and waits for nobody; then its consumer is deleted and its slot
goes back. With more busy teams than slots, the lightest wait until a slot's team goes idle.
"""

from __future__ import annotations

import asyncio
import datetime
import os
import socket
import time
import uuid

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue

from panelboard.schemas import wire
from panelboard.schemas.codec import encode
from panelboard.schemas.config import Config
from panelboard.schemas.fair import Plan, lease_key, plan_key
from panelboard.schemas.lanes import Owner
from panelboard.transport import logs
from panelboard.transport.consumer import nap
from panelboard.transport.fair_consumer import FairConsumer
from panelboard.transport.lanes import ensure_state_kv
from panelboard.transport.streams import all_consumers, lane_caps, pool_consumer_config, pool_of
from panelboard.workers.share import Seen, lowers, raises, targets

log = logs.get("fair")

TICK_S = 0.1  # a busy pool's look at its teams' queues
IDLE_TICK_S = 1.0  # an idle pool's: a team's first job nudges the controller (bus.publish_dispatch)
SHORT_TICK_S = 0.02  # while a team waits for slots others are giving back (about a slot's turnover)
LEASE_S = 3.0  # a dead controller's successor takes over after this
LINGER_S = 10.0  # an idle team keeps its consumer (and one slot) this long
PAUSE_S = 5.0  # a consumer paused to be deleted resumes by itself after this, should we die


def weights(cfg: Config) -> dict[str, float]:
    return {team: t.weight for team, t in cfg.teams.items()}


def demand(subjects: dict[str, int], provider: str, lanes: dict[str, int]) -> dict[str, dict[str, int]]:
    """Pure: lane -> team -> dispatches in the stream (queued or running), from its subject
    counts. With one lane, it takes both lanes' subjects."""
    out: dict[str, dict[str, int]] = {lane: {} for lane in lanes}
    for subject, n in subjects.items():
        parts = wire.dispatch_parts(subject)
        if parts is None or parts[0] != provider or not n:
            continue
        lane = parts[1] if parts[1] in lanes else "interactive"
        team = parts[2] or ""
        out[lane][team] = out[lane].get(team, 0) + n
    return out


class FairShare:
    def __init__(self, js: JetStreamContext, cfg: Config, provider: str, lanes: dict[str, FairConsumer], stopping: asyncio.Event):
        self.js, self.cfg, self.provider, self.lanes, self.stopping = js, cfg, provider, lanes, stopping
        self.caps = lane_caps(cfg, provider)
        self.weights = weights(cfg)
        self.me = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.kv: KeyValue | None = None
        self.busy_at: dict[tuple[str, str], float] = {}  # (lane, team) -> when it last had a job
        self.written: Plan | None = None
        self.nudged = asyncio.Event()

    def weight(self, team: str) -> float:
        return self.weights.get(team, 1.0)

    async def run(self) -> None:
        while True:  # NATS away at start: the pool waits for its plan meanwhile
            try:
                self.kv = kv = await ensure_state_kv(self.js, self.cfg)
                break
            except Exception as e:
                log.warning("fair.kv_failed", provider=self.provider, error=type(e).__name__)
                await self._sleep(1.0)
                if self.stopping.is_set():
                    return
        follow = asyncio.create_task(self._follow(kv))
        sub = await self.js._nc.subscribe(wire.fair_nudge(self.provider), cb=self._on_nudge)
        try:
            while not self.stopping.is_set():
                rev = await self._acquire(kv)
                if rev is None:
                    await self._sleep(LEASE_S / 3)
                    continue
                log.info("fair.controller", provider=self.provider, me=self.me)
                await self._control(kv, rev)
        finally:
            follow.cancel()
            await sub.unsubscribe()

    async def _on_nudge(self, _msg: object) -> None:
        self.nudged.set()

    async def _sleep(self, s: float) -> None:
        await nap(self.stopping, s)

    # -- every process: follow the plan ----------------------------------------------------
    async def _follow(self, kv: KeyValue) -> None:
        while True:
            try:
                watcher = await kv.watch(plan_key(self.provider))
                try:
                    async for entry in watcher:
                        if entry is None or not entry.value:
                            continue
                        plan = msgspec.json.decode(entry.value, type=Plan)
                        for lane, c in self.lanes.items():
                            c.set_plan(plan.lanes.get(lane, {}))
                finally:
                    await watcher.stop()
                await self._sleep(1.0)  # the watch ended: start another
            except asyncio.CancelledError:
                raise
            except Exception as e:  # NATS away: watch again
                log.warning("fair.watch_failed", provider=self.provider, error=type(e).__name__)
                await self._sleep(1.0)

    # -- one process: the controller -------------------------------------------------------
    def _owner(self) -> bytes:
        return encode(Owner(owner=self.me, until=time.time() + LEASE_S))

    async def _acquire(self, kv: KeyValue) -> int | None:
        key = lease_key(self.provider)
        try:
            try:
                return await kv.create(key, self._owner())
            except KeyWrongLastSequenceError:
                pass
            entry = await kv.get(key)
            held = msgspec.json.decode(entry.value, type=Owner) if entry.value else None
            if held is not None and held.until > time.time() and held.owner != self.me:
                return None
            return await kv.update(key, self._owner(), last=entry.revision)
        except (KeyWrongLastSequenceError, KeyNotFoundError):
            return None
        except Exception as e:  # NATS away: try again
            log.warning("fair.acquire_failed", provider=self.provider, error=type(e).__name__)
            return None

    async def _control(self, kv: KeyValue, rev: int) -> None:
        renewed = time.monotonic()
        while not self.stopping.is_set():
            if time.monotonic() - renewed >= LEASE_S / 3:
                try:
                    rev = await kv.update(lease_key(self.provider), self._owner(), last=rev)
                    renewed = time.monotonic()
                except KeyWrongLastSequenceError:
                    log.warning("fair.lease_lost", provider=self.provider, me=self.me)
                    return
                except Exception as e:  # NATS away: stop deciding until the lease is ours again
                    log.warning("fair.renew_failed", provider=self.provider, error=type(e).__name__)
                    return
            self.nudged.clear()
            wait = TICK_S
            try:
                wait = await self.tick()
            except Exception as e:
                log.warning("fair.tick_failed", provider=self.provider, error=repr(e))
            await self._pause(wait)
        try:
            await kv.delete(lease_key(self.provider), last=rev)
        except Exception:
            pass

    async def _pause(self, s: float) -> None:
        """Until the next look: `s`, or sooner when a nudge or the stop comes."""
        wake = [asyncio.ensure_future(self.nudged.wait()), asyncio.ensure_future(self.stopping.wait())]
        await asyncio.wait(wake, timeout=s, return_when=asyncio.FIRST_COMPLETED)
        for w in wake:
            w.cancel()

    async def _read(self) -> tuple[dict[str, dict[str, int]], dict[str, dict[str, Seen]]]:
        try:
            info = await self.js.stream_info(wire.DISPATCH_STREAM, subjects_filter=f"pb.dispatch.{self.provider}.>")
            subjects = info.state.subjects or {}
        except NotFoundError:
            subjects = {}
        seen: dict[str, dict[str, Seen]] = {lane: {} for lane in self.caps}
        if not subjects and self.written is not None:
            # Nothing queued or running (a work queue keeps a dispatch until its ack): the
            # consumers are as we left them, idle. An idle pool costs one small request a tick.
            for lane, limits in self.written.lanes.items():
                if lane in seen:
                    seen[lane] = {t: Seen(limit=n, ack_pending=0, pending=0) for t, n in limits.items()}
            return demand(subjects, self.provider, self.caps), seen
        for ci in await all_consumers(self.js, wire.DISPATCH_STREAM):
            parts = pool_of(ci.config)
            if parts is None or parts[0] != self.provider or parts[1] not in seen:
                continue
            seen[parts[1]][parts[2]] = Seen(limit=ci.config.max_ack_pending or 1, ack_pending=ci.num_ack_pending or 0, pending=ci.num_pending or 0)
        return demand(subjects, self.provider, self.caps), seen

    async def tick(self) -> float:
        """One step towards the shares; how long until the next look: soon while a team is
        short of its goal (the slots it waits for come back as others' calls finish), rarely
        while nothing is queued or running."""
        want_by_lane, seen_by_lane = await self._read()
        now = time.monotonic()
        short = False
        lanes: dict[str, dict[str, int]] = {}
        for lane, cap in self.caps.items():
            want, seen = want_by_lane[lane], seen_by_lane[lane]
            for team, s in seen.items():
                if s.ack_pending or s.pending or want.get(team):
                    self.busy_at[(lane, team)] = now
            for team in want:
                self.busy_at[(lane, team)] = now
            # An idle team's consumer lingers with one slot, ready for its next job.
            want = {**{t: 1 for t in seen if now - self.busy_at.get((lane, t), 0.0) < LINGER_S}, **want}
            goal = targets(cap, want, self.weights)
            lower, delete = lowers(goal, seen)
            for team, n in lower.items():
                seen[team] = await self._set(lane, team, n)
            for team, n in raises(cap, goal, seen).items():
                seen[team] = await self._set(lane, team, n)
            for team in delete:
                if await self._delete(lane, team):
                    del seen[team]
                    self.busy_at.pop((lane, team), None)
            lanes[lane] = {t: s.limit for t, s in seen.items()}
            giving_back = any(s.ack_pending > s.limit for s in seen.values())
            short = short or (giving_back and any(lanes[lane].get(t, 0) < g for t, g in goal.items()))
        plan = Plan(lanes=lanes)
        if plan != self.written:
            assert self.kv is not None
            await self.kv.put(plan_key(self.provider), encode(plan))
            self.written = plan
            log.debug("fair.plan", provider=self.provider, lanes=lanes)
        if short:
            return SHORT_TICK_S
        return TICK_S if any(want_by_lane.values()) else IDLE_TICK_S

    async def _set(self, lane: str, team: str, limit: int) -> Seen:
        """Create or update the team's consumer; the server's answer says what it holds now."""
        ci = await self.js.add_consumer(wire.DISPATCH_STREAM, pool_consumer_config(self.cfg, self.provider, lane, team, limit))
        return Seen(limit=limit, ack_pending=ci.num_ack_pending or 0, pending=ci.num_pending or 0)

    async def _delete(self, lane: str, team: str) -> bool:
        """Delete an idle team's consumer, paused first so that nothing can be delivered between
        our look and the delete (an ack to a deleted consumer would leave the job to run again)."""
        name = pool_consumer_config(self.cfg, self.provider, lane, team).durable_name
        assert name is not None
        until = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=PAUSE_S)
        try:
            await self.js.pause_consumer(wire.DISPATCH_STREAM, name, until.strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
            ci = await self.js.consumer_info(wire.DISPATCH_STREAM, name)
            if ci.num_ack_pending or ci.num_pending:
                await self.js.resume_consumer(wire.DISPATCH_STREAM, name)
                return False
            await self.js.delete_consumer(wire.DISPATCH_STREAM, name)
        except NotFoundError:
            pass
        return True

