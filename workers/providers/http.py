"""The workers' HTTP transport: httpx's transport interface over one pooled aiohttp session,
with a short path for the one shape the hot path sends (a buffered POST, a buffered answer).

httpx-aiohttp's AiohttpTransport keeps httpx's API without the default transport's collapse
at hundreds of requests in flight, but each call through it builds an httpx.Request (headers
normalised, URL parsed), converts it for aiohttp, and wraps the answer in a streaming
httpx.Response read back through httpx's decoders: ~0.1 ms CPU a call over raw aiohttp
(BENCHMARKS.md, issue 14). `post` skips those layers; streamed calls and any httpx client
handed this transport still take `handle_async_request`, on the same session.
"""

from __future__ import annotations

import httpx
from aiohttp import ClientSession, ClientTimeout
from httpx_aiohttp import AiohttpTransport
from httpx_aiohttp.transport import map_aiohttp_exceptions


class PooledTransport(AiohttpTransport):
    def session(self) -> ClientSession:
        if not isinstance(self.client, ClientSession):
            self.client = self.get_client()
        return self.client

    async def post(self, url: str, headers: dict[str, str], body: bytes, timeout_s: float) -> tuple[int, httpx.Headers, bytes]:
        """One buffered POST: (status, headers, body). Failures raise httpx's exceptions, as
        handle_async_request does; a compressed answer comes back decompressed."""
        with map_aiohttp_exceptions():
            async with self.session().post(url, data=body, headers=headers, allow_redirects=False,
                                           timeout=ClientTimeout(sock_connect=timeout_s, sock_read=timeout_s)) as r:
                raw = await r.read()
        return r.status, httpx.Headers(r.raw_headers), raw
