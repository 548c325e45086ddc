"""Intent -> tier -> fallback chain. Pure: the broker's I/O shell acts on what this returns."""

from __future__ import annotations

from panelboard.schemas.config import Config
from panelboard.schemas.errors import InvalidJob, JobError, UnknownIntent
from panelboard.schemas.job import Hop, Job, Route


# Bits per weight; a model without a stated quantization is taken as served at full precision.
PRECISION = {"fp4": 4, "int4": 4, "fp6": 6, "fp8": 8, "int8": 8, "fp16": 16, "bf16": 16, "fp32": 32}
FULL = 16


def precise_enough(quantization: str | None, minimum: str | None) -> bool:
    if minimum is None:
        return True
    return PRECISION.get((quantization or "").lower(), FULL) >= PRECISION[minimum.lower()]


def tier_route(cfg: Config, tier: str) -> Route:
    t = cfg.tiers[tier]
    return Route(
        tier=tier,
        chain=tuple(
            Hop(model=link.model, provider=cfg.models[link.model].provider)
            for link in t.fallbacks
            if precise_enough(cfg.models[link.model].quantization, t.min_precision)
        ),
    )


def routes(cfg: Config) -> dict[str, Route]:
    """Every tier's route, built once per config rather than per job."""
    return {name: tier_route(cfg, name) for name in cfg.tiers}


def pinned_route(cfg: Config, model: str) -> Route:
    """A request whose `model` is a catalog id runs on that model alone (no fallback): the
    tier named in cost records is the first tier whose chain holds it, else `pinned`. A key's
    `--models` allow-list applies to it as to any chain."""
    tier = next((name for name, t in cfg.tiers.items() if any(link.model == model for link in t.fallbacks)), "pinned")
    return Route(tier=tier, chain=(Hop(model=model, provider=cfg.models[model].provider),))


def resolve(job: Job, cfg: Config, table: dict[str, Route] | None = None) -> Route | JobError:
    if job.request.model is not None and job.request.model in cfg.models:
        return pinned_route(cfg, job.request.model)
    intent = job.intent or cfg.default_intent
    if intent is None:
        return InvalidJob(
            message=f"job {job.id} has no intent",
            hint=f"tag the job with an intent ({', '.join(sorted(cfg.intents))}) or set default_intent in the config",
        )
    tier = cfg.intents.get(intent)
    if tier is None:
        return UnknownIntent(
            message=f"intent {intent!r} maps to no tier",
            hint=f"use one of: {', '.join(sorted(cfg.intents))}; or add it under intents in the config",
            intent=intent,
        )
    return (table or {}).get(tier) or tier_route(cfg, tier)
