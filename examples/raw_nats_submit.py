"""Submit a job and read its result with nothing but nats-py: the wire contract, no SDK.

    PANELBOARD_NATS_URL=nats://127.0.0.1:4222 python examples/raw_nats_submit.py
"""

import asyncio
import json
import os
import uuid

import nats


async def main() -> None:
    nc = await nats.connect(os.environ["PANELBOARD_NATS_URL"])
    js = nc.jetstream()
    team, job_id = os.environ.get("PANELBOARD_TEAM", "default"), uuid.uuid4().hex
    # 1. Listen where the answer will be published, before submitting: the job's result on
    #    pb.results.<team>.<job>, or, if the broker refuses the publish before it can own the
    #    job id (undecodable, bad id, bad key, ...), a Failed on pb.rejects.<team>.<seq>.
    results = await nc.subscribe(f"pb.results.{team}.{job_id}")
    rejects = await nc.subscribe(f"pb.rejects.{team}.>")
    # 2. Publish the job to pb.jobs.<team>.<intent>. The Nats-Msg-Id is optional: one unique to
    #    this submit makes its own retries (after a publish timeout) safe.
    job = {
        "id": job_id,
        "team": team,
        "intent": "extraction",
        "request": {"messages": [{"role": "user", "content": "Extract the date: due 2026-12-01"}], "max_tokens": 64},
    }
    ack = await js.publish(f"pb.jobs.{team}.extraction", json.dumps(job).encode(),
                           headers={"Nats-Msg-Id": f"{team}.{job_id}.{uuid.uuid4().hex[:8]}"})
    # 3. Whichever comes: {"type": "completed", "response": {...chat completion...}} or {"type": "failed", "error": {...}}.

    async def on_reject() -> None:
        while True:
            msg = await rejects.next_msg(timeout=None)
            if msg.subject == f"pb.rejects.{team}.{ack.seq}":
                return msg

    waits = [asyncio.ensure_future(results.next_msg(timeout=60)), asyncio.ensure_future(on_reject())]
    finished, pending = await asyncio.wait(waits, timeout=60, return_when=asyncio.FIRST_COMPLETED)
    for t in pending:
        t.cancel()
    if not finished:
        raise SystemExit(f"no answer for job {job_id} within 60 s: is the broker running?")
    result = json.loads(finished.pop().result().data)
    print(result["type"], result.get("provider"), result.get("response", {}).get("choices", [{}])[0].get("message", {}).get("content", result.get("error")))
    await nc.drain()


if __name__ == "__main__":
    asyncio.run(main())
