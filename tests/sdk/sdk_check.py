"""Drives the official OpenAI and Anthropic Python SDKs through the gateway.

Run by tests/sdk.rs, which starts the mock provider and the gateway and passes:
  GATEWAY   base address of the gateway, e.g. http://127.0.0.1:40123
  FIXTURES  directory of provider fixtures (tests/fixtures/providers)
Usage: sdk_check.py CASE   (exit 0 and print "ok CASE" when every assertion holds)
"""

import json
import os
import sys

import anthropic
import openai

GATEWAY = os.environ["GATEWAY"]
FIXTURES = os.environ["FIXTURES"]


def expect(name):
    with open(os.path.join(FIXTURES, name + ".expect.json")) as f:
        return json.load(f)


def oai(base=GATEWAY + "/openai/v1"):
    return openai.OpenAI(base_url=base, api_key="sk-test-openai-0001", max_retries=0, timeout=10)


def ant():
    return anthropic.Anthropic(
        base_url=GATEWAY + "/anthropic", api_key="sk-ant-test-0001", max_retries=0, timeout=10
    )


MESSAGES = [{"role": "user", "content": "Say hello"}]


def openai_chat():
    e = expect("openai/chat_nonstream")
    r = oai().chat.completions.create(model="o4-mini", messages=MESSAGES)
    assert r.id == e["response_id"], r.id
    assert r.model == e["model"], r.model
    assert r.choices[0].finish_reason == e["finish_reasons"][0]
    assert r.usage.prompt_tokens == e["input_tokens"]
    assert r.usage.completion_tokens == e["output_tokens"]
    assert r.usage.completion_tokens_details.reasoning_tokens == e["reasoning_tokens"]


def openai_chat_default_base():
    # OPENAI_BASE_URL=http://gateway/v1: bare /v1 goes to the default provider.
    r = oai(GATEWAY + "/v1").chat.completions.create(model="o4-mini", messages=MESSAGES)
    assert r.id == expect("openai/chat_nonstream")["response_id"]


