"""Asking the broker to act for this team on pb.control.<team>.<action> (schemas/control.py):
the privileged work is the broker's, the client only asks."""

from __future__ import annotations

import asyncio

import msgspec
import nats.errors
from nats.aio.client import Client as NATS

from panelboard.clients.errors import PanelboardError
from panelboard.schemas import wire
from panelboard.schemas.codec import encode
from panelboard.schemas.control import CancelReply, CancelRequest

_decode_reply = msgspec.json.Decoder(CancelReply).decode


class ControlError(PanelboardError):
    """The broker refused a control request, or none answered."""


async def cancel(nc: NATS, team: str, req: CancelRequest, timeout: float) -> CancelReply:
    """Ask; while no broker is subscribed (one starting or restarting), ask again until
    `timeout` has passed."""
    subject, body = wire.control(team, "cancel"), encode(req)
    loop = asyncio.get_running_loop()
    end, delay = loop.time() + timeout, 0.05
    while True:
        try:
            msg = await nc.request(subject, body, timeout=max(0.1, end - loop.time()))
            break
        except nats.errors.NoRespondersError:
            if loop.time() + delay > end:
                raise ControlError(f"no broker answered the cancel on {subject} within {timeout:g}s; hint: start one "
                                   f"(`panelboard up`, or `panelboard serve --broker`): cancelling is the broker's work") from None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)
        except nats.errors.TimeoutError:
            raise ControlError(f"the broker did not answer the cancel on {subject} within {timeout:g}s; hint: the queues "
                               f"may be deep (a cancel reads them once): wait for the job's result, or ask again with a longer timeout") from None
    reply = _decode_reply(msg.data)
    if reply.error:
        raise ControlError(f"cancel refused: {reply.error}")
    return reply
