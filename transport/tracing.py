"""OpenTelemetry spans along a job's path (submit, admission, each dispatch hop and provider
call, result), their context carried across NATS hops in the W3C `traceparent` header.

Off unless configured, and then free: nothing here imports OpenTelemetry until a process
configures it (`configure`, from OTEL_EXPORTER_OTLP_ENDPOINT / ..._TRACES_ENDPOINT, or
PANELBOARD_TRACES_FILE for JSON lines) or an application installs its own SDK tracer provider
before using the SDK; every call below is one dictionary lookup when tracing is off.
"""

from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager, nullcontext
from typing import Any, ContextManager, Iterator

FILE_ENV = "PANELBOARD_TRACES_FILE"
_NAME = "panelboard"


def on() -> bool:
    """A real tracer provider is installed (ours or the application's)."""
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None:
        return False
    return type(trace.get_tracer_provider()).__name__ not in ("ProxyTracerProvider", "NoOpTracerProvider")


def configure(service: str) -> bool:
    """Install an SDK tracer provider when the environment asks for an exporter; True if so."""
    otlp = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    path = os.environ.get(FILE_ENV)
    if not (otlp or path):
        return False
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", service)}))
    if otlp:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))  # reads the OTEL_* variables itself
    if path:
        out = open(path, "a", buffering=1)  # one JSON span per line, written as each span ends
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(out=out, formatter=lambda s: s.to_json(indent=None) + "\n")))
    trace.set_tracer_provider(provider)
    return True


def _tracer() -> Any:
    from opentelemetry import trace

    return trace.get_tracer(_NAME)


def _parent(headers: dict[str, str] | None) -> Any:
    from opentelemetry.propagate import extract

    return extract(headers or {})


def inject(headers: dict[str, str]) -> dict[str, str]:
    """The current span's context into a message's headers (unchanged when tracing is off)."""
    if on():
        from opentelemetry.propagate import inject as _inject

        _inject(headers)
    return headers


def submitted(headers: dict[str, str], team: str, job_id: str) -> dict[str, str]:
    """The SDK's side: a `submit` span (under the application's current span, if any) whose
    context rides the job's headers."""
    if on():
        with _tracer().start_as_current_span("submit", attributes={"panelboard.team": team, "panelboard.job": job_id}):
            inject(headers)
    return headers


@contextmanager
def _consumer_span(name: str, headers: dict[str, str] | None, attributes: dict[str, Any]) -> Iterator[None]:
    with _tracer().start_as_current_span(name, context=_parent(headers), attributes=attributes):
        yield


def admission(msg: Any) -> ContextManager[None]:
    """Around the broker's handling of one job: what it publishes carries this span."""
    if not on():
        return nullcontext()
    return _consumer_span("admission", msg.headers, {"messaging.destination.name": msg.subject})


def hop(msg: Any, provider: str) -> ContextManager[None]:
    """Around a pool's handling of one dispatch (one hop of the chain)."""
    if not on():
        return nullcontext()
    return _consumer_span("dispatch", msg.headers, {"panelboard.provider": provider, "messaging.destination.name": msg.subject})


def called(provider: str, model: str, outcome: Any) -> None:
    """The provider call just made, as a child of the current hop (timed from its latency)."""
    if not on():
        return
    end = time.time_ns()
    span = _tracer().start_span("provider.call", start_time=end - int(outcome.latency_ms * 1e6),
                                attributes={"panelboard.provider": provider, "panelboard.model": model,
                                            "panelboard.outcome": type(outcome).__name__})
    span.end(end_time=end)


def mark(name: str, **attributes: Any) -> None:
    """An instant step (a published result) as a span of its own under the current one."""
    if on():
        _tracer().start_span(name, attributes={f"panelboard.{k}": v for k, v in attributes.items()}).end()