def openai_chat_stream():
    e = expect("openai/chat_stream_include_usage")
    chunks = list(
        oai().chat.completions.create(
            model="gpt-4o-mini",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert len(chunks) > 3, len(chunks)
    assert chunks[0].id == e["response_id"]
    assert chunks[0].model == e["model"]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(text) > 10, text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == e["finish_reasons"], finishes
    assert chunks[-1].usage is not None and chunks[-1].choices == []
    assert chunks[-1].usage.prompt_tokens == e["input_tokens"]
    assert chunks[-1].usage.completion_tokens == e["output_tokens"]


def openai_chat_stream_held_open():
    # The sync SDK stops at [DONE] and closes the response; the upstream has not ended its body.
    chunks = list(
        oai().chat.completions.create(
            model="held-open",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].usage is not None and chunks[-1].choices == []


def openai_chat_stream_without_usage():
    # The gateway adds include_usage upstream to record usage, and strips the extra chunk:
    # the SDK sees exactly the stream it asked for.
    chunks = list(oai().chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True))
    assert len(chunks) > 3, len(chunks)
    assert all(c.usage is None for c in chunks), [c.usage for c in chunks]
    assert all(c.choices for c in chunks), "no usage-only chunk may reach the client"
    assert chunks[-1].choices[0].finish_reason == "stop"


def openai_cost_headers():
    # o4-mini fixture: 158 x 1.10 + 1152 x 0.275 + 615 x 4.40 = 3196.6 micro-USD.
    raw = oai().chat.completions.with_raw_response.create(model="o4-mini", messages=MESSAGES)
    assert raw.headers["x-sidetrace-cost-usd"] == "0.0031966", raw.headers
    assert raw.headers["x-sidetrace-input-tokens"] == "1310"
    assert raw.headers["x-sidetrace-reasoning-tokens"] == "448"
    completion = raw.parse()
    assert completion.usage.prompt_tokens == 1310


def anthropic_cost_headers():
    # claude-opus-4-5 fixture: 35 x 5.00 + 3120 (1-hour write) x 10.00 + 41 x 25.00 = 32400 micro-USD.
    raw = ant().messages.with_raw_response.create(model="claude-opus-4-5", max_tokens=64, messages=MESSAGES)
    assert raw.headers["x-sidetrace-cost-usd"] == "0.0324", raw.headers
    message = raw.parse()
    assert message.usage.output_tokens == 41


def openai_stream_with_cost_comment_and_trailers():
    chunks = list(
        oai().chat.completions.create(
            model="gpt-4o-mini",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
            extra_headers={"x-sidetrace-cost-comment": "true", "te": "trailers"},
        )
    )
    assert chunks[-1].usage.completion_tokens == 26
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def anthropic_stream_with_cost_comment():
    with ant().messages.stream(
        model="claude-sonnet-4-5",
        max_tokens=64,
        messages=MESSAGES,
        extra_headers={"x-sidetrace-cost-comment": "true"},
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text and final.usage.output_tokens == 90


def openai_rate_limited():
    try:
        oai().chat.completions.create(model="rate-limited", messages=MESSAGES)
    except openai.RateLimitError as err:
        assert err.status_code == 429
        assert err.response.headers["retry-after"] == "7"
        return
    raise AssertionError("expected RateLimitError")


def openai_budget_refused_is_not_retried():
    # A spent budget answers 429 with x-should-retry: false: the SDK gives up at once even
    # with retries on (the test counts the refusals at the gateway).
    client = openai.OpenAI(
        base_url=GATEWAY + "/openai/v1", api_key="sk-test-openai-0001", max_retries=3, timeout=10
    )
    try:
        client.chat.completions.create(model="o4-mini", messages=MESSAGES)
    except openai.RateLimitError as e:
        assert e.status_code == 429
        assert e.body["code"] == "budget_exceeded", e.body
        assert e.response.headers["x-should-retry"] == "false"
    else:
        raise AssertionError("expected RateLimitError")


def openai_unknown_route():
    try:
        oai(GATEWAY + "/nowhere/v1").chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    except openai.NotFoundError as err:
        assert err.status_code == 404
        assert "/openai" in err.message and "/anthropic" in err.message, err.message
        assert err.code == "unknown_route", err.code
        return
    raise AssertionError("expected NotFoundError")


def openai_upstream_down():
    try:
        oai(GATEWAY + "/deadprovider/v1").chat.completions.create(model="x", messages=MESSAGES)
    except openai.InternalServerError as err:
        assert err.status_code == 502
        assert err.code == "upstream_unreachable", err.code
        return
    raise AssertionError("expected InternalServerError (502)")


def anthropic_stream():
    e = expect("anthropic/stream_cache_tokens")
    with ant().messages.stream(
        model="claude-sonnet-4-5", max_tokens=256, messages=MESSAGES
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert len(text) > 10, text
    assert final.id == e["response_id"]
    assert final.model == e["model"]
    assert final.stop_reason == e["finish_reasons"][0]
    u = final.usage
    assert u.cache_read_input_tokens == e["cached_input_tokens"]
    assert u.cache_creation_input_tokens == e["cache_creation_input_tokens"]
    total_input = u.input_tokens + u.cache_read_input_tokens + u.cache_creation_input_tokens
    assert total_input == e["input_tokens"], total_input
    assert u.output_tokens == e["output_tokens"]


def anthropic_message():
    e = expect("anthropic/nonstream")
    m = ant().messages.create(model="claude-opus-4-5", max_tokens=256, messages=MESSAGES)
    assert m.id == e["response_id"]
    assert m.stop_reason == e["finish_reasons"][0]
    assert m.usage.output_tokens == e["output_tokens"]


def anthropic_overloaded():
    try:
        ant().messages.create(model="overloaded", max_tokens=16, messages=MESSAGES)
    except anthropic.APIStatusError as err:
        assert err.status_code == 529, err.status_code
        return
    raise AssertionError("expected an APIStatusError 529")


def otel_parent_span():
    # An app instrumented with the OpenTelemetry SDK: its span wraps the LLM call, and the
    # SDK's global propagator (W3C trace context) injects traceparent into the request.
    from opentelemetry import propagate, trace
    from opentelemetry.sdk.trace import TracerProvider

    trace.set_tracer_provider(TracerProvider())
    tracer = trace.get_tracer("sdk-check")
    with tracer.start_as_current_span("agent step") as span:
        headers = {}
        propagate.inject(headers)
        assert "traceparent" in headers, headers
        oai().chat.completions.create(model="o4-mini", messages=MESSAGES, extra_headers=headers)
        ctx = span.get_span_context()
        print("TRACE", format(ctx.trace_id, "032x"), format(ctx.span_id, "016x"))


# Agent loops with NO trace headers: the gateway groups them (see tests/sdk.rs).


def loop_openai_chat():
    client = oai()
    tools = [
        {"type": "function", "function": {"name": n, "parameters": {"type": "object", "properties": {}}}}
        for n in ("get_weather", "get_time")
    ]
    messages = [{"role": "user", "content": "Weather and time in Paris?"}]
    r = client.chat.completions.create(model="gpt-4o-mini", messages=messages, tools=tools)
    calls = r.choices[0].message.tool_calls
    assert [c.id for c in calls] == ["call_weather", "call_time"], calls
    messages.append(r.choices[0].message.model_dump(exclude_none=True))
    answers = {"get_weather": "sunny", "get_time": "14:00"}
    for c in calls:
        messages.append({"role": "tool", "tool_call_id": c.id, "content": answers[c.function.name]})
    r2 = client.chat.completions.create(model="gpt-4o-mini", messages=messages, tools=tools)
    assert r2.choices[0].message.content == "Sunny, 14:00", r2


def loop_anthropic_tool_use():
    client = ant()
    tools = [{"name": n, "input_schema": {"type": "object"}} for n in ("search", "fetch")]
    messages = [{"role": "user", "content": "go"}]
    m = client.messages.create(model="claude-sonnet-4-5", max_tokens=100, messages=messages, tools=tools)
    uses = [b for b in m.content if b.type == "tool_use"]
    assert [u.id for u in uses] == ["toolu_search", "toolu_fetch"], m.content
    messages.append({"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in m.content]})
    messages.append(
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_search", "content": "3 hits"},
                {"type": "tool_result", "tool_use_id": "toolu_fetch", "content": "404", "is_error": True},
            ],
        }
    )
    m2 = client.messages.create(model="claude-sonnet-4-5", max_tokens=100, messages=messages, tools=tools)
    assert m2.content[0].text == "done", m2


def loop_openai_responses():
    client = oai()
    tools = [{"type": "function", "name": "lookup", "parameters": {"type": "object", "properties": {}}}]
    r = client.responses.create(model="gpt-4.1", input="Is SKU 42 in stock?", tools=tools)
    calls = [o for o in r.output if o.type == "function_call"]
    assert [c.call_id for c in calls] == ["call_lookup"], r.output
    r2 = client.responses.create(
        model="gpt-4.1",
        previous_response_id=r.id,
        input=[{"type": "function_call_output", "call_id": "call_lookup", "output": '{"stock":3}'}],
        tools=tools,
    )
    assert r2.output_text == "in stock", r2


def keys_openai():
    # The gateway key is the SDK's api_key (the gateway holds the provider key); GATEWAY_KEY may
    # call openai's gpt-4o-mini and o4-* models only. EXPIRED_KEY expired in 2020.
    def client(key, retries=0):
        return openai.OpenAI(
            base_url=GATEWAY + "/openai/v1", api_key=key, max_retries=retries, timeout=10
        )

    r = client(os.environ["GATEWAY_KEY"]).chat.completions.create(model="o4-mini", messages=MESSAGES)
    assert r.id == expect("openai/chat_nonstream")["response_id"], r.id

    for key, code in [
        ("sk-st-not-a-key-of-this-gateway", "invalid_gateway_key"),
        (os.environ["EXPIRED_KEY"], "expired_gateway_key"),
    ]:
        try:
            # Retries on: the refusal says x-should-retry: false, so the SDK gives up at once.
            client(key, retries=3).chat.completions.create(model="o4-mini", messages=MESSAGES)
        except openai.AuthenticationError as err:
            assert err.status_code == 401
            assert err.code == code, err.code
            assert err.type == "authentication_error", err.type
            assert err.response.headers["x-should-retry"] == "false"
        else:
            raise AssertionError(f"expected AuthenticationError for {code}")

    try:
        client(os.environ["GATEWAY_KEY"]).chat.completions.create(model="gpt-4o", messages=MESSAGES)
    except openai.PermissionDeniedError as err:
        assert err.status_code == 403
        assert err.code == "gateway_key_not_allowed", err.code
        assert "gpt-4o" in err.message, err.message
    else:
        raise AssertionError("expected PermissionDeniedError")


def keys_anthropic():
    # Anthropic's SDK sends its api_key in x-api-key: a gateway key there works the same way.
    def client(key):
        return anthropic.Anthropic(
            base_url=GATEWAY + "/anthropic", api_key=key, max_retries=3, timeout=10
        )

    r = client(os.environ["GATEWAY_KEY"]).messages.create(
        model="claude-sonnet-4-5", max_tokens=64, messages=MESSAGES
    )
    assert r.usage.output_tokens > 0, r
    try:
        client("sk-st-not-a-key-of-this-gateway").messages.create(
            model="claude-sonnet-4-5", max_tokens=64, messages=MESSAGES
        )
    except anthropic.AuthenticationError as err:
        assert err.status_code == 401
        assert err.body["error"]["code"] == "invalid_gateway_key", err.body
    else:
        raise AssertionError("expected AuthenticationError")


def tls_openai():
    # GATEWAY is https://127.0.0.1:PORT; the gateway's certificate is signed by the test CA in
    # CA_FILE, which the client trusts (and nothing else).
    import ssl

    trusted = ssl.create_default_context(cafile=os.environ["CA_FILE"])
    client = openai.OpenAI(
        base_url=GATEWAY + "/openai/v1",
        api_key="sk-test-openai-0001",
        max_retries=0,
        timeout=10,
        http_client=openai.DefaultHttpxClient(verify=trusted),
    )
    r = client.chat.completions.create(model="o4-mini", messages=MESSAGES)
    assert r.id == expect("openai/chat_nonstream")["response_id"], r.id
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].usage is not None, chunks[-1]
    # The system's roots do not know the test CA: the same call is refused.
    untrusted = openai.OpenAI(
        base_url=GATEWAY + "/openai/v1", api_key="sk-test-openai-0001", max_retries=0, timeout=10
    )
    try:
        untrusted.chat.completions.create(model="o4-mini", messages=MESSAGES)
    except openai.APIConnectionError:
        pass
    else:
        raise AssertionError("a certificate from an unknown CA was accepted")


CASES = {
    name: fn
    for name, fn in globals().items()
    if callable(fn) and name.startswith(("openai_", "anthropic_", "otel_", "loop_", "keys_", "tls_"))
}

if __name__ == "__main__":
    case = sys.argv[1]
    CASES[case]()
    print("ok", case)
