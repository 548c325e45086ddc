"""Files and Batches (OpenAI) and Message Batches (Anthropic) on panelboard's batch machinery."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from panelboard.ingress.app import Ingress


def add_routes(app: web.Application, ing: "Ingress") -> None:
    pass
