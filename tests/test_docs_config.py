"""docs/configuration.md's reference tables say what streamclf/config.py does.

Every field of every config section has a row, every row names a field, a literal default in the
table is the field's default, and a field's finite upper bound appears in its range column. A new
field, a changed default or a changed limit fails here until the reference says so too.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from streamclf import config as c

DOC = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"

# Section heading in the doc -> the model it documents.
SECTIONS: dict[str, type[BaseModel]] = {
    "mqtt": c.MqttConfig,
    "model": c.ModelConfig,
    "change_gate": c.ChangeGateConfig,
    "labels.<name>": c.LabelConfig,
    "cameras.<name>": c.CameraConfig,
    "events": c.EventsConfig,
    "homeassistant": c.HomeAssistantConfig,
    "metrics": c.MetricsConfig,
    "service": c.ServiceConfig,
    "serve": c.ServeSettings,
}


def _tables() -> dict[str, dict[str, list[str]]]:
    """Section -> documented key -> the row's cells (key, default, range, meaning)."""
    tables: dict[str, dict[str, list[str]]] = {}
    section = None
    for line in DOC.read_text().splitlines():
        heading = re.fullmatch(r"### `([^`]+)`", line.strip())
        if heading:
            section = heading.group(1)
            tables[section] = {}
            continue
        if line.startswith("## "):
            section = None
        if section is None or not line.startswith("| `"):
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        for key in re.findall(r"`([^`]+)`", cells[0]):
            tables[section][key] = cells
    return tables


def _resolve(model: type[BaseModel], key: str):
    """The field a dotted doc key names (``snapshots.quality``, ``zones.<zone>.box``), or None."""
    parts = key.split(".")
    field = None
    while parts:
        name = parts.pop(0)
        field = model.model_fields.get(name)
        if field is None:
            return None
        if parts and parts[0].startswith("<"):
            parts.pop(0)  # a dict of named entries: the value type documents the rest
            sub = _value_model(field.annotation, dict_value=True)
        else:
            sub = _value_model(field.annotation)
        if parts:
            if sub is None:
                return None
            model = sub
    return field


def _value_model(annotation, dict_value: bool = False) -> type[BaseModel] | None:
    args = getattr(annotation, "__args__", ())
    candidates = [args[-1]] if dict_value and args else [annotation, *args]
    for candidate in candidates:
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _documented_fields(model: type[BaseModel], rows: dict[str, list[str]]) -> set[str]:
    """Top-level field names the rows cover (``snapshots.quality`` covers ``snapshots``)."""
    return {key.split(".")[0] for key in rows}


TABLES = _tables()


@pytest.mark.parametrize("section", SECTIONS)
def test_every_field_has_a_row_and_every_row_a_field(section):
    model, rows = SECTIONS[section], TABLES.get(section, {})
    assert rows, f"docs/configuration.md has no table for `{section}`"
    missing = set(model.model_fields) - _documented_fields(model, rows)
    assert not missing, f"`{section}`: fields without a row in docs/configuration.md: {sorted(missing)}"
    unknown = [key for key in rows if _resolve(model, key) is None]
    assert not unknown, f"`{section}`: rows naming no field of {model.__name__}: {unknown}"


def _rows_with_fields():
    for section, model in SECTIONS.items():
        for key, cells in TABLES.get(section, {}).items():
            field = _resolve(model, key)
            if field is not None:
                yield pytest.param(key, field, cells, id=f"{section}.{key}")


@pytest.mark.parametrize("key,field,cells", list(_rows_with_fields()))
def test_literal_defaults_match(key, field, cells):
    literal = re.fullmatch(r"`([^`]*)`", cells[1])
    if not literal or field.default is PydanticUndefined or field.default is None:
        return  # prose ("all cores", "none", "required") or a computed default
    documented = yaml.safe_load(literal.group(1))
    default = field.default.value if hasattr(field.default, "value") else field.default
    assert documented == default, f"`{key}`: the doc says default {documented!r}, the code {default!r}"


def _upper_bound(field) -> float | None:
    for meta in field.metadata:
        for attr in ("le", "lt"):
            bound = getattr(meta, attr, None)
            if isinstance(bound, (int, float)):
                return bound
    return None


@pytest.mark.parametrize("key,field,cells", list(_rows_with_fields()))
def test_upper_bounds_are_documented(key, field, cells):
    bound = _upper_bound(field)
    if bound is None:
        return
    numbers = {float(n.replace(",", "").replace("_", "")) for n in re.findall(r"\d[\d,_]*(?:\.\d+)?", cells[2])}
    assert float(bound) in numbers, f"`{key}`: the range column {cells[2]!r} does not give the upper bound {bound:g}"
