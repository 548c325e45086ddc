"""The broker's control plane: requests a team makes of the gateway on pb.control.<team>.<action>,
answered by one broker process (the `broker` queue group), so that a client never needs the
JetStream API rights (pausing consumers, deleting stream messages) the work takes.

Written as faststream subscribers: a few requests a minute at most, where faststream's typed
handlers and its AsyncAPI document are worth its per-message cost (~0.4 ms). The hot path
(pb.jobs, pb.dispatch) stays on the raw nats-py loop of transport/consumer.py.

    cancel   CancelRequest -> CancelReply: the team's queued jobs (one job id, or every job
             of a client id, i.e. a batch) get a `cancelled` result and leave the queues
             (broker/cancel.py), or their batch lane (`lane` of them); jobs already handed to a
             broker or worker run to their end.
"""

from __future__ import annotations

from fast_depends.msgspec import MsgSpecSerializer
from faststream import Path
from faststream.nats import NatsBroker, NatsUserPassword
from nats.js import JetStreamContext

from panelboard.broker.cancel import cancel_queued
from panelboard.schemas import wire
from panelboard.schemas.control import CancelReply, CancelRequest
from panelboard.schemas.job import ID_RE
from panelboard.transport import logs
from panelboard.transport.connection import auth_options, servers
from panelboard.transport.payload import Payload

log = logs.get("control")

CANCEL = wire.control("{team}", "cancel")  # faststream's path parameter: subscribes pb.control.*.cancel
REASON_MAX = 200  # characters of a client's reason kept in each cancelled job's message


def check_cancel(team: str, req: CancelRequest) -> str:
    """What is wrong with a cancel request, or "". Pure."""
    if not ID_RE.match(team):
        return f"pb.control.{team[:64]}.cancel: the team token is not a valid team; publish to pb.control.<team>.cancel"
    if bool(req.job_id) == bool(req.client):
        return "send exactly one of job_id (one job) or client (every job submitted under that client id, e.g. a batch)"
    if req.job_id and not ID_RE.match(req.job_id):
        return f"job id {req.job_id[:64]!r} is not a valid id: use 1-128 characters from A-Z a-z 0-9 _ -"
    return ""


async def cancel(js: JetStreamContext, team: str, req: CancelRequest) -> CancelReply:
    """Cancel the asking team's queued jobs that the request names."""
    if error := check_cancel(team, req):
        return CancelReply(error=error)
    reason = req.reason[:REASON_MAX]
    if req.job_id:
        job_id = req.job_id
        rep = await cancel_queued(js, lambda j: j.team == team and j.id == job_id, prefilter=job_id.encode(),
                                  reason=reason or "Client.cancel", keep_ids=True)
    else:
        client = req.client
        rep = await cancel_queued(js, lambda j: j.team == team and j.client == client, prefilter=f'"client":"{client}"'.encode(),
                                  reason=reason or f"client {client} was cancelled")
    log.info("control.cancelled", team=team, job_id=req.job_id or None, client=req.client or None, cancelled=rep.cancelled,
             lane=rep.lane, running=rep.running, scanned=rep.scanned)
    return CancelReply(cancelled=rep.cancelled, lane=rep.lane, running=rep.running, scanned=rep.scanned, ids=rep.ids)


def control_plane(js: JetStreamContext | None, url: str = "nats://127.0.0.1:4222", *, credentials: bool = True) -> NatsBroker:
    """The faststream app of the control subjects; `await app.start()` connects and serves
    (its own NATS connection, as the service user of the environment: see
    transport.connection), `await app.stop()` ends it. `js` is the broker's connection,
    which does the privileged work; `credentials=False` (the AsyncAPI generator) leaves the
    environment's out."""
    auth = auth_options() if credentials else {}
    security = NatsUserPassword(auth["user"], auth["password"]) if "user" in auth else None
    extra = {"inbox_prefix": auth["inbox_prefix"]} if "inbox_prefix" in auth else {}
    app = NatsBroker(servers(url), security=security, name="panelboard-broker-control", serializer=MsgSpecSerializer(),
                     logger=None, max_reconnect_attempts=-1, reconnect_time_wait=0.25, **extra)  # type: ignore[arg-type]

    @app.subscriber(CANCEL, queue=wire.CONTROL_QUEUE, title=CANCEL,
                    description="Cancel the team's queued jobs (a job id, or a client id: a batch). Answered by one broker.")
    async def on_cancel(body: Payload[CancelRequest], team: str = Path()) -> Payload[CancelReply]:
        assert js is not None, "a control plane built without a connection only describes itself"
        try:
            return await cancel(js, team, body)
        except Exception as e:  # NATS trouble mid-scan: the client hears it, and may ask again
            log.exception("control.cancel_failed", team=team)
            return CancelReply(error=f"the cancel did not finish ({type(e).__name__}); ask again: cancelling twice is safe")

    return app
