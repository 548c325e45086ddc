"""Access log lines with the job id and the key's visible prefix, never the key or the body."""

from __future__ import annotations

import os
from typing import Any

from aiohttp.abc import AbstractAccessLogger

from panelboard.transport import logs

log = logs.get("ingress.access")


class AccessLogger(AbstractAccessLogger):
    def log(self, request: Any, response: Any, time: float) -> None:
        log.info("http", method=request.method, path=request.path, status=response.status, ms=round(time * 1000, 1),
                 job_id=request.get("pb_job"), key_prefix=request.get("pb_key"), pid=os.getpid())

    @property
    def enabled(self) -> bool:
        return True
