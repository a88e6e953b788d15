"""Metadata filters: a small typed language callers use, translated to Weaviate filters.

A filter is a condition, or `all`/`any` of filters:
    {"field": "tags", "op": "any_of", "value": ["billing", "api"]}
    {"all": [{"field": "doc_type", "op": "eq", "value": "markdown"},
             {"field": "meta.year", "op": "gte", "value": 2024}]}
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, Literal, cast

from pydantic import BaseModel, Field, field_validator
from weaviate.classes.query import Filter

from core.errors import InvalidInputError

Scalar = str | int | float | bool
META_KEY = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
BUILTIN_FIELDS = {
    "doc_id": str,
    "source": str,
    "title": str,
    "doc_type": str,
    "tags": str,
    "chunk_index": int,
    "ingested_at": datetime,
}
Op = Literal["eq", "ne", "gt", "gte", "lt", "lte", "any_of", "all_of", "none_of", "like"]


def check_meta_key(key: str) -> None:
    if not META_KEY.match(key):
        raise InvalidInputError(
            f"invalid metadata key {key!r}: use 1-40 lowercase letters, digits or '_', starting with a letter"
        )


def meta_kind(value: object) -> str:
    """Which of the typed properties of a key holds this value: text, number (ints and floats compare
    together) or bool."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "text"
    raise InvalidInputError(f"metadata values are strings, numbers or booleans, not {type(value).__name__}")


def meta_property(key: str, value: Scalar) -> str:
    """The Weaviate property that holds user metadata `key` with values of this one's type.

    A key's values live in one property per type, `meta_<key>__<text|number|bool>`: the properties
    of a collection are shared by all its tenants, so with one property per key the first tenant to
    use a key would fix its type for every other tenant, and the refusal would tell them it had."""
    check_meta_key(key)
    return f"meta_{key}__{meta_kind(value)}"


def meta_value(value: Scalar) -> Scalar:
    """As stored and compared: a number property holds floats (an int sent as one is refused)."""
    return float(value) if meta_kind(value) == "number" else value


class Condition(BaseModel):
    field: str = Field(description="doc_id, source, title, doc_type, tags, chunk_index, ingested_at, or meta.<key>")
    op: Op = Field(description="eq ne gt gte lt lte (scalars); any_of all_of none_of (lists); like (wildcards * ?)")
    value: Scalar | datetime | list[Scalar] = Field(description="A scalar, or a list for any_of/all_of/none_of")

    @field_validator("field")
    @classmethod
    def _known_field(cls, value: str) -> str:
        if value in BUILTIN_FIELDS:
            return value
        if value.startswith("meta."):
            check_meta_key(value.removeprefix("meta."))
            return value
        raise ValueError(f"unknown filter field {value!r}: use {', '.join(BUILTIN_FIELDS)} or meta.<key>")


class AllOf(BaseModel):
    all: list[FilterSpec] = Field(min_length=1, max_length=20, description="Every filter must match")


class AnyOf(BaseModel):
    any: list[FilterSpec] = Field(min_length=1, max_length=20, description="At least one filter must match")


FilterSpec = Annotated[Condition | AllOf | AnyOf, Field(union_mode="left_to_right")]
AllOf.model_rebuild()
AnyOf.model_rebuild()


# What a condition on a metadata property no document of any tenant has ever had matches: nothing, or
# everything for the negations. chunk_index is never negative.
_NOTHING = Filter.by_property("chunk_index").less_than(0)
_EVERYTHING = Filter.by_property("chunk_index").greater_or_equal(0)


def to_weaviate(spec: Condition | AllOf | AnyOf, has_property: Callable[[str], bool], depth: int = 0) -> Any:
    """`has_property(name)`: whether the collection has that metadata property (any tenant may have made it).
    A condition on one it lacks is answered as one on a property this tenant never set, which is what it is:
    no error, so a caller cannot tell which keys other tenants use."""
    if depth > 5:
        raise InvalidInputError("filters nest at most 5 levels deep")
    if isinstance(spec, AllOf):
        return Filter.all_of([to_weaviate(s, has_property, depth + 1) for s in spec.all])
    if isinstance(spec, AnyOf):
        return Filter.any_of([to_weaviate(s, has_property, depth + 1) for s in spec.any])
    value = spec.value
    list_ops = {"any_of", "all_of", "none_of"}
    if spec.op in list_ops and (not isinstance(value, list) or not value):
        raise InvalidInputError(f"filter {spec.field} {spec.op} needs a non-empty list")
    if spec.op not in list_ops and isinstance(value, list):
        raise InvalidInputError(f"filter {spec.field} {spec.op} needs a single value, not a list")
    if spec.op == "like" and not isinstance(value, str):
        raise InvalidInputError(f"filter {spec.field} like needs a string pattern")
    name = spec.field
    if spec.field.startswith("meta."):
        values = value if isinstance(value, list) else [value]
        kinds = {meta_kind(v) for v in values}
        if len(kinds) > 1:
            raise InvalidInputError(f"filter {spec.field} {spec.op} needs values of one type, not {sorted(kinds)}")
        name = meta_property(spec.field.removeprefix("meta."), cast(Scalar, values[0]))
        if not has_property(name):
            return _EVERYTHING if spec.op in ("ne", "none_of") else _NOTHING
        value = (
            [meta_value(v) for v in cast(list[Scalar], values)]
            if isinstance(value, list)
            else meta_value(cast(Scalar, value))
        )
    prop = Filter.by_property(name)
    if isinstance(value, list):
        by_list = {"any_of": prop.contains_any, "all_of": prop.contains_all, "none_of": prop.contains_none}
        return by_list[spec.op](cast(Any, value))
    if spec.op == "like":
        return prop.like(cast(str, value))
    scalar_ops = {
        "eq": prop.equal,
        "ne": prop.not_equal,
        "gt": prop.greater_than,
        "gte": prop.greater_or_equal,
        "lt": prop.less_than,
        "lte": prop.less_or_equal,
    }
    return scalar_ops[spec.op](value)
