"""Every way a job can fail, as one tagged union. Each member carries a hint: what to do.

    JobError
    ├── InvalidJob        the job could not be decoded or breaks the wire contract
    ├── UnknownIntent     the intent maps to no tier
    ├── BadKey            missing, unknown, revoked or expired virtual key
    ├── OverBudget        the team's remaining budget cannot cover the job's worst case
    ├── RateLimited       the key or team is over its RPM/TPM/in-flight limit
    ├── PromptTooLarge    the prompt does not fit any model of the tier
    ├── DeadlineExceeded  the job's deadline passed before it could start
    ├── Cancelled         cancelled (Client.cancel, `panelboard batch cancel`) before it started
    ├── ProviderError     a provider refused the request in a way retrying cannot fix
    ├── ResponseTooLarge  the provider's answer is too big to deliver as a result
    └── ChainExhausted    every hop of the fallback chain failed
"""

from __future__ import annotations

from typing import Literal, cast

import msgspec

ErrorKind = Literal[
    "invalid_job", "unknown_intent", "bad_key", "over_budget", "rate_limited", "prompt_too_large",
    "deadline_exceeded", "cancelled", "provider_error", "chain_exhausted", "response_too_large",
]


class _Err(msgspec.Struct, tag_field="kind", kw_only=True):
    message: str
    hint: str

    @property
    def kind(self) -> ErrorKind:
        """The member's tag, as it is written on the wire ("kind": "over_budget")."""
        # msgspec types every tag as str | int | None; ours are the strings of ErrorKind.
        return cast(ErrorKind, self.__struct_config__.tag)


class InvalidJob(_Err, tag="invalid_job"):
    pass


class UnknownIntent(_Err, tag="unknown_intent"):
    intent: str = ""


class BadKey(_Err, tag="bad_key"):
    pass


class OverBudget(_Err, tag="over_budget"):
    remaining_usd: float = 0.0


class RateLimited(_Err, tag="rate_limited"):
    retry_after_s: float = 0.0


class PromptTooLarge(_Err, tag="prompt_too_large"):
    prompt_tokens: int = 0


class DeadlineExceeded(_Err, tag="deadline_exceeded"):
    pass


class Cancelled(_Err, tag="cancelled"):
    pass


class ProviderError(_Err, tag="provider_error"):
    provider: str = ""
    status: int = 0


class ChainExhausted(_Err, tag="chain_exhausted"):
    pass


class ResponseTooLarge(_Err, tag="response_too_large"):
    size_bytes: int = 0
    limit_bytes: int = 0


JobError = (
    InvalidJob
    | UnknownIntent
    | BadKey
    | OverBudget
    | RateLimited
    | PromptTooLarge
    | DeadlineExceeded
    | Cancelled
    | ProviderError
    | ChainExhausted
    | ResponseTooLarge
)
