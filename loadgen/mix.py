"""A realistic traffic mix: the article's ~70% of requests that never needed a frontier model
(extraction, classification, summarisation) and ~30% reasoning and planning."""

from __future__ import annotations

import random

from panelboard.schemas.chat import ChatRequest, Message

# (intent, share, max_tokens, prompt templates)
MIX: list[tuple[str, float, int, list[str]]] = [
    ("extraction", 0.30, 256, [
        "Extract the invoice number, total and due date as JSON from: Invoice #{n} total ${m}.00 due 2026-12-{d:02d}.",
        "Pull every email address out of this text: contact ops{n}@example.com or billing{m}@example.org.",
    ]),
    ("classification", 0.25, 16, [
        "Classify this support ticket as billing, bug or feature request: 'I was charged twice for order {n}.'",
        "Is this review positive, negative or neutral? 'The delivery took {d} days but the product is fine.'",
    ]),
    ("summarisation", 0.15, 400, [
        "Summarise this meeting transcript in three bullet points: " + "We discussed the Q{d} roadmap and item {n}. " * 20,
        "Write a two-sentence summary of this incident report: service {n} degraded for {m} minutes. " * 6,
    ]),
    ("reasoning", 0.18, 1200, [
        "A warehouse ships {n} parcels a day with {m} trucks; each truck makes {d} trips. Plan the cheapest schedule step by step and justify it.",
        "Prove or refute: for every integer n > {d}, n^2 + n + {m} is composite. Reason carefully.",
    ]),
    ("planning", 0.12, 1500, [
        "You are an agent. Plan the steps to migrate service {n} from Postgres {d} to {m}, with rollback points and risks.",
        "Design the architecture for a job queue handling {n} requests per second with {d} regions; list trade-offs.",
    ]),
]


def sample(n: int, seed: int = 7) -> list[tuple[str, ChatRequest]]:
    rng = random.Random(seed)
    intents = [m[0] for m in MIX]
    weights = [m[1] for m in MIX]
    table = {m[0]: m for m in MIX}
    out = []
    for i in range(n):
        intent = rng.choices(intents, weights)[0]
        _, _, max_tokens, templates = table[intent]
        text = rng.choice(templates).format(n=i, m=rng.randint(10, 999), d=rng.randint(1, 28))
        out.append((intent, ChatRequest(messages=[Message(role="user", content=text)], max_tokens=max_tokens)))
    return out
