"""Connecting to NATS: where the URL comes from, and a bounded first connect.

The SDK, the broker, the workers and the CLI all connect through here."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any, Callable, Coroutine

import nats.errors
from nats.aio.client import Client as NATS

from panelboard.schemas.config import Config
from panelboard.transport import logs

log = logs.get("connection")

HOME_ENV = "PANELBOARD_HOME"
URL_ENV = "PANELBOARD_NATS_URL"
# Credentials for a NATS server with per-team users (panelboard/tenants.py): kept out of the
# URL, and so out of process listings and the nats.url file.
USER_ENV = "PANELBOARD_NATS_USER"
PASSWORD_ENV = "PANELBOARD_NATS_PASSWORD"
INBOX_ENV = "PANELBOARD_NATS_INBOX_PREFIX"  # a team's reply subjects, e.g. _INBOX_team-a


def home() -> Path:
    """Where the embedded stack keeps its data and tells later commands its URL."""
    return Path(os.environ.get(HOME_ENV) or Path.cwd() / ".panelboard")


def find_url(explicit: str | None, cfg: Config | None = None) -> str | None:
    if explicit:
        return explicit
    if os.environ.get(URL_ENV):
        return os.environ[URL_ENV]
    if cfg is not None and cfg.nats.url:
        return cfg.nats.url
    f = home() / "nats.url"
    return f.read_text().strip() if f.exists() else None


class NoServerError(RuntimeError):
    """No NATS URL anywhere: the message says where one can come from."""


class UnreachableError(NoServerError, ConnectionError):
    """A NATS URL that no server answered (or accepted us) within the connect patience."""


# How long a first connect keeps trying before it gives up with UnreachableError. A command
# (and the SDK) fails within seconds; a service started beside a restarting server waits
# longer. Once connected, a lost server is waited for without end (max_reconnect_attempts=-1).
CONNECT_PATIENCE_S = 5.0
SERVICE_CONNECT_PATIENCE_S = 30.0


def unreachable_message(url: str, patience_s: float, last: BaseException | None) -> str:
    """What was tried, what went wrong, what to do: one message for the CLI and the SDK."""
    why = f"{type(last).__name__}: {last}".rstrip(": ") if last is not None else "no answer"
    return (f"cannot connect to NATS at {url} (tried for {patience_s:g}s; last error: {why})\n"
            f"hint: is the server up? Start the embedded stack with `panelboard up`, or pass --nats-url "
            f"(or set {URL_ENV}) to a server that is running; check the host, port and credentials")


def require_url(explicit: str | None, cfg: Config | None = None) -> str:
    url = find_url(explicit, cfg)
    if not url:
        raise NoServerError("no NATS server: pass --nats-url, set PANELBOARD_NATS_URL, or run `panelboard up` in this directory")
    return url


def servers(url: str) -> list[str]:
    return [u.strip() for u in url.split(",")]  # a cluster: nats://a:4222,nats://b:4222


def auth_options() -> dict[str, str]:
    """Credentials and inbox prefix from the environment, for any NATS connection we open."""
    auth: dict[str, str] = {}
    if os.environ.get(USER_ENV):
        auth = {"user": os.environ[USER_ENV], "password": os.environ.get(PASSWORD_ENV, "")}
    if os.environ.get(INBOX_ENV):
        auth["inbox_prefix"] = os.environ[INBOX_ENV]
    return auth


class _Client(NATS):
    """nats-py's client with a flusher that lets the loop turn once before it writes. On
    loopback a socket write runs the receiver's TCP stack too: the broker's and the workers'
    biggest cost was one write per publish or ack (py-spy, issue 14). Jobs woken by the same
    read publish in the same turn; one more turn lets their writes go as one. Otherwise the
    library's own loop, unchanged."""

    async def _flusher(self) -> None:
        assert self._transport, "Client.connect must be called first"
        assert self._flush_queue, "Client.connect must be called first"
        while True:
            if not self.is_connected or self.is_connecting:
                break
            futures = [await self._flush_queue.get()]
            try:
                await asyncio.sleep(0)
                while not self._flush_queue.empty():
                    futures.append(self._flush_queue.get_nowait())
                if self._pending_data_size > 0:
                    self._transport.writelines(self._pending[:])
                    self._pending = []
                    self._pending_data_size = 0
                    await self._transport.drain()
            except OSError as e:
                await self._error_cb(e)
                await self._process_op_err(e)
                break
            except (asyncio.CancelledError, RuntimeError, AttributeError):
                break
            finally:
                for future in futures:
                    if not future.done():  # a waiter may have been cancelled
                        future.set_result(None)


async def connect(url: str, name: str, on_reconnect: Callable[[], Coroutine[Any, Any, None]] | None = None,
                  patience_s: float = CONNECT_PATIENCE_S) -> NATS:
    """Connect, or raise UnreachableError after patience_s. nats-py applies
    max_reconnect_attempts=-1 to the first connect too, retrying an absent server for ever
    (an error callback every 0.25 s): the first connect is bounded here, reconnects are not."""
    nc = _Client()
    first: list[BaseException] = []  # the first connect's last error: reported once, in the exception
    connected = False

    async def on_disconnect() -> None:
        if not (nc.is_draining or nc.is_closed):  # a drain at shutdown is not news
            log.warning("nats.disconnected", name=name)

    async def reconnected() -> None:
        log.info("nats.reconnected", name=name)
        if on_reconnect is not None:
            asyncio.get_running_loop().create_task(on_reconnect())

    async def on_error(e: Exception) -> None:
        if not connected:
            first[:] = [e]
            return
        log.warning("nats.error", name=name, error=f"{type(e).__name__}: {e}")

    opening = nc.connect(
        servers=servers(url),
        **auth_options(),  # type: ignore[arg-type]
        name=name,
        max_reconnect_attempts=-1,  # a restarting server is waited for, never given up on
        reconnect_time_wait=0.25,  # type: ignore[arg-type]  # nats-py types it int; it sleeps on a float
        connect_timeout=5,
        allow_reconnect=True,
        disconnected_cb=on_disconnect,
        reconnected_cb=reconnected,
        error_cb=on_error,
    )
    try:
        await asyncio.wait_for(opening, patience_s)
    except (asyncio.TimeoutError, OSError, nats.errors.Error) as e:
        last = first[-1] if first else (None if isinstance(e, asyncio.TimeoutError) else e)
        try:
            await nc.close()
        except Exception:  # a connection that never opened may not close cleanly
            pass
        raise UnreachableError(unreachable_message(url, patience_s, last)) from None
    connected = True  # from now on errors are logged as they come
    return nc
