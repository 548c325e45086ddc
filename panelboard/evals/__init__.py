"""Offline evaluation of routing decisions: replay labelled prompts through the broker's
routing decision (no provider calls) and score the cost/quality trade-off against baselines."""
