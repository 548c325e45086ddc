"""Budgets: a job's worst-case cost, the reservation decision, and settlement arithmetic. Pure.

Money is integer nano-dollars, as in the ledger, so that sums are exact on every database.

    estimate(job, route, cfg) -> Estimate            the most a job can cost (and use, in tokens)
    reserve(budget, amount, now) -> Reserved | OverBudget
    reserve_all(budgets, live, shadow, now) -> Plan | OverBudget   a job and its shadow mirror
    settle_cost(ticket, cost, tokens, terminal) / settle_done(ticket) -> (Ticket, Delta)
    settle_shadow_cost(ticket, cost, terminal)                  the mirror's own reservation

A budget holds while `spent + reserved + amount <= limit` is checked and the reservation
taken in one atomic step (broker/governance_store.py does it in one SQL transaction, under
the budget row's lock); the settlement arithmetic here moves each job's reservation into
`spent` as its real cost arrives, and releases what is left when it ends.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Literal

import msgspec

from panelboard.schemas.config import Config
from panelboard.schemas.errors import OverBudget
from panelboard.schemas.job import Job, Route

NANO = 1_000_000_000
Period = Literal["none", "daily", "monthly"]
# An image's tokens follow from its pixels, which admission never fetches: the most gpt-4o's high
# detail (8 tiles x 170 + 85) or Anthropic (~1,600 at 1.15 megapixels) charge for one. (Mini models
# count more tokens per tile at a price cut to match, so the dollars stay near this bound.)
IMAGE_TOKENS = 1_600
MESSAGE_OVERHEAD_TOKENS = 4  # role and separators per message, as chat templates add them
REQUEST_OVERHEAD_TOKENS = 3

_encode = msgspec.json.encode


def usd(nano: int) -> float:
    return nano / NANO


def to_nano(amount_usd: float) -> int:
    return round(amount_usd * NANO)


# -- periods ----------------------------------------------------------------------------------
def period_key(period: Period, now: float) -> str:
    """Which period `now` falls in (UTC): a budget's spend resets when this changes."""
    if period == "none":
        return ""
    d = datetime.fromtimestamp(now, timezone.utc)
    return d.strftime("%Y-%m-%d") if period == "daily" else d.strftime("%Y-%m")


def period_end(period: Period, now: float) -> datetime | None:
    if period == "none":
        return None
    d = datetime.fromtimestamp(now, timezone.utc)
    if period == "daily":
        start = datetime(d.year, d.month, d.day, tzinfo=timezone.utc)
        return datetime.fromtimestamp(start.timestamp() + 86_400, timezone.utc)
    return datetime(d.year + (d.month == 12), d.month % 12 + 1, 1, tzinfo=timezone.utc)


# -- the worst case -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Estimate:
    cost_nano: int  # the most this job can cost: reserved before dispatch
    tokens: int  # prompt + the most output it may ask for: counted against TPM until settled
    prompt_tokens: int
    output_tokens: int
    model: str  # the hop that makes it the worst case


def prompt_tokens(job: Job, bytes_per_token: float = 1.0) -> int:
    """An upper bound on the prompt's tokens: at 1.0 byte per token, no byte-level BPE
    tokenizer produces more. Tools, tool calls, response formats and passed-through fields are
    billed as prompt tokens too; an image part at IMAGE_TOKENS (its URL or base64 data is not
    what the model reads), audio and files by the bytes of their data."""
    if job.embeddings is not None:
        return math.ceil(job.embeddings.input_bytes() / bytes_per_token) + REQUEST_OVERHEAD_TOKENS
    req = job.request
    n = sum(len(m.text().encode()) for m in req.messages)
    images = 0
    for m in req.messages:
        if m.tool_calls:
            n += len(_encode(m.tool_calls))
        if isinstance(m.content, list):
            for p in m.content:
                if p.image_url is not None:
                    images += 1
                elif p.input_audio is not None:
                    n += len(p.input_audio.data)
                elif p.file is not None:
                    n += len(p.file.file_data or "")
    if req.passthrough:
        n += len(_encode(req.passthrough))
    if req.tools:
        n += len(_encode(req.tools))
    if req.response_format:
        n += len(_encode(req.response_format))
    return math.ceil(n / bytes_per_token) + IMAGE_TOKENS * images + MESSAGE_OVERHEAD_TOKENS * len(req.messages) + REQUEST_OVERHEAD_TOKENS


