"""The committed AsyncAPI document is the one the code generates, and it names every subject
of the README's wire-contract table: neither can drift from the code unnoticed."""

from __future__ import annotations

import re

from panelboard import asyncapi
from tests.conftest import ROOT


def readme_subjects() -> set[str]:
    """Every subject of the wire-contract table, `<x>` written `{x}`, `{a,b}` expanded."""
    text = (ROOT / "README.md").read_text()
    table = text[text.index("## The wire contract"):text.index("**Who a job belongs to.**")]
    out: set[str] = set()
    for row in table.splitlines():
        if row.startswith("| `pb."):
            for cell in re.findall(r"`(pb\.[^`]+)`", row.split("|")[1]):
                head, alts, tail = re.fullmatch(r"([^{]*)(?:\{([^}]*)\})?(.*)", cell).groups()  # type: ignore[union-attr]
                for alt in (alts or "").split(","):
                    out.add(re.sub(r"<([^>]+)>", r"{\1}", head + alt + tail))
    return out


def test_the_committed_document_is_the_generated_one():
    assert asyncapi.DOC.read_text() == asyncapi.render(), "docs/asyncapi.json is stale: run `panelboard asyncapi --write`"


def test_every_subject_of_the_readme_table_is_in_the_document():
    subjects = readme_subjects()
    assert len(subjects) >= 14  # jobs, dispatch, results, rejects, claims, costs, dead, attempts, control, batch x5
    addresses = {ch["address"] for ch in asyncapi.document()["channels"].values()}
    missing = sorted(subjects - addresses)
    assert not missing, f"in the README's wire contract but not in docs/asyncapi.json: {missing}"


def test_the_document_carries_the_structs_fields_and_the_cancel_reply():
    doc = asyncapi.document()
    schemas = doc["components"]["schemas"]
    job = schemas["pb.jobs.{team}.{intent}:Message:Payload"]
    assert {"id", "team", "request"} <= set(job["properties"]) and "id" in job["required"]
    result_kinds = {v["properties"]["type"]["enum"][0] for v in schemas["pb.results.{team}.{job}:Message:Payload"]["anyOf"]}
    assert result_kinds == {"completed", "embedded", "failed"}
    assert "reply" in doc["operations"]["pb.control.{team}.cancel"]
    assert {"cancelled", "running", "ids", "error"} <= set(schemas["pb.control.{team}.cancel:Reply:Payload"]["properties"])
