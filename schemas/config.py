"""The configuration file, decoded into typed Structs. Unknown fields are errors here:
a typo in a config file should fail loudly, unlike wire messages."""

from __future__ import annotations

from typing import Literal

import msgspec


class Base(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, kw_only=True, frozen=True):
    pass


class Provider(Base):
    api: Literal["openai", "anthropic"]
    base_url: str
    api_key: str | None = None  # "env:NAME"; the secret itself never sits in the file
    max_concurrency: int = 32
    timeout_ms: int = 60_000
    # How long the server waits for a worker's ack before redelivering. Defaults to the
    # timeout plus 30 s; heartbeats keep long calls alive either way.
    ack_wait_ms: int | None = None
    # Priority lanes. None: one lane, batch and interactive jobs share every slot in FIFO
    # order. A share (0 < s < 1): batch jobs may hold only that share of max_concurrency;
    # the rest is kept for interactive jobs, which are then never stuck behind a batch.
    batch_share: float | None = None
    headers: dict[str, str] = {}


class Model(Base):
    provider: str
    model: str  # the provider's own model id
    input_per_m: float  # USD per million prompt tokens
    output_per_m: float  # USD per million completion tokens
    quantization: str | None = None  # e.g. fp8, fp4: cheap hosts often serve quantized builds
    context_window: int = 128_000
    max_output_tokens: int = 4_096


class RetryPolicy(Base):
    max_retries: int = 2  # retries on the same hop, after the first attempt
    backoff: Literal["exponential", "constant"] = "exponential"
    base_ms: int = 500
    max_delay_ms: int = 30_000
    jitter: float = 0.2  # +/- fraction of the delay


class Link(Base):
    """One hop. `model` names a catalog entry; the article's primary/secondary/tertiary
    spelling is normalised to `model` by the loader."""

    model: str
    on: list[str] = msgspec.field(default_factory=lambda: ["429", "5xx", "timeout"])  # what moves the job on
    note: str | None = None


class Tier(Base):
    fallbacks: list[Link]
    retry_policy: RetryPolicy = RetryPolicy()
    # Skip hops serving a coarser build than this (fp4 < fp8 < bf16): the article's warning
    # that cheap hosts often serve quantized variants of "the same" model.
    min_precision: str | None = None


class NatsSettings(Base):
    url: str | None = None  # None: start an embedded nats-server
    replicas: int = 1
    dedupe_window_s: int = 1_200
    results_ttl_s: int = 86_400


class DatabaseSettings(Base):
    # The cost ledger: sqlite+aiosqlite:///path.db or postgresql+asyncpg://user@host/db.
    # $PANELBOARD_DATABASE_URL overrides it; with neither, a SQLite file in the stack's home.
    url: str | None = None


class Config(Base):
    providers: dict[str, Provider]
    models: dict[str, Model]
    tiers: dict[str, Tier]
    intents: dict[str, str]
    default_intent: str | None = None
    nats: NatsSettings = NatsSettings()
    database: DatabaseSettings = DatabaseSettings()
