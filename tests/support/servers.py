"""A nats-server a fault test can kill -9 and bring back on the same port and store, so the
clients and processes connected to it reconnect to "the same server" after an outage."""

from __future__ import annotations

import asyncio
from pathlib import Path

from panelboard.natsserver import NatsServer


class RestartableServer:
    def __init__(self, data_dir: Path):
        self.data_dir = data_dir
        self.started: list[NatsServer] = []  # every incarnation, each stopped at the end

    def __enter__(self) -> "RestartableServer":
        self.started.append(NatsServer(self.data_dir).start())
        return self

    def __exit__(self, *exc: object) -> None:
        for server in self.started:
            server.stop()

    @property
    def current(self) -> NatsServer:
        return self.started[-1]

    @property
    def url(self) -> str:
        return self.current.url

    def kill(self) -> None:
        """SIGKILL: no clean shutdown, no flush (what a crash does to the last few ms of state)."""
        self.current.kill()

    def start_again(self) -> NatsServer:
        """The same store and port, after kill()."""
        self.started.append(NatsServer(self.current.data_dir, port=self.current.port).start())
        return self.current

    async def restart(self, outage_s: float = 1.0) -> NatsServer:
        """kill -9, `outage_s` of nothing, then the same server again."""
        self.kill()
        await asyncio.sleep(outage_s)
        return self.start_again()
