"""Command-line flags generated from the frozen config dataclasses, so each option is defined once.

Every field becomes `--field-name` with the field's default and help string;
values are checked by the dataclass's own `__post_init__` (a `UserError` that
names the field and lists the valid choices), not by argparse.
"""

from dataclasses import MISSING, fields


def add_config_arguments(parser, config_cls, title, skip=()):
    group = parser.add_argument_group(title)
    for spec in fields(config_cls):
        if spec.name in skip:
            continue
        default = spec.default if spec.default is not MISSING else spec.default_factory()
        if isinstance(default, tuple):
            default = ",".join(default)  # a tuple field is given comma-separated, e.g. text,image
        group.add_argument(f"--{spec.name.replace('_', '-')}", dest=spec.name, default=default,
                           type=type(default), help=spec.metadata.get("help"))


def config_from_args(config_cls, args, **overrides):
    """Build `config_cls` from the parsed flags it owns, plus `overrides` (e.g. dims from a manifest)."""
    values = {spec.name: getattr(args, spec.name) for spec in fields(config_cls) if hasattr(args, spec.name)}
    return config_cls(**{**values, **overrides})
