"""Checking the fields of a JSON object we wrote and read back, from a declarative list of specs.

    FIELDS = (Field("threshold", NUMBER, within(0, 1)), Field("pooling", str, one_of(POOLINGS)),
              Field("image", dict), Field("lora_alpha", NUMBER, optional=True))
    record = checked(payload, FIELDS, where=path, fix="train the head again")

Each field is checked for presence, type and range; the first problem is a `UserError` naming the
file and the field (dotted for nested objects) and saying what to do. Booleans never pass as numbers
(`true` is not a temperature), and NaN or infinity never pass as numbers at all.
"""

import math
from dataclasses import dataclass

from pipeline.errors import UserError

NUMBER = "number"  # a finite int or float, not a bool
INTEGER = "integer"  # an int, not a bool
_NAMES = {NUMBER: "a number", INTEGER: "a whole number", str: "a string", bool: "true or false", dict: "an object",
          list: "a list"}


@dataclass(frozen=True)
class Field:
    name: str
    kind: object  # NUMBER, INTEGER, str, bool, dict or list
    check: object = None  # value -> a problem (str) or None, run once the type is right
    optional: bool = False  # may be absent or null
    fields: tuple = ()  # for an object: the specs of its own fields, named `name.field` in messages


def checked(payload, fields, where, fix, prefix=""):
    """`payload` (a dict) after checking every field in `fields`; raises on the first bad one."""
    if not isinstance(payload, dict):
        raise UserError(f"{where}: {prefix.rstrip('.') or 'the file'} is {describe(payload)}, not an object; {fix}")
    for field in fields:
        value = payload.get(field.name)
        name = f"{prefix}{field.name}"
        if value is None:
            if field.optional:
                continue
            missing = "is null" if field.name in payload else "is missing"
            raise UserError(f"{where}: field {name!r} {missing}; {fix}")
        if not is_kind(value, field.kind):
            raise UserError(f"{where}: field {name!r} is {describe(value)}, expected {_NAMES[field.kind]}; {fix}")
        if field.fields:
            checked(value, field.fields, where, fix, prefix=f"{name}.")
        problem = field.check(value) if field.check else None
        if problem:
            raise UserError(f"{where}: field {name!r} {problem}; {fix}")
    return payload


def is_kind(value, kind):
    if kind == NUMBER:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if kind == INTEGER:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def describe(value):
    """How a wrong value is named in a message: its JSON spelling, cut short."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def within(low, high):
    return lambda value: None if low <= value <= high else f"is {describe(value)}, outside [{low}, {high}]"


def positive():
    return lambda value: None if value > 0 else f"is {describe(value)}, expected a positive number"


def one_of(choices):
    return lambda value: None if value in choices else f"is {describe(value)}, not one of: {', '.join(choices)}"


def numbers(count, low=-math.inf, high=math.inf):
    """A list of `count` finite numbers in [low, high]."""
    def check(value):
        if len(value) != count or not all(is_kind(v, NUMBER) and low <= v <= high for v in value):
            return f"is {describe(value)}, expected {count} numbers"
        return None
    return check

