#!/usr/bin/env python3
"""Renders and lints a Helm chart with Helm's own engine (helm-python-sdk, Helm's Go SDK in a
wheel) and prints the result as one JSON document on stdout, for tests/tests/helm_chart.rs.

    render.py template CHART [--values FILE]... [--set-json EXPR]... [--name N] [--namespace NS]
        {"manifests": [{"template": PATH, "document": N, "object": {...}}], "notes": "...",
         "crds": [{"name": PATH, "object": {...}}]}
    render.py lint CHART [--values FILE]... [--set-json EXPR]...
        {"total_charts_linted": N, "messages": [{"severity", "path", "error"}], "errors": [...]}

Every YAML document is parsed by Helm's YAML parser (sigs.k8s.io/yaml, as kubectl does).
Failures: exit 2 with {"error": {"kind": CLASS, "message": TEXT}} on stdout; a missing
helm-python-sdk: exit 3 and how to install it on stderr.
"""

from __future__ import annotations

import argparse
import json
import re
import sys

SDK_VERSION = "0.2.2"

try:
    import helm_python as helm
except ImportError:
    sys.stderr.write(
        "helm-python-sdk is not installed; install it with\n"
        f"  python3 -m pip install 'helm-python-sdk=={SDK_VERSION}'\n"
        "(scripts/test-all does this)\n"
    )
    sys.exit(3)

# How Helm itself splits a rendered template into documents (releaseutil.SplitManifests).
DOCUMENT_SEPARATOR = re.compile(r"(?:^|\s*\n)---\s*")


def merge(base: dict, override: dict) -> dict:
    """Deep merge like repeated `-f` files: maps merge, everything else is replaced."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def user_values(args: argparse.Namespace) -> dict:
    values: dict = {}
    for path in args.values:
        with open(path, encoding="utf-8") as f:
            values = merge(values, helm.values_from_yaml(f.read()))
    for expr in args.set_json:
        values = merge(values, helm.parse_set_json(expr))
    return values


def parse_documents(text: str) -> list[dict]:
    docs = []
    for doc in DOCUMENT_SEPARATOR.split(text):
        body = "\n".join(line for line in doc.splitlines() if not line.lstrip().startswith("#"))
        if not body.strip():
            continue
        parsed = helm.values_from_yaml(doc)
        if parsed:
            docs.append(parsed)
    return docs


def template(args: argparse.Namespace) -> dict:
    with helm.Chart.load(args.chart) as chart:
        rendered = chart.render(
            values=user_values(args),
            name=args.name,
            namespace=args.namespace,
            is_install=True,
        )
        crds = [
            {"name": crd["name"], "object": obj}
            for crd in chart.crds
            for obj in parse_documents(crd["data"])
        ]
    manifests = []
    notes = ""
    for path in sorted(rendered):
        if path.endswith("NOTES.txt"):
            notes = rendered[path]
            continue
        for n, obj in enumerate(parse_documents(rendered[path])):
            manifests.append({"template": path, "document": n, "object": obj})
    return {"manifests": manifests, "notes": notes, "crds": crds}


def lint(args: argparse.Namespace) -> dict:
    return helm.lint(args.chart, user_values(args), strict=True, namespace=args.namespace)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["template", "lint"])
    parser.add_argument("chart")
    parser.add_argument("--values", action="append", default=[])
    parser.add_argument("--set-json", action="append", default=[])
    parser.add_argument("--name", default="helpr")
    parser.add_argument("--namespace", default="helpr")
    args = parser.parse_args()
    try:
        result = template(args) if args.command == "template" else lint(args)
    except helm.HelmError as e:
        json.dump({"error": {"kind": type(e).__name__, "message": str(e)}}, sys.stdout)
        return 2
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
