"""msgspec Structs as faststream payload types.

faststream builds its AsyncAPI schemas through pydantic, which cannot read a msgspec Struct.
`Payload[T]` is `T` for msgspec (which decodes and encodes it, through fast_depends'
msgspec serializer) and, for pydantic, carries T's own JSON Schema as msgspec writes it,
references inlined (no Struct of ours is recursive), so the document describes exactly what
travels. Imported only where faststream is (the broker's control plane, the AsyncAPI
generator): never on the SDK's or the hot path's import path.
"""

from __future__ import annotations

import functools
from typing import Annotated, Any, TypeVar

import msgspec
from pydantic import GetPydanticSchema
from pydantic_core import core_schema


@functools.cache
def json_schema(t: Any) -> dict[str, Any]:
    """T's JSON Schema with every `$ref` replaced by what it names."""
    (root,), defs = msgspec.json.schema_components([t], ref_template="#/$defs/{name}")

    def walk(x: Any) -> Any:
        if isinstance(x, dict):
            if "$ref" in x:
                return walk(defs[x["$ref"].rsplit("/", 1)[1]])
            # A discriminator's mapping points at $defs that are inlined now: the tag field stays.
            return {k: {"propertyName": v["propertyName"]} if k == "discriminator" else walk(v) for k, v in x.items()}
        if isinstance(x, list):
            return [walk(v) for v in x]
        return x

    out: dict[str, Any] = walk(root)
    return out


def _core(source: Any, _handler: Any) -> core_schema.CoreSchema:
    return core_schema.any_schema(metadata={"msgspec_type": source})  # msgspec, not pydantic, decodes it


def _json(cs: core_schema.CoreSchema, _handler: Any) -> dict[str, Any]:
    return json_schema(cs["metadata"]["msgspec_type"])


T = TypeVar("T")
Payload = Annotated[T, GetPydanticSchema(_core, _json)]
