"""A job's error, or a refusal of the ingress itself, as each API's error JSON and status.

The status codes are the ones the official SDKs map to the matching exception (openai:
401 AuthenticationError, 429 RateLimitError, 400 BadRequestError, 404 NotFoundError, 5xx
InternalServerError; anthropic the same plus 402/413/529). `x-should-retry: false` tells
both SDKs not to retry what a retry cannot fix (a 5xx they would otherwise resend).
Pure: no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import msgspec

from panelboard.schemas import errors as e

Api = Literal["openai", "anthropic"]


@dataclass(frozen=True)
class HttpError:
    status: int
    message: str
    openai_type: str  # OpenAI's error.type
    code: str | None  # OpenAI's error.code (our error kind where there is no OpenAI one)
    anthropic_type: str
    headers: dict[str, str] = field(default_factory=dict)
    param: str | None = None
    anthropic_code: str | None = None  # error.details.error_code, which picks the anthropic SDK's subclass

    def body(self, api: Api) -> bytes:
        if api == "anthropic":
            err: dict[str, object] = {"type": self.anthropic_type, "message": self.message}
            if self.anthropic_code:
                err["details"] = {"error_code": self.anthropic_code}
            return msgspec.json.encode({"type": "error", "error": err})
        return msgspec.json.encode({"error": {"message": self.message, "type": self.openai_type, "param": self.param, "code": self.code}})


NO_RETRY = {"x-should-retry": "false"}


def bad_request(message: str, param: str | None = None, code: str = "invalid_request") -> HttpError:
    return HttpError(400, message, "invalid_request_error", code, "invalid_request_error", NO_RETRY, param)


def unauthorized(message: str) -> HttpError:
    return HttpError(401, message, "invalid_request_error", "invalid_api_key", "authentication_error", NO_RETRY)


def not_found(message: str, code: str = "not_found") -> HttpError:
    return HttpError(404, message, "invalid_request_error", code, "not_found_error", NO_RETRY)


def too_large(message: str) -> HttpError:
    return HttpError(413, message, "invalid_request_error", "request_too_large", "request_too_large", NO_RETRY)




def gateway_timeout(message: str) -> HttpError:
    return HttpError(504, message, "timeout", "deadline_exceeded", "api_error", NO_RETRY)


def _say(err: e._Err) -> str:
    return f"{err.message} (hint: {err.hint})"


def for_job_error(err: e._Err, api: Api) -> HttpError:
    """The HTTP answer to a Failed result's error."""
    text = _say(err)
    match err:
        case e.BadKey():
            return unauthorized(text)
        case e.InvalidJob():
            return bad_request(text, code="invalid_job")
        case e.UnknownIntent():
            return bad_request(text, param="model", code="unknown_intent")
        case e.OverBudget():
            # A spent budget is OpenAI's 429 `insufficient_quota` and Anthropic's 429
            # `enforced_spend_limit_reached` (RateLimitError, EnforcedSpendLimitReachedError):
            # neither SDK may retry it.
            return HttpError(429, text, "insufficient_quota", "insufficient_quota", "rate_limit_error", NO_RETRY,
                             anthropic_code="enforced_spend_limit_reached")
        case e.RateLimited():
            wait = max(err.retry_after_s, 0.0)
            headers = {"retry-after": str(max(1, math.ceil(wait))), "retry-after-ms": str(int(wait * 1000))}
            return HttpError(429, text, "requests", "rate_limit_exceeded", "rate_limit_error", headers)
        case e.PromptTooLarge():
            return HttpError(413, text, "invalid_request_error", "context_length_exceeded", "request_too_large", NO_RETRY)
        case e.DeadlineExceeded():
            return gateway_timeout(text)
        case e.Cancelled():
            return HttpError(409, text, "invalid_request_error", "cancelled", "invalid_request_error", NO_RETRY)
        case e.ProviderError():
            # A provider's refusal is passed through with its own status (a 4xx the caller
            # must fix); anything else it said is a bad gateway.
            status = err.status if 400 <= err.status < 500 else 502
            kind = "invalid_request_error" if status < 500 else "api_error"
            return HttpError(status, text, kind, "provider_error", kind, NO_RETRY)
        case e.ChainExhausted():
            return HttpError(502, text, "api_error", "chain_exhausted", "api_error", NO_RETRY)
        case e.ResponseTooLarge():
            return HttpError(502, text, "api_error", "response_too_large", "api_error", NO_RETRY)
    return HttpError(502, text, "api_error", "job_failed", "api_error", NO_RETRY)
