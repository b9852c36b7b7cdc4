"""Command-line flags generated from the frozen config dataclasses, so each option is defined once.

Every field becomes `--field-name` with the field's default and help string;
values are checked by the dataclass's own `__post_init__` (a `UserError` that
names the field and lists the valid choices), not by argparse.
"""

from dataclasses import MISSING, fields

import torch

from pipeline.errors import UserError


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


def add_threads_argument(parser):
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads; 0 keeps torch's default (one per core). On a machine busy "
                             "with other work, 1 can be several times faster than threads that wait on each other")


def apply_threads(threads):
    """Set torch's CPU threads from --threads (the CLI's choice; library code leaves the process setting alone)."""
    if threads < 0:
        raise UserError(f"--threads {threads}: needs to be 0 (torch's default) or a positive number")
    if threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()