def estimate(job: Job, route: Route, cfg: Config, bytes_per_token: float = 1.0) -> Estimate:
    """The job's worst case over its chain: any hop may be the one that answers, so the
    dearest one prices it, with `max_tokens` or (when unset) that model's output cap. (Under
    governance admission sets max_tokens first: see admission.bound.)"""
    pt = prompt_tokens(job, bytes_per_token)
    best: Estimate | None = None
    for hop in route.chain:
        m = cfg.models[hop.model]
        out = 0 if job.embeddings is not None else (cap if (cap := job.request.output_cap()) is not None else m.max_output_tokens) * (job.request.n or 1)
        # Ceil to the nano-dollar: a reservation never falls short of the catalog price.
        # ($/M x tokens) x 1e9 / 1e6; rounded to 1e-3 nano first so float noise never adds one.
        cost = math.ceil(round((pt * m.input_per_m + out * m.output_per_m) * 1000, 3))
        if best is None or cost > best.cost_nano or (cost == best.cost_nano and pt + out > best.tokens):
            best = Estimate(cost_nano=cost, tokens=pt + out, prompt_tokens=pt, output_tokens=out, model=hop.model)
    assert best is not None, "a route has at least one hop"
    return best


# -- reservation ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Budget:
    """A team's or a key's budget row, as admission reads it."""

    owner: str  # "team default" or "key pb_ab12c": for messages
    limit_nano: int | None  # None: no budget (limits may still apply)
    period: Period = "none"
    period_key: str = ""
    spent_nano: int = 0
    reserved_nano: int = 0
    soft_nano: int | None = None
    soft_alerted: str | None = None  # the period_key in which the soft alert last fired

    def rolled(self, now: float) -> "Budget":
        """The same budget in the period `now` falls in: spend restarts at zero each period.
        Reservations of jobs still running stay: their cost lands in the new period."""
        pk = period_key(self.period, now)
        return self if pk == self.period_key else replace(self, period_key=pk, spent_nano=0)

    def remaining_nano(self) -> int | None:
        return None if self.limit_nano is None else self.limit_nano - self.spent_nano - self.reserved_nano


@dataclass(frozen=True)
class Reserved:
    before: Budget | None  # rolled into the current period
    after: Budget | None
    amount_nano: int
    soft_crossed: bool = False  # the soft limit was crossed now, for the first time this period


def _describe(b: Budget, now: float) -> str:
    if b.period == "none":
        return f"${usd(b.limit_nano or 0):.4f} budget"
    end = period_end(b.period, now)
    return f"${usd(b.limit_nano or 0):.4f} {b.period} budget (resets {end:%Y-%m-%d %H:%M} UTC)"


def reserve(budget: Budget | None, amount_nano: int, now: float, what: str = "this job") -> Reserved | OverBudget:
    """Take `amount_nano` out of what the budget has left, or refuse. The SQL update that
    enforces it across brokers applies the very same condition."""
    if budget is None:
        return Reserved(before=None, after=None, amount_nano=amount_nano)
    b = budget.rolled(now)
    left = b.remaining_nano()
    if left is not None and amount_nano > left:
        shown = max(left, 0)
        return OverBudget(
            message=f"{b.owner} has ${usd(shown):.6f} left of its {_describe(b, now)}; {what} may cost up to ${usd(amount_nano):.6f}",
            hint=(f"remaining budget ${usd(shown):.6f}: lower max_tokens, use a cheaper intent, wait for running jobs to settle"
                  + (" or for the period to reset" if b.period != "none" else "") + ", or ask an operator to raise the budget"
                  + (f" (panelboard teams set {b.owner.removeprefix('team ')} --budget-usd ...)" if b.owner.startswith("team ") else "")),
            remaining_usd=usd(shown),
        )
    after = replace(b, reserved_nano=b.reserved_nano + amount_nano)
    crossed = (b.soft_nano is not None and after.spent_nano + after.reserved_nano > b.soft_nano
               and b.soft_alerted != b.period_key)
    if crossed:
        after = replace(after, soft_alerted=b.period_key)
    return Reserved(before=b, after=after, amount_nano=amount_nano, soft_crossed=crossed)


