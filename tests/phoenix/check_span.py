"""One call through the gateway with the official openai SDK, then Phoenix's GraphQL API until
the gateway's span is there: its llm.cost.total is the gateway's cost, its metadata has the
feature, its llm.prompt_template.version the prompt version. Run by tests/phoenix/check.sh.
"""

import json
import os
import sys
import time
import urllib.request
from decimal import Decimal

import openai

PHOENIX = os.environ["PHOENIX_URL"]
PROJECT = os.environ["PHOENIX_PROJECT"]
GATEWAY = os.environ["GATEWAY_URL"]

FEATURE = "support"
TEMPLATE = "triage"
VERSION = "7"

failures = []


def check(ok, what):
    print(("  ok    " if ok else "  FAIL  ") + what)
    if not ok:
        failures.append(what)


def graphql(query, variables):
    req = urllib.request.Request(
        PHOENIX + "/graphql",
        data=json.dumps({"query": query, "variables": variables}).encode(),
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        body = json.load(r)
    if body.get("errors"):
        raise RuntimeError(f"Phoenix GraphQL errors: {body['errors']}")
    return body["data"]


SPANS = """
query($name: String!) {
  getProjectByName(name: $name) {
    id
    spans(first: 20) {
      edges { node {
        id spanId name spanKind attributes metadata
        trace { traceId }
        costSummary { total { cost tokens } prompt { cost tokens } completion { cost tokens } }
      } }
    }
  }
}
"""

# --- the call ----------------------------------------------------------------------------------
client = openai.OpenAI(base_url=GATEWAY, api_key="sk-phoenix-check")
raw = client.chat.completions.with_raw_response.create(
    model="gpt-4o-mini",
    messages=[{"role": "user", "content": "My invoice is wrong, who do I talk to?"}],
    extra_headers={
        "x-sidetrace-feature": FEATURE,
        "x-sidetrace-prompt-template": TEMPLATE,
        "x-sidetrace-prompt-version": VERSION,
    },
)
completion = raw.parse()
gateway_cost = raw.headers.get("x-sidetrace-cost-usd")
print(f"gateway: {completion.usage.prompt_tokens} in, {completion.usage.completion_tokens} out, "
      f"x-sidetrace-cost-usd: {gateway_cost}")
if not gateway_cost:
    print("FAIL: the gateway sent no x-sidetrace-cost-usd header", file=sys.stderr)
    sys.exit(1)

# --- Phoenix, until the span is there ----------------------------------------------------------
deadline = time.monotonic() + 60
span = None
last_error = None
while time.monotonic() < deadline:
    try:
        project = graphql(SPANS, {"name": PROJECT})["getProjectByName"]
        if project:
            llm = [e["node"] for e in project["spans"]["edges"] if e["node"]["spanKind"] == "llm"]
            if llm:
                span = llm[0]
                project_id = project["id"]
                break
    except Exception as e:  # Phoenix still starting, or a transient error
        last_error = e
    time.sleep(0.5)
if span is None:
    print(f"FAIL: no LLM span in Phoenix project {PROJECT!r} within 60 s"
          + (f" (last error: {last_error})" if last_error else ""), file=sys.stderr)
    sys.exit(1)

attrs = span["attributes"]
if isinstance(attrs, str):
    attrs = json.loads(attrs)
metadata = span["metadata"]
if isinstance(metadata, str):
    metadata = json.loads(metadata)


def get(path):
    node = attrs
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


print(f"phoenix: span {span['name']!r} ({span['spanId']}) in trace {span['trace']['traceId']}, "
      f"project {PROJECT!r}")
cost_total = get("llm.cost.total")
print(f"  llm.cost.total = {cost_total!r}, llm.cost.prompt = {get('llm.cost.prompt')!r}, "
      f"llm.cost.completion = {get('llm.cost.completion')!r}")
print(f"  metadata = {json.dumps(metadata, sort_keys=True)}")
print(f"  llm.prompt_template.version = {get('llm.prompt_template.version')!r}, "
      f"prompt.id = {get('prompt.id')!r}, llm.model_name = {get('llm.model_name')!r}")
summary = span["costSummary"] or {}
phoenix_cost = (summary.get("total") or {}).get("cost")
print(f"  Phoenix's own cost (costSummary, from its price table): {phoenix_cost!r}")

check(cost_total is not None and Decimal(str(cost_total)) == Decimal(gateway_cost),
      f"llm.cost.total in Phoenix ({cost_total}) == the gateway's cost ({gateway_cost})")
check(get("llm.token_count.prompt") == completion.usage.prompt_tokens
      and get("llm.token_count.completion") == completion.usage.completion_tokens,
      "llm.token_count.prompt / .completion are the call's usage")
check(isinstance(metadata, dict) and metadata.get("feature") == FEATURE,
      f"metadata.feature == {FEATURE!r}")
check(isinstance(metadata, dict) and metadata.get("prompt_template") == TEMPLATE,
      f"metadata.prompt_template == {TEMPLATE!r}")
check(str(get("llm.prompt_template.version")) == VERSION,
      f"llm.prompt_template.version == {VERSION!r}")
# check.sh prices gpt-4o-mini at 0.10 / 0.40 USD per 1M tokens (Phoenix's table: the list 0.15 /
# 0.60), so the two costs differ and this tells which one Phoenix's cost column shows.
check(Decimal(gateway_cost) == Decimal("0.0003502"),
      "the gateway's cost is the negotiated price check.sh set (1234 x 0.10 + 567 x 0.40 per 1M)")
if phoenix_cost is not None and Decimal(str(phoenix_cost)) == Decimal(gateway_cost):
    print("  info  Phoenix's cost column (costSummary) shows the gateway's exact cost")
else:
    print(f"  info  Phoenix's cost column (costSummary: Total Cost, the span's cost tooltip) shows "
          f"{phoenix_cost}, not the gateway's {gateway_cost}: Phoenix prices the span from its own "
          "table (llm.model_name x llm.token_count.*) and does not read llm.cost.*; the exact "
          "cost is in the span's attributes (llm.cost.total, cost.usd)")

out = os.environ.get("SPAN_INFO")
if out:
    with open(out, "w") as f:
        json.dump({"project_id": project_id, "span_node_id": span["id"],
                   "trace_id": span["trace"]["traceId"], "span_id": span["spanId"]}, f)

if failures:
    print(f"FAIL: {len(failures)} check(s) failed", file=sys.stderr)
    sys.exit(1)
