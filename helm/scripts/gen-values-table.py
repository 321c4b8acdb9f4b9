#!/usr/bin/env python3
"""Rewrites the values table in helm/README.md from helm/lifeline/values.yaml.

A `# -- text` comment above a key documents it (helm-docs convention); plain comments above a
section are ignored. `config` is one row: its keys are Lifeline's config file, documented by
`lifeline config-schema`. Run: python3 helm/scripts/gen-values-table.py
"""
import json
import pathlib
import re

import yaml

HERE = pathlib.Path(__file__).resolve().parent.parent
VALUES = HERE / "lifeline" / "values.yaml"
README = HERE / "README.md"
BEGIN, END = "<!-- values-table:begin -->", "<!-- values-table:end -->"


def comments(lines):
    """key path -> description from `# --` comments (continued by following `#` lines)."""
    docs, stack, pending = {}, [], None
    for line in lines:
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if stripped.startswith("# --"):
            pending = [stripped[4:].strip()]
            continue
        if stripped.startswith("#"):
            if pending is not None:
                pending.append(stripped[1:].strip())
            continue
        m = re.match(r"^(\s*)([A-Za-z0-9_.-]+):", line)
        if not m or stripped.startswith("-"):
            pending = None
            continue
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, m.group(2)))
        if pending:
            docs[".".join(k for _, k in stack)] = " ".join(pending)
        pending = None
    return docs


def rows(value, path, docs, out):
    if path == "config":
        out.append((path, "object", "the three services (see values.yaml)", docs.get(path, "")))
        return
    if isinstance(value, dict) and value:
        for k, v in value.items():
            rows(v, f"{path}.{k}" if path else k, docs, out)
        return
    kind = {bool: "bool", int: "int", float: "number", str: "string", list: "list", dict: "object"}.get(type(value), "any")
    out.append((path, kind, json.dumps(value), docs.get(path, "")))


def main():
    text = VALUES.read_text()
    docs = comments(text.splitlines())
    out = []
    rows(yaml.safe_load(text), "", docs, out)
    table = ["| Key | Type | Default | Description |", "|---|---|---|---|"]
    for path, kind, default, desc in out:
        desc = desc.replace("|", "\\|")
        table.append(f"| `{path}` | {kind} | `{default}` | {desc} |")
    readme = README.read_text()
    start, end = readme.index(BEGIN) + len(BEGIN), readme.index(END)
    README.write_text(readme[:start] + "\n" + "\n".join(table) + "\n" + readme[end:])
    print(f"gen-values-table: {len(out)} rows into {README}")


main()
