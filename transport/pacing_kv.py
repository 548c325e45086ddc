"""The PB_PACE KV bucket: every worker process of a pool shares what the provider said of its
rate window there (one key per provider, API-key fingerprint and model), and each pool's
adaptive concurrency limit (one key per process) for `panelboard status`.

Keys: sig.<provider>.<key fingerprint>.<model>  ->  RateSignal
      pool.<provider>.<process>                ->  PoolPace
Entries expire after TTL_S: a window that old has reset, a process that quiet is gone.
"""

from __future__ import annotations

import hashlib
import re

import msgspec
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from panelboard.schemas.config import Config
from panelboard.schemas.pacing import PoolPace

BUCKET = "PB_PACE"
TTL_S = 120.0
_UNSAFE = re.compile(r"[^-_A-Za-z0-9]")  # dots too: a key's tokens are ours to choose
decode_pool = msgspec.json.Decoder(PoolPace).decode


def esc(s: str) -> str:
    return _UNSAFE.sub(lambda m: "".join(f"={b:02X}" for b in m.group().encode()), s) or "_"


def unesc(s: str) -> str:
    return re.sub(r"(?:=[0-9A-F]{2})+", lambda m: bytes.fromhex(m.group().replace("=", "")).decode("utf-8", "replace"), s)


def fingerprint(api_key: str | None) -> str:
    """Names the API key without holding it: limits are per key, the key never leaves the process."""
    return hashlib.sha256(api_key.encode()).hexdigest()[:16] if api_key else "nokey"


def signal_key(provider: str, key_fp: str, model: str) -> str:
    return signals_prefix(provider, key_fp) + esc(model)


def signals_prefix(provider: str, key_fp: str) -> str:
    return f"sig.{esc(provider)}.{key_fp}."


def of_provider(provider: str) -> str:
    """What a pool's processes watch: its signals and its processes' figures."""
    return f"*.{esc(provider)}.>"


def pool_key(provider: str, process: str) -> str:
    return pools_prefix(provider) + esc(process)


def pools_prefix(provider: str) -> str:
    return f"pool.{esc(provider)}."


async def ensure(js: JetStreamContext, cfg: Config) -> KeyValue:
    from nats.js.api import KeyValueConfig, StorageType
    from nats.js.errors import BadRequestError, BucketNotFoundError

    try:
        return await js.key_value(BUCKET)
    except BucketNotFoundError:
        pass
    try:  # memory: it is advice about the next seconds, not state to survive a restart
        return await js.create_key_value(KeyValueConfig(bucket=BUCKET, history=1, ttl=TTL_S, replicas=cfg.nats.replicas,
                                                        storage=StorageType.MEMORY))
    except BadRequestError as e:  # another process created it between our two calls
        if e.err_code != 10058:
            raise
        return await js.key_value(BUCKET)


async def read_pools(js: JetStreamContext) -> list[PoolPace]:
    """Every live pool process's figures (none when no pool has written yet)."""
    from nats.js.errors import BucketNotFoundError, NoKeysError

    try:
        kv = await js.key_value(BUCKET)
        keys = await kv.keys(["pool."])
    except (BucketNotFoundError, NoKeysError):
        return []
    out = []
    for k in keys:
        if not k.startswith("pool."):
            continue
        try:
            e = await kv.get(k)
        except Exception:  # expired or deleted meanwhile
            continue
        if e.value:
            out.append(decode_pool(e.value))
    return out
