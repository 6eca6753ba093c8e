"""The cost model for a client's structured-output schema: bounded work per request.

A ``response_format`` JSON Schema is the one client input whose cost is not
proportional to its size: ``{"type": "array", "minItems": 100000000}`` is 45
bytes and asks for a hundred million items. ``check_schema`` walks the schema
once (iteratively, never deeper than ``MAX_DEPTH``) and refuses, with a message
naming the limit, anything whose *minimal* instance could be large, whose
numbers are absurd, whose references leave the document, or whose patterns are
long. Validation of a model's output against an accepted schema is bounded
separately, in time and size (``server/schema_check.py``), because a regular
expression or ``uniqueItems`` can still be slow on a reply of normal size.

Pure: no I/O, no clocks; ``protocol/messages.py`` calls it while parsing.
"""

from __future__ import annotations

from typing import Any

#: Subschemas in one schema: a model's output format, not a database catalogue.
MAX_NODES = 512
#: Nesting of subschemas (objects in arrays in objects ...).
MAX_DEPTH = 16
#: ``minItems``, ``minLength``, ``minProperties``, ``minContains``: what every instance must have.
MAX_MIN_COUNT = 1_000
#: ``maxItems``, ``maxLength``, ``maxProperties``, ``maxContains``: upper bounds cost nothing, but sane ones.
MAX_MAX_COUNT = 1_000_000
#: Characters in the smallest instance the schema admits (``minItems`` multiply down the nesting).
MAX_MIN_INSTANCE = 16_384
#: Characters in one ``pattern`` (and each ``patternProperties`` key).
MAX_PATTERN_CHARS = 512

_MIN_KEYS = ("minItems", "minLength", "minProperties", "minContains")
_MAX_KEYS = ("maxItems", "maxLength", "maxProperties", "maxContains")
# keywords whose value is one subschema / a list of them / a name -> subschema map
_ONE = (
    "items",
    "additionalItems",
    "contains",
    "not",
    "if",
    "then",
    "else",
    "additionalProperties",
    "propertyNames",
    "unevaluatedItems",
    "unevaluatedProperties",
)
_MANY = ("allOf", "anyOf", "oneOf", "prefixItems")
_MAP = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")


class SchemaTooCostly(ValueError):
    """The schema asks for more work than one request may cause; the message names the limit."""


def check_schema(schema: Any) -> None:
    """Raise ``SchemaTooCostly`` unless ``schema`` is within every bound above."""
    if not isinstance(schema, dict):
        raise SchemaTooCostly("the schema must be a JSON object")
    nodes = 0
    stack: list[tuple[Any, int, str]] = [(schema, 1, "")]
    while stack:
        node, depth, where = stack.pop()
        if isinstance(node, bool):  # true / false are valid subschemas
            continue
        if not isinstance(node, dict):
            raise SchemaTooCostly(f"subschema{_at(where)} must be an object or a boolean")
        nodes += 1
        if nodes > MAX_NODES:
            raise SchemaTooCostly(f"the schema has more than {MAX_NODES} subschemas")
        if depth > MAX_DEPTH:
            raise SchemaTooCostly(f"the schema nests deeper than {MAX_DEPTH} levels")
        _check_keywords(node, where)
        children: list[tuple[Any, str]] = []
        for key in _ONE:
            if key in node:
                children.append((node[key], f"{where}/{key}"))
        for key in _MANY:
            value = node.get(key)
            if isinstance(value, list):
                children += [(sub, f"{where}/{key}/{i}") for i, sub in enumerate(value)]
            elif value is not None and key != "prefixItems":
                raise SchemaTooCostly(f"{key}{_at(where)} must be a list of subschemas")
        for key in _MAP:
            value = node.get(key)
            if isinstance(value, dict):
                children += [(sub, f"{where}/{key}/{name}") for name, sub in value.items()]
        stack += [(child, depth + 1, path) for child, path in children]
    size = min_instance_chars(schema)
    if size > MAX_MIN_INSTANCE:
        raise SchemaTooCostly(
            f"the smallest output this schema admits is over {MAX_MIN_INSTANCE} characters "
            "(minItems and minLength multiply down the nesting)"
        )


def _at(where: str) -> str:
    return f" at {where}" if where else ""


def _check_keywords(node: dict[str, Any], where: str) -> None:
    for key in _MIN_KEYS + _MAX_KEYS:
        if key not in node:
            continue
        value = node[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise SchemaTooCostly(f"{key}{_at(where)} must be a non-negative integer")
        limit = MAX_MIN_COUNT if key in _MIN_KEYS else MAX_MAX_COUNT
        if value > limit:
            raise SchemaTooCostly(f"{key}{_at(where)} is {value}; the limit is {limit}")
    ref = node.get("$ref")
    if ref is not None and (not isinstance(ref, str) or not ref.startswith("#")):
        raise SchemaTooCostly(f"$ref{_at(where)} must point inside the schema (start with '#')")
    if "$dynamicRef" in node or "$recursiveRef" in node:
        raise SchemaTooCostly(f"dynamic references{_at(where)} are not supported")
    patterns = [node["pattern"]] if "pattern" in node else []
    if isinstance(node.get("patternProperties"), dict):
        patterns += list(node["patternProperties"])
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise SchemaTooCostly(f"pattern{_at(where)} must be a string")
        if len(pattern) > MAX_PATTERN_CHARS:
            raise SchemaTooCostly(f"pattern{_at(where)} is longer than {MAX_PATTERN_CHARS} characters")


def min_instance_chars(schema: Any, depth: int = 0) -> int:
    """An upper estimate of the characters in the smallest instance of ``schema`` (capped).

    Follows what a generator of a minimal instance would build: required properties,
    ``minItems`` copies of ``items``, ``minLength`` characters; a ``$ref`` counts as
    small (references are checked by validation, which is bounded in time).
    """
    cap = MAX_MIN_INSTANCE + 1
    if not isinstance(schema, dict) or depth > MAX_DEPTH:
        return 4
    if "const" in schema or "enum" in schema:
        return 16
    for key in ("allOf",):
        if isinstance(schema.get(key), list) and schema[key]:
            return min(cap, sum(min_instance_chars(s, depth + 1) for s in schema[key]))
    for key in ("anyOf", "oneOf"):
        if isinstance(schema.get(key), list) and schema[key]:
            return min(min_instance_chars(s, depth + 1) for s in schema[key])
    kind = schema.get("type", "object")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "array":
        n = _int(schema.get("minItems"))
        return min(cap, 2 + n * (1 + min_instance_chars(schema.get("items", {}), depth + 1)))
    if kind == "string":
        return min(cap, 2 + _int(schema.get("minLength")) * 4)  # a character may be \uXXXX
    if kind == "object":
        props = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
        total = 2
        for name, sub in props.items():
            total += len(name) + 4 + min_instance_chars(sub, depth + 1)
            if total >= cap:
                return cap
        total += _int(schema.get("minProperties")) * 8
        return min(cap, total)
    return 24  # numbers, booleans, null


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0
