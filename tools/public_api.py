"""Lists fused-optim's public API, one item per line, from rustdoc's JSON: every path a user
can name (modules, types, functions, constants, re-exports under their public names), each
type's public fields, variants and inherent methods, and the traits it implements (not
auto or blanket ones). `.ci/run` compares it with the committed fused-optim/public-api.txt,
so a change to the public surface is a reviewed change of that file (semver: an item gone
is a breaking change). Names and kinds only, not signatures.

    RUSTC_BOOTSTRAP=1 cargo rustdoc -p fused-optim --lib --target-dir target/api -- \\
        -Z unstable-options --output-format json
    python3 tools/public_api.py target/api/doc/fused_optim.json > fused-optim/public-api.txt
"""

import json
import sys

doc = json.load(open(sys.argv[1]))
index = doc["index"]
lines = set()


def item(id_):
    return index.get(str(id_))


def trait_name(path):
    return path.get("path") or path.get("name")


def members(it, path):
    kind, inner = next(iter(it["inner"].items()))
    if kind == "struct":
        fields = inner["kind"].get("plain", {}).get("fields", [])
        for f in map(item, fields):
            if f and f["visibility"] == "public":
                lines.add(f"field {path}.{f['name']}")
    if kind == "enum":
        for v in map(item, inner["variants"]):
            lines.add(f"variant {path}::{v['name']}")
    if kind == "trait":
        for m in map(item, inner["items"]):
            lines.add(f"trait-item {path}::{m['name']}")
    for impl in map(item, inner.get("impls", [])):
        body = impl["inner"]["impl"]
        if body.get("is_synthetic") or body.get("blanket_impl"):
            continue
        if body["trait"] is None:
            for m in map(item, body["items"]):
                if m["visibility"] == "public":
                    lines.add(f"method {path}::{m['name']}")
        else:
            lines.add(f"impl {trait_name(body['trait'])} for {path}")


def emit(it, path, seen):
    kind = next(iter(it["inner"]))
    lines.add(f"{kind} {path}")
    if kind == "module":
        walk(it, path, seen)
    elif kind in ("struct", "enum", "trait", "union"):
        members(it, path)


def walk(module, path, seen):
    if module["id"] in seen:
        return
    seen = seen | {module["id"]}
    for child in map(item, module["inner"]["module"]["items"]):
        if child is None or child["visibility"] != "public":
            continue
        if "use" in child["inner"]:
            use = child["inner"]["use"]
            target = item(use["id"]) if use["id"] is not None else None
            if use["is_glob"]:
                if target is not None and "module" in target["inner"]:
                    walk(target, path, seen)
                continue
            if target is None:
                lines.add(f"use {path}::{use['name']} = {use['source']}")
            else:
                emit(target, f"{path}::{use['name']}", seen)
        elif child.get("name"):
            emit(child, f"{path}::{child['name']}", seen)


root = item(doc["root"])
walk(root, root["name"], frozenset())
print("\n".join(sorted(lines)))
