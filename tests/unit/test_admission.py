"""Pure request validation: every refusal is a 4xx with a message; good requests become GenerationRequests."""

from __future__ import annotations

import pytest

from api.admission import build_request, resolve_deadline, resolve_slo
from api.errors import APIError
from api.schemas import ChatCompletionRequest, CompletionRequest

NOW = 1_800_000_000.0


def completion(**fields) -> CompletionRequest:
    return CompletionRequest.model_validate({"model": "m", "prompt": "hi", **fields})


def build(body, prompt_tokens=10, header_slo=None):
    return build_request(body, prompt_token_ids=list(range(prompt_tokens)), prompt_text="hi", header_slo=header_slo,
                         served_model="m", max_model_len=100, default_max_tokens=30, now=NOW)


def test_defaults_interactive_and_default_max_tokens():
    request = build(completion())
    assert request.slo == "interactive" and request.sampling.max_tokens == 30
    assert request.enqueued_at == NOW and request.request_id.startswith("cmpl-")


def test_a_streamed_request_says_so_in_its_message():
    """Workers never preempt a streamed request: the flag must travel with it."""
    assert build(completion(stream=True)).stream is True
    assert build(completion()).stream is False


def test_body_slo_beats_header():
    assert build(completion(sluice={"slo": "batch"}), header_slo="interactive").slo == "batch"
    assert build(completion(), header_slo="Batch").slo == "batch"


@pytest.mark.parametrize("body,status,code", [
    (completion(model="other"), 404, "model_not_found"),
    (completion(max_tokens=0), 400, "max_tokens_out_of_range"),
    (completion(max_tokens=91), 400, "max_tokens_out_of_range"),
    (completion(sluice={"slo": "gold"}), 400, "unknown_slo"),
    (completion(sluice={"deadline": NOW - 1}), 400, "deadline_passed"),
])
def test_refusals(body, status, code):
    with pytest.raises(APIError) as error:
        build(body)
    assert (error.value.status, error.value.code) == (status, code)
    assert error.value.body()["error"]["message"]


def test_prompt_filling_the_context_is_refused():
    with pytest.raises(APIError) as error:
        build(completion(), prompt_tokens=100)
    assert error.value.code == "context_length_exceeded"


def test_max_tokens_up_to_the_room_left():
    assert build(completion(max_tokens=90)).sampling.max_tokens == 90
    assert build(ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 5})).sampling.max_tokens == 5


def test_relative_and_absolute_deadlines():
    assert resolve_deadline(60, NOW) == NOW + 60
    assert resolve_deadline(NOW + 5, NOW) == NOW + 5
    assert resolve_deadline(None, NOW) is None
    with pytest.raises(APIError):
        resolve_deadline(0, NOW)


def test_unknown_slo_names_the_known_ones():
    with pytest.raises(APIError) as error:
        resolve_slo("premium", None)
    assert "interactive" in error.value.message


def test_the_bench_length_field_is_refused_unless_benchmarks_are_on_and_never_reaches_the_cap():
    body = completion(max_tokens=50, sluice={"bench_output_tokens": 7})
    with pytest.raises(APIError) as refused:
        build(body)
    assert refused.value.status == 400 and refused.value.param == "sluice.bench_output_tokens"
    request = build_request(body, prompt_token_ids=list(range(10)), prompt_text="hi", header_slo=None,
                            served_model="m", max_model_len=100, default_max_tokens=30, now=NOW, bench_fields=True)
    # The worker generates 7 tokens; the client's cap, which the queue policy reads, stays 50.
    assert (request.forced_output_tokens, request.sampling.max_tokens) == (7, 50)
    assert build(completion(max_tokens=50)).forced_output_tokens is None


def test_the_worker_generates_exactly_the_forced_length():
    from workers.generation import sampling_params

    request = build_request(completion(max_tokens=50, sluice={"bench_output_tokens": 7}), prompt_token_ids=[1, 2],
                            prompt_text="hi", header_slo=None, served_model="m", max_model_len=100,
                            default_max_tokens=30, now=NOW, bench_fields=True)
    params = sampling_params(request)
    assert (params.max_tokens, params.ignore_eos) == (7, True)
    plain = sampling_params(build(completion(max_tokens=50)))
    assert (plain.max_tokens, plain.ignore_eos) == (50, False)
