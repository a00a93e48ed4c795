"""An agent instrumented with the OpenTelemetry Python SDK, exporting to the gateway's OTLP
receiver the way an unchanged app would (OTEL_EXPORTER_OTLP_ENDPOINT), and calling its LLM
through the gateway with the propagated trace context.

Run by tests/ingest_sdk.rs, which starts the mock provider and the gateway and passes:
  GATEWAY                      base address of the gateway's proxy, e.g. http://127.0.0.1:40123
  OTEL_EXPORTER_OTLP_ENDPOINT  the gateway's receiver: http://127.0.0.1:PORT (HTTP or gRPC)
Usage: otlp_app.py http|grpc
Prints "trace <32 hex>" and one tab-separated "span, name, span id, parent id or -" line per
span, then
"ok <transport>".
"""

import os
import sys

import openai
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

transport = sys.argv[1]
if transport == "http":
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
elif transport == "grpc":
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
else:
    raise SystemExit("usage: otlp_app.py http|grpc")

# The exporter reads OTEL_EXPORTER_OTLP_ENDPOINT itself (HTTP adds /v1/traces); gRPC to a
# plain-text loopback receiver needs insecure.
exporter = OTLPSpanExporter(insecure=True) if transport == "grpc" else OTLPSpanExporter()
seen = InMemorySpanExporter()
provider = TracerProvider(
    resource=Resource.create({"service.name": "support-agent", "deployment.environment": "test"})
)
provider.add_span_processor(SimpleSpanProcessor(exporter))
provider.add_span_processor(SimpleSpanProcessor(seen))
trace.set_tracer_provider(provider)
tracer = trace.get_tracer("support_agent", "0.3.0")

client = openai.OpenAI(
    base_url=os.environ["GATEWAY"] + "/openai/v1",
    api_key="sk-test-openai-0001",
    max_retries=0,
    timeout=10,
)

with tracer.start_as_current_span("support_agent.run") as root:
    with tracer.start_as_current_span("retrieve") as span:
        span.set_attribute("retrieval.documents", ["order-policy.md", "faq.md"])
    # The LLM call through the gateway, as a child of the run: the W3C propagator puts the
    # current context in the request's traceparent header.
    headers = {}
    propagate.inject(headers)
    assert "traceparent" in headers, headers
    reply = client.chat.completions.create(
        model="o4-mini",
        messages=[{"role": "user", "content": "Where is order 42?"}],
        extra_headers=headers,
    )
    assert reply.choices, reply
    with tracer.start_as_current_span(
        "execute_tool lookup_order", kind=trace.SpanKind.INTERNAL
    ) as tool:
        tool.set_attribute("gen_ai.operation.name", "execute_tool")
        tool.set_attribute("gen_ai.tool.name", "lookup_order")
        tool.set_attribute("gen_ai.tool.call.id", "call_lookup_42")
        tool.set_attribute("gen_ai.tool.type", "function")

provider.force_flush()
provider.shutdown()

spans = seen.get_finished_spans()
print("trace %032x" % root.get_span_context().trace_id)
for s in spans:
    parent = "%016x" % s.parent.span_id if s.parent else "-"
    print("span\t%s\t%016x\t%s" % (s.name, s.context.span_id, parent))
print("ok " + transport)
