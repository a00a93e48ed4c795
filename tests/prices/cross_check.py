"""Compares every priced model in providers/*.toml with genai-prices (PyPI, MIT), an independent
price table, at 100k tokens: input, output, and cache reads and writes where our entry prices
them apart. Exits 1 when a model differs and its entry has no `note` naming genai-prices, which
must say which source is newer and why (an entry that matches needs none).

    target/test-venv/bin/python tests/prices/cross_check.py [--providers DIR]

Run by tests/prices.rs through the test venv (tests/setup-python.sh installs genai-prices).
Uses only the package's bundled data snapshot: nothing is fetched.
"""

from __future__ import annotations

import argparse
import sys
import tomllib
import warnings
from decimal import Decimal
from pathlib import Path

import genai_prices
from genai_prices import Usage, calc_price

# Our provider file name -> genai-prices provider id.
PROVIDERS = {
    "openai": "openai",
    "anthropic": "anthropic",
    "gemini": "google",
    "bedrock": "aws",
    "deepseek": "deepseek",
    "mistral": "mistral",
    "groq": "groq",
    "xai": "x-ai",
}

TOKENS = 100_000
MILLION = Decimal(1_000_000)


def model_refs(provider: str, name: str) -> list[str]:
    """The model ids the entry prices, each compared. Bedrock entries without a region prefix
    are families (`claude-opus-4-5`): the gateway prices both the global inference profile
    (`global.anthropic.claude-opus-4-5-...`) and the bare in-region id with them, and
    genai-prices keys Bedrock by model id."""
    if provider == "bedrock" and "." not in name:
        return [f"global.anthropic.{name}", f"anthropic.{name}"]
    return [name]


def ours(entry: dict) -> dict[str, Decimal]:
    """The rates our entry names explicitly, USD per million tokens (fallbacks left out: a
    missing cache price is the input price by our rules, not a price of its own)."""
    rates = {"input": Decimal(entry["input"]), "output": Decimal(entry["output"])}
    for key in ("cached_input", "cache_write"):
        if key in entry:
            rates[key] = Decimal(entry[key])
    return rates


def theirs(ref: str, provider_id: str, component: str):
    """genai-prices' cost of 100k tokens of one component, as a rate per million, and the model
    it matched; None when it does not know the model."""
    usage = {
        "input": Usage(input_tokens=TOKENS),
        "output": Usage(output_tokens=TOKENS),
        "cached_input": Usage(input_tokens=TOKENS, cache_read_tokens=TOKENS),
        "cache_write": Usage(input_tokens=TOKENS, cache_write_tokens=TOKENS),
    }[component]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            calc = calc_price(usage, ref, provider_id=provider_id)
    except LookupError:
        return None
    return calc.total_price * MILLION / TOKENS, calc.model.id


def main() -> int:
    parser = argparse.ArgumentParser()
    root = Path(__file__).resolve().parents[2]
    parser.add_argument("--providers", type=Path, default=root / "providers")
    args = parser.parse_args()

    priced = known = agree = explained = 0
    unexplained: list[str] = []
    for path in sorted(args.providers.glob("*.toml")):
        spec = tomllib.loads(path.read_text())
        provider = spec.get("name", path.stem)
        provider_id = PROVIDERS.get(provider)
        for entry in spec.get("models", []):
            priced += 1
            if provider_id is None:
                continue
            refs = [
                ref
                for ref in model_refs(provider, entry["name"])
                if theirs(ref, provider_id, "input") is not None
            ]
            if not refs:
                continue
            known += 1
            differences = []
            matched = []
            for ref in refs:
                for component, rate in ours(entry).items():
                    their_rate, matched_id = theirs(ref, provider_id, component)
                    if their_rate != rate:
                        differences.append(
                            f"{component} {rate} here, {their_rate} for {matched_id}"
                        )
                matched.append(matched_id)
            where = f"{path.name} {entry['name']} (genai-prices {provider_id}: {', '.join(matched)})"
            if not differences:
                agree += 1
            elif "genai-prices" in entry.get("note", ""):
                explained += 1
                print(f"differs, explained: {where}: {'; '.join(differences)}")
            else:
                unexplained.append(f"{where}: {'; '.join(differences)}")
    print(
        f"{priced} priced models; genai-prices {genai_prices.__version__} knows {known}: "
        f"{agree} agree at {TOKENS} tokens, {explained} differ with a note, "
        f"{len(unexplained)} differ without one"
    )
    for line in unexplained:
        print(f"UNEXPLAINED: {line}")
    if unexplained:
        print(
            "Check which source is newer (the vendor's page), fix the price or add a note to the"
            " entry naming genai-prices and saying which is newer and why."
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
