"""Command-line flags generated from a frozen config dataclass, so help lives in one place."""

import argparse
import dataclasses


def help_field(text, **kwargs):
    """A dataclass field whose `--help` text is `text` (default and other field options in kwargs)."""
    return dataclasses.field(metadata={"help": text}, **kwargs)


def add_config_arguments(parser, config_class, defaults=None, skip=()):
    """One `--flag-name` per field (except `skip`); help from the field's metadata."""
    defaults = defaults or {}
    for spec in dataclasses.fields(config_class):
        if spec.name in skip:
            continue
        flag = "--" + spec.name.replace("_", "-")
        has_default = spec.default is not dataclasses.MISSING or spec.name in defaults
        default = defaults.get(spec.name, spec.default if has_default else None)
        help_text = spec.metadata.get("help", "")
        if spec.type is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help_text)
        elif spec.type is tuple:
            parser.add_argument(flag, type=_comma_list, default=default, required=not has_default,
                                help=help_text + " (comma-separated)")
        else:
            parser.add_argument(flag, type=_optional(spec.type), default=default, required=not has_default,
                                help=help_text)


def config_from_args(config_class, args, **extra):
    names = {spec.name for spec in dataclasses.fields(config_class)}
    values = {name: getattr(args, name) for name in names if hasattr(args, name)}
    values.update(extra)
    return config_class(**values)


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
