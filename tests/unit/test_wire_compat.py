"""Fields removed from the wire Structs still decode: messages already in the streams carry them."""

from panelboard.schemas.codec import attempt_decision, decode_dispatch, decode_job, encode, result_failed
from panelboard.schemas.errors import ChainExhausted, OverBudget
from panelboard.schemas.job import Attempt, Failed

OLD_JOB = b'{"id":"j1","request":{"messages":[{"role":"user","content":"hi"}]},"submitted_at":1780000000.5}'
OLD_DISPATCH = b'{"job":' + OLD_JOB + b',"route":{"tier":"fast","chain":[{"model":"m","provider":"p"}]},"reserved_usd":0.25}'


def test_a_job_and_a_dispatch_from_before_still_decode():
    assert decode_job(OLD_JOB).id == "j1"
    d = decode_dispatch(OLD_DISPATCH)
    assert d.job.id == "j1" and d.route.chain[0].provider == "p"


def test_error_kind_is_the_wire_tag():
    err = OverBudget(message="m", hint="h")
    assert err.kind == "over_budget" and b'"kind":"over_budget"' in encode(err)


def test_settlement_reads_the_result_tag_and_the_attempt_decision():
    failed = encode(Failed(job_id="j", error=ChainExhausted(message="m", hint="h")))
    assert result_failed(failed)
    assert not result_failed(b'{"type":"completed","job_id":"j","error_text":"\\"type\\":\\"failed\\""}')
    assert attempt_decision(encode(Attempt("p", "m", 0, 0, 500, 1.0, decision="fail"))) == "fail"