@dataclass(frozen=True)
class Plan:
    """What admission takes from each budget (the key's, the team's): one amount for the job
    and its shadow mirror together, so that both are reserved in one transaction or neither."""

    reserved: tuple[Reserved | None, ...]
    live_nano: int
    shadow_nano: int  # 0: no mirror (none sampled, or it did not fit)

    @property
    def amount_nano(self) -> int:
        return self.live_nano + self.shadow_nano


def reserve_all(owners: list[Budget | None], live_nano: int, shadow_nano: int, now: float, what: str = "this job") -> Plan | OverBudget:
    """A budget covers everything charged to its owner, shadow calls included: the job's worst
    case and its mirror's are reserved together. A mirror that does not fit is dropped, the job
    still runs: an operator's experiment never refuses a client's job."""
    if shadow_nano:
        both = [reserve(b, live_nano + shadow_nano, now, what) if b is not None else None for b in owners]
        if not any(isinstance(r, OverBudget) for r in both):
            return Plan(reserved=tuple(both), live_nano=live_nano, shadow_nano=shadow_nano)  # type: ignore[arg-type]
    alone = [reserve(b, live_nano, now, what) if b is not None else None for b in owners]
    for r in alone:
        if isinstance(r, OverBudget):
            return r
    return Plan(reserved=tuple(alone), live_nano=live_nano, shadow_nano=0)  # type: ignore[arg-type]


# -- settlement -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Ticket:
    """One admitted job: what it reserved, what its calls have cost so far, whether it ended."""

    reserved_nano: int
    est_tokens: int
    consumed_nano: int = 0
    used_tokens: int = 0
    done: bool = False

    def holds_nano(self) -> int:
        """What this job still holds of its budget's `reserved`."""
        return 0 if self.done else max(self.reserved_nano - self.consumed_nano, 0)

    def window_tokens(self) -> int:
        """What it counts in its TPM window: the estimate while it runs, then the real tokens."""
        return self.used_tokens if self.done else max(self.est_tokens, self.used_tokens)


@dataclass(frozen=True)
class Delta:
    """What one event changes on the job's budget rows and rate window."""

    spent_nano: int = 0  # everything charged, shadow calls included: what the budget holds
    reserved_nano: int = 0
    window_tokens: int = 0
    inflight: int = 0
    shadow_spent_nano: int = 0  # the shadow calls' part of spent_nano, for reports

    def __add__(self, o: "Delta") -> "Delta":
        return Delta(self.spent_nano + o.spent_nano, self.reserved_nano + o.reserved_nano,
                     self.window_tokens + o.window_tokens, self.inflight + o.inflight, self.shadow_spent_nano + o.shadow_spent_nano)


def _delta(before: Ticket, after: Ticket, spent: int) -> Delta:
    return Delta(
        spent_nano=spent,
        reserved_nano=after.holds_nano() - before.holds_nano(),
        window_tokens=after.window_tokens() - before.window_tokens(),
        inflight=-1 if after.done and not before.done else 0,
    )


def settle_cost(t: Ticket, cost_nano: int, tokens: int, terminal: bool) -> tuple[Ticket, Delta]:
    """A provider call's real cost replaces that much of the reservation. `terminal`: the call
    that answered the job (its cost record says ok), which ends it and releases the rest.
    The result does not depend on the order events arrive in."""
    after = replace(t, consumed_nano=t.consumed_nano + cost_nano, used_tokens=t.used_tokens + tokens, done=t.done or terminal)
    return after, _delta(t, after, cost_nano)


def settle_done(t: Ticket) -> tuple[Ticket, Delta]:
    """The job ended without an answer (a Failed result): release what it still holds."""
    after = replace(t, done=True)
    return after, _delta(t, after, 0)


def settle_shadow_cost(t: Ticket, cost_nano: int, terminal: bool) -> tuple[Ticket, Delta]:
    """A shadow call's cost replaces its mirror's reservation (the ticket is the shadow part of
    the admission); its ok call ends the mirror's chain. Shadow calls count toward spend only:
    not the client's rate window, not its jobs in flight."""
    after = replace(t, consumed_nano=t.consumed_nano + cost_nano, done=t.done or terminal)
    return after, Delta(spent_nano=cost_nano, reserved_nano=after.holds_nano() - t.holds_nano(), shadow_spent_nano=cost_nano)


def settle_shadow_done(t: Ticket) -> tuple[Ticket, Delta]:
    """The mirror's chain ended without an answer: release what it still holds."""
    after = replace(t, done=True)
    return after, Delta(reserved_nano=after.holds_nano() - t.holds_nano())
