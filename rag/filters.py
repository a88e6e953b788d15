"""Metadata filters: a small typed language callers use, translated to Weaviate filters.

A filter is a condition, or `all`/`any` of filters:
    {"field": "tags", "op": "any_of", "value": ["billing", "api"]}
    {"all": [{"field": "doc_type", "op": "eq", "value": "markdown"},
             {"field": "meta.year", "op": "gte", "value": 2024}]}
"""

from __future__ import annotations

import re
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


def meta_property(key: str) -> str:
    """The Weaviate property that holds user metadata `key`."""
    if not META_KEY.match(key):
        raise InvalidInputError(
            f"invalid metadata key {key!r}: use 1-40 lowercase letters, digits or '_', starting with a letter"
        )
    return f"meta_{key}"


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
            meta_property(value.removeprefix("meta."))
            return value
        raise ValueError(f"unknown filter field {value!r}: use {', '.join(BUILTIN_FIELDS)} or meta.<key>")


class AllOf(BaseModel):
    all: list[FilterSpec] = Field(min_length=1, max_length=20, description="Every filter must match")


class AnyOf(BaseModel):
    any: list[FilterSpec] = Field(min_length=1, max_length=20, description="At least one filter must match")


FilterSpec = Annotated[Condition | AllOf | AnyOf, Field(union_mode="left_to_right")]
AllOf.model_rebuild()
AnyOf.model_rebuild()


def to_weaviate(spec: Condition | AllOf | AnyOf, depth: int = 0) -> Any:
    if depth > 5:
        raise InvalidInputError("filters nest at most 5 levels deep")
    if isinstance(spec, AllOf):
        return Filter.all_of([to_weaviate(s, depth + 1) for s in spec.all])
    if isinstance(spec, AnyOf):
        return Filter.any_of([to_weaviate(s, depth + 1) for s in spec.any])
    name = spec.field if spec.field in BUILTIN_FIELDS else meta_property(spec.field.removeprefix("meta."))
    prop = Filter.by_property(name)
    value = spec.value
    list_ops = {"any_of": prop.contains_any, "all_of": prop.contains_all, "none_of": prop.contains_none}
    if spec.op in list_ops:
        if not isinstance(value, list) or not value:
            raise InvalidInputError(f"filter {spec.field} {spec.op} needs a non-empty list")
        return list_ops[spec.op](cast(Any, value))
    if isinstance(value, list):
        raise InvalidInputError(f"filter {spec.field} {spec.op} needs a single value, not a list")
    if spec.op == "like":
        if not isinstance(value, str):
            raise InvalidInputError(f"filter {spec.field} like needs a string pattern")
        return prop.like(value)
    scalar_ops = {
        "eq": prop.equal,
        "ne": prop.not_equal,
        "gt": prop.greater_than,
        "gte": prop.greater_or_equal,
        "lt": prop.less_than,
        "lte": prop.less_or_equal,
    }
    return scalar_ops[spec.op](value)
