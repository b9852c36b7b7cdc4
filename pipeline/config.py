"""Configs are frozen dataclasses: help on each field, flags generated from the fields, one way to validate.

Every command's flags come from its config dataclasses (`add_config_arguments`),
so help text lives in one place. Every config checks itself in `__post_init__`
with `validate`, which gathers all problems and raises one `UserError` whose
lines read `--flag value: what is wrong; what to do`.

This module imports neither torch nor transformers: `--help` stays fast.
"""

import argparse
import dataclasses
import math
import re
from pathlib import Path

from pipeline.errors import UserError

DEVICES = ("auto", "cpu", "cuda")


def help_field(text, aliases=(), **kwargs):
    """A dataclass field whose `--help` text is `text` (default and other field options in kwargs); `aliases` are
    more flags for it (e.g. `--image-model` beside the field's own `--clip-model`), shown first in `--help`."""
    return dataclasses.field(metadata={"help": text, "aliases": tuple(aliases)}, **kwargs)


def flag(name):
    return "--" + name.replace("_", "-")


# --- validation: each check returns None or one problem line ---------------------------------------

def one_of(config, name, choices):
    value = getattr(config, name)
    if value not in choices:
        return f"{flag(name)} {value!r}: not a valid choice; use one of: {', '.join(map(str, choices))}"
    return None


def whole(config, name, minimum):
    value = getattr(config, name)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        return f"{flag(name)} {value!r}: needs to be a whole number of at least {minimum}; give one"
    return None


def number(config, name, above=None, at_least=None, below=None):
    """A finite float in the given bounds (`above`/`below` exclusive, `at_least` inclusive)."""
    value = getattr(config, name)
    bounds = [f"above {above}" if above is not None else None, f"at least {at_least}" if at_least is not None else None,
              f"below {below}" if below is not None else None]
    wanted = " ".join(["a finite number"] + [bound for bound in bounds if bound])
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (above is None or value > above) and (at_least is None or value >= at_least)
    ok = ok and (below is None or value < below)
    return None if ok else f"{flag(name)} {value!r}: needs to be {wanted}; give one"


def device_name(config, name="device"):
    value = getattr(config, name)
    if value not in DEVICES and not re.fullmatch(r"cuda:\d+", str(value)):
        return f"{flag(name)} {value!r}: not a device; use one of: {', '.join(DEVICES)} (or cuda:N)"
    return None


def existing(config, name, kind="folder"):
    """A path that must exist: kind 'folder' or 'path' (file or folder); None passes (optional)."""
    value = getattr(config, name)
    if value is None:
        return None
    path = Path(value)
    if kind == "folder" and not path.is_dir():
        return f"{flag(name)} {value}: no such folder; check the path"
    if kind == "path" and not path.exists():
        return f"{flag(name)} {value}: no such file or folder; check the path"
    return None


def validate(*problems):
    """Raise one UserError listing every problem (the checks above return None when all is well)."""
    found = [problem for problem in problems if problem]
    if found:
        error = UserError(found[0] if len(found) == 1 else "\n  " + "\n  ".join(found))
        error.problems = found
        raise error


# --- flags ----------------------------------------------------------------------------------------

def add_config_arguments(parser, config_class, defaults=None, skip=()):
    """One `--flag-name` per field (except `skip`); help from the field's metadata.

    `defaults` overrides a field's default for this command only (e.g. end-to-end
    training runs fewer epochs than a head).
    """
    defaults = defaults or {}
    for spec in dataclasses.fields(config_class):
        if spec.name in skip or dataclasses.is_dataclass(spec.type):
            continue
        has_default = spec.default is not dataclasses.MISSING or spec.name in defaults
        default = defaults.get(spec.name, spec.default if has_default else None)
        help_text = spec.metadata.get("help", "")
        names = (*spec.metadata.get("aliases", ()), flag(spec.name))  # one dest, however many spellings
        shown = {"metavar": names[0][2:].replace("-", "_").upper()} if spec.type is not bool else {}
        if spec.type is bool:
            parser.add_argument(*names, dest=spec.name, action=argparse.BooleanOptionalAction, default=default,
                                help=help_text)
        elif spec.type is tuple:
            parser.add_argument(*names, dest=spec.name, type=_comma_list, default=default, required=not has_default,
                                help=help_text + " (comma-separated)", **shown)
        else:
            parser.add_argument(*names, dest=spec.name, type=_optional(spec.type), default=default,
                                required=not has_default, help=help_text, **shown)


def config_from_args(config_class, args, **extra):
    names = {spec.name for spec in dataclasses.fields(config_class)}
    values = {name: getattr(args, name) for name in names if hasattr(args, name)}
    values.update(extra)
    return config_class(**values)


def configs_from_args(args, *config_classes, **extra):
    """One config per class from the flags (`extra[class name]`: more values), every problem of all in one error."""
    built, problems = [], []
    for config_class in config_classes:
        try:
            built.append(config_from_args(config_class, args, **extra.get(config_class.__name__, {})))
        except UserError as error:
            problems.extend(getattr(error, "problems", [str(error)]))
    validate(*problems)
    return built


def _comma_list(text):
    items = tuple(item.strip() for item in text.split(",") if item.strip())
    if not items:
        raise argparse.ArgumentTypeError("needs at least one comma-separated value")
    return items


def _optional(kind):
    def parse(text):
        if text.lower() in ("", "none"):
            return None
        return kind(text)

    parse.__name__ = kind.__name__  # argparse names the type in 'invalid int value' errors
    return parse
