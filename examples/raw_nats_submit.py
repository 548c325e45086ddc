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
    client, job_id = "raw-script", uuid.uuid4().hex
    # 1. Listen where the result will be published (before submitting).
    sub = await nc.subscribe(f"pb.results.{client}.{job_id}")
    # 2. Publish the job to pb.jobs.<intent>; Nats-Msg-Id = job id makes resubmits idempotent.
    job = {
        "id": job_id,
        "client": client,
        "intent": "extraction",
        "request": {"messages": [{"role": "user", "content": "Extract the date: due 2026-12-01"}], "max_tokens": 64},
    }
    await js.publish("pb.jobs.extraction", json.dumps(job).encode(), headers={"Nats-Msg-Id": job_id, "Pb-Client": client})
    # 3. The result: {"type": "completed", "response": {...chat completion...}} or {"type": "failed", "error": {...}}.
    msg = await sub.next_msg(timeout=60)
    result = json.loads(msg.data)
    print(result["type"], result.get("provider"), result.get("response", {}).get("choices", [{}])[0].get("message", {}).get("content", result.get("error")))
    await nc.drain()


if __name__ == "__main__":
    asyncio.run(main())
