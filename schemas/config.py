"""The configuration file, decoded into typed Structs. Unknown fields are errors here:
a typo in a config file should fail loudly, unlike wire messages."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec


# Subclasses repeat frozen=True: msgspec inherits it, but type checkers read each class alone.
class Base(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, kw_only=True, frozen=True):
    pass


Duration = Annotated[str, msgspec.Meta(pattern=r"^[0-9]+(ms|s|m|h|d)$")]


class BatchLane(Base, frozen=True):
    """A provider's (or model's) batch API: about half price, answers within its window.
    Jobs whose deadline leaves room ride it (see broker/lanes.py, workers/batch_lane.py)."""

    api: Literal["openai", "anthropic"]  # the API shape: OpenAI Files + Batches, or Anthropic Message Batches
    discount: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.5  # share of list price billed
    completion_window: Duration = "24h"  # the provider's window, as its API spells it
    max_requests: Annotated[int, msgspec.Meta(ge=1, le=50_000)] = 50_000  # per provider batch
    max_bytes: Annotated[int, msgspec.Meta(ge=1)] = 200 * 1024 * 1024  # of its uploaded JSONL file
    linger_s: Annotated[float, msgspec.Meta(gt=0)] = 60.0  # a partial batch is sent once its oldest job waited this long
    # A job without lane: batch rides the lane when its deadline is at least this far off.
    min_slack_s: Annotated[float, msgspec.Meta(ge=0)] = 3_600.0
    # A provider batch still running this long before the earliest deadline it holds is
    # cancelled and its jobs go realtime: time for a realtime call (and its retries).
    reserve_s: Annotated[float, msgspec.Meta(gt=0)] = 600.0
    poll_s: Annotated[float, msgspec.Meta(gt=0)] = 5.0  # first poll; doubled up to max_poll_s
    max_poll_s: Annotated[float, msgspec.Meta(gt=0)] = 300.0
    lease_s: Annotated[float, msgspec.Meta(gt=0)] = 15.0  # a dead owner's batches are taken over after this


class FlexLane(Base, frozen=True):
    """A cheaper synchronous tier (OpenAI's `service_tier: flex`): batch prices, slower answers,
    and 429 "resource unavailable" when it has no capacity, which moves the job to the standard
    tier of the same hop, not along the chain."""

    discount: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.5
    timeout_ms: Annotated[int, msgspec.Meta(gt=0)] = 900_000  # flex answers can take minutes
    min_slack_s: Annotated[float, msgspec.Meta(ge=0)] = 3_600.0  # as the batch lane's


class Provider(Base, frozen=True):
    api: Literal["openai", "anthropic"]
    base_url: str
    api_key: str | None = None  # "env:NAME"; the secret itself never sits in the file
    max_concurrency: int = 32
    timeout_ms: int = 60_000
    # How long the server waits for a worker's ack before redelivering: how long a killed
    # worker's deliveries stay frozen. Default 6 s; heartbeats keep long calls alive.
    ack_wait_ms: int | None = None
    # Priority lanes. None: one lane, batch and interactive jobs share every slot in FIFO
    # order. A share (0 < s < 1): batch jobs may hold only that share of max_concurrency;
    # the rest is kept for interactive jobs, which are then never stuck behind a batch.
    batch_share: float | None = None
    headers: dict[str, str] = {}
    # Pace calls by the provider's rate-limit headers (x-ratelimit-*, anthropic-ratelimit-*),
    # so a spent window waits for its reset instead of meeting a 429 (workers/pacing.py).
    pacing: bool = True
    # Concurrency adapts per worker process between min_concurrency (None: max_concurrency / 8,
    # at least 1) and max_concurrency: +1 after as many successes as the limit, halved on a
    # 429, 5xx or timeout. max_concurrency stays the hard ceiling across every process.
    adaptive_concurrency: bool = True
    min_concurrency: Annotated[int, msgspec.Meta(ge=1)] | None = None
    batch: BatchLane | None = None  # the provider's batch API, for every model it serves
    flex: FlexLane | None = None  # its flex tier, for deferrable jobs where no batch lane is declared


class Model(Base, frozen=True):
    provider: str
    model: str  # the provider's own model id
    input_per_m: float  # USD per million prompt tokens
    output_per_m: float  # USD per million completion tokens
    # USD per million prompt tokens read from the provider's prompt cache (OpenAI: half or a
    # tenth of input; Anthropic: a tenth) and written to it (Anthropic: 1.25 x input). None:
    # the input price.
    cached_input_per_m: float | None = None
    cache_write_per_m: float | None = None
    quantization: str | None = None  # e.g. fp8, fp4: cheap hosts often serve quantized builds
    context_window: int = 128_000
    max_output_tokens: int = 4_096
    batch: BatchLane | None = None  # overrides the provider's batch lane for this model


class RetryPolicy(Base, frozen=True):
    max_retries: int = 2  # retries on the same hop, after the first attempt
    backoff: Literal["exponential", "constant"] = "exponential"
    base_ms: int = 500
    max_delay_ms: int = 30_000
    jitter: float = 0.2  # +/- fraction of the delay


class Link(Base, frozen=True):
    """One hop. `model` names a catalog entry; the article's primary/secondary/tertiary
    spelling is normalised to `model` by the loader."""

    model: str
    on: list[str] = msgspec.field(default_factory=lambda: ["429", "5xx", "timeout"])  # what moves the job on
    note: str | None = None
    # Choice among equals (broker/strategies.py): links of one tier that share a group name are
    # deployments of the same model; the tier's strategy orders them within the positions they
    # hold in the chain, so the chosen one goes first and the others stay as its fallbacks.
    group: str | None = None
    weight: float | None = None  # simple-shuffle: relative share of first picks (LiteLLM's `weight`)


Strategy = Literal["simple-shuffle", "least-busy", "usage-based", "latency-based", "cost-based", "cost-latency"]


class Shadow(Base, frozen=True):
    """Mirror a sample of a tier's jobs to a candidate tier: the shadow call is made and
    billed (cost records flagged shadow), its answer never reaches the client. The article's
    "deploy a gateway in shadow mode" step; `panelboard report shadow` compares the two."""

    tier: str
    sample: float = 0.1


class Tier(Base, frozen=True):
    fallbacks: list[Link]
    retry_policy: RetryPolicy = RetryPolicy()
    # Skip hops serving a coarser build than this (fp4 < fp8 < bf16): the article's warning
    # that cheap hosts often serve quantized variants of "the same" model.
    min_precision: str | None = None
    # How a group of equal links is ordered per job (LiteLLM's names, plus our default
    # cost-latency: price with a P95 penalty and in-flight load). None: cost-latency.
    strategy: Strategy | None = None
    shadow: Shadow | None = None


Cap = Annotated[int, msgspec.Meta(ge=-1)]  # a stream limit; -1: none


class NatsSettings(Base, frozen=True):
    url: str | None = None  # None: start an embedded nats-server
    replicas: int = 1
    dedupe_window_s: int = 1_200
    results_ttl_s: int = 86_400
    # Every rejected job leaves a dead letter (with up to 64 KiB of its raw payload), so a
    # flood of bad input could fill the disk: PB_DEAD keeps at most this much, oldest
    # letters dropped first. PB_RESULTS (a Failed result per rejected job) has none by
    # default: dropping results could strand a client; results_ttl_s bounds it in time.
    dead_max_bytes: Cap = 1 << 30
    dead_max_msgs: Cap = 1_000_000
    results_max_bytes: Cap = -1
    results_max_msgs: Cap = -1
    # The embedded nats-server's sync_interval: None keeps its default (fsync every 2 min,
    # so a host crash or power cut can lose up to that much acked data); "always" fsyncs
    # every write before it is acked (slower publishes); or a duration such as "1s".
    sync: Annotated[str, msgspec.Meta(pattern=r"^(always|[0-9]+(ms|s|m|h))$")] | None = None


class DatabaseSettings(Base, frozen=True):
    # The cost ledger: sqlite+aiosqlite:///path.db or postgresql+asyncpg://user@host/db.
    # $PANELBOARD_DATABASE_URL overrides it; with neither, a SQLite file in the stack's home.
    url: str | None = None


class Tenant(Base, frozen=True):
    """A team's NATS user in a multi-team deployment (see panelboard/tenants.py)."""

    password: str  # env:NAME: the secret itself never sits in the file
    # Ignored (kept so older config files load): results are addressed by team,
    # pb.results.<team>.<job>, whatever client id a process of the team uses.
    clients: list[str] = []


class Team(Base, frozen=True):
    """A team's place in fair share: when a provider's lane is saturated, its slots go to the
    teams with queued jobs in proportion to their weights (workers/fair.py). A team not named
    here has weight 1."""

    weight: Annotated[float, msgspec.Meta(gt=0)] = 1.0


class Governance(Base, frozen=True):
    """Admission control. Off by default: on with `require_keys: true`, or (auto) as soon as
    the database holds a virtual key (`panelboard keys create`)."""

    require_keys: bool | None = None  # None: on once a key exists; false: never
    # Larger jobs fail with PromptTooLarge before they are decoded. Below NATS' 1 MiB default
    # max_payload, so that the dispatch envelope around an accepted job always fits.
    max_job_bytes: Annotated[int, msgspec.Meta(gt=0)] = 524_288
    max_json_depth: Annotated[int, msgspec.Meta(ge=2)] = 64  # deeper JSON (metadata, tools...) fails with InvalidJob
    # Prompt tokens are reserved at one token per this many UTF-8 bytes. 1.0 bounds byte-level
    # BPE tokenizers from above (a budget never overspends); ~4 is typical English text.
    bytes_per_token: Annotated[float, msgspec.Meta(gt=0)] = 1.0
    max_wait_s: float = 600.0  # an on_limit=wait job waits at most this long, then RateLimited
    refresh_s: Annotated[float, msgspec.Meta(gt=0)] = 5.0  # how often a broker in auto mode looks for the first key
    # Jobs whose reservation was never settled (lost terminal) are released after this.
    reservation_ttl_s: float = 86_400.0
    tenants: dict[str, Tenant] = {}  # per-team NATS users; the embedded server enforces them


class HealthThresholds(Base, frozen=True):
    """Per-provider or per-model overrides of the global health thresholds."""

    p95_ms: float | None = None
    error_rate: float | None = None


class HealthSettings(Base, frozen=True):
    """Layer 2, latency-based failover (broker/health.py): a rolling P95 and error rate per
    provider and model over a sliding window of cost records; a hop past a threshold is marked
    degraded and moved behind the healthy hops of its chain, with a probe share of jobs still
    sent to it, until it has stayed healthy for `cooldown_s`."""

    enabled: bool = True
    p95_ms: float = 5_000.0  # degraded when the window's P95 latency is above this...
    error_rate: float = 0.25  # ...or when this share of its calls failed (429, 5xx, timeout)
    min_calls: int = 20  # calls in the window before a healthy hop is judged at all
    min_probe_calls: int = 5  # calls in the window before a degraded hop can count as recovered
    window_s: float = 60.0
    bucket_s: float = 10.0  # the window slides by whole buckets
    cooldown_s: float = 30.0  # a degraded hop must stay healthy this long to be restored
    probe_share: float = 0.05  # share of jobs that still try a degraded hop first
    publish_s: float = 2.0  # how often the aggregator re-assesses and writes PB_HEALTH
    # Keyed by catalog model name or provider name (the model's entry wins).
    overrides: dict[str, HealthThresholds] = {}


class RouterSettings(Base, frozen=True):
    """Difficulty-aware choice within a tier pair (broker/difficulty.py), opt-in: a job whose
    route is either tier of the pair goes to `strong` when the trained model's score is at or
    above `threshold`, else to `cheap`. Train the model with `panelboard eval train`."""

    model: str  # the trained model's JSON file (relative paths: from the working directory)
    cheap: str
    strong: str
    kind: Literal["logistic", "knn"] = "logistic"  # logistic: lexical, pure Python (JSON); knn: MiniLM, numpy (.npz)
    threshold: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] | None = None  # None: the model's own


class Config(Base, frozen=True):
    providers: dict[str, Provider]
    models: dict[str, Model]
    tiers: dict[str, Tier]
    intents: dict[str, str]
    default_intent: str | None = None
    # A job with no intent and no default_intent is classified from its request
    # (broker/classify.py): "rules" by default; "off" rejects it with InvalidJob instead.
    classifier: Literal["rules", "off"] = "rules"
    router: RouterSettings | None = None  # None: the intent map alone decides the tier
    nats: NatsSettings = NatsSettings()
    database: DatabaseSettings = DatabaseSettings()
    governance: Governance = Governance()
    teams: dict[str, Team] = {}  # fair-share weights (Team.weight); unnamed teams weigh 1
    health: HealthSettings = HealthSettings()
