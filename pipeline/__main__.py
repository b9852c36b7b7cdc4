"""Command line: `python -m pipeline <command> [flags]`.

Each command lives in its room's `cli.py` with `add_arguments(parser)` and
`run(args) -> int`. A command module imports only its configs (no torch, no
transformers), so `--help` stays fast; `run` imports the heavy modules. This
file is the only place that turns a `UserError` into `error: ...` and exit
status 2.
"""

import argparse
import importlib
import os
import sys

from pipeline.errors import UserError

# Tokenisers run in DataLoader worker processes; their own thread pool would fight the fork.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# command name -> module; each holds only flags and imports its heavy modules inside run().
COMMANDS = {
    "embed": "pipeline.embed.cli",
    "train-head": "pipeline.train.cli",
    "ablate": "pipeline.train.ablate_cli",
    "finetune-e2e": "pipeline.e2e.cli",
    "predict": "pipeline.predict.cli",
    "bench": "pipeline.bench.cli",
    "report": "pipeline.report.cli",
    "doctor": "pipeline.doctor.cli",
    "compare": "pipeline.compare.cli",
    "serve": "pipeline.serve.cli",
}


def _available_commands():
    available = {}
    for name, module_name in COMMANDS.items():
        try:
            available[name] = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name != module_name:  # a real missing dependency, not a missing command
                raise
    return available


def _quiet_libraries():
    """Our own progress bars and messages are the ones worth reading."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


class _DefaultsHelp(argparse.ArgumentDefaultsHelpFormatter):
    """Adds `(default: ...)` to a flag's help, unless the flag is required or its help already says
    what the default is (`(default: --data-dir) (default: None)` said it twice, the second wrongly)."""

    def _get_help_string(self, action):
        if action.required or "default:" in (action.help or "") or "default " in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m pipeline",
        description="Multimodal (text + image) classification with cached embeddings.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in _available_commands().items():
        summary = (module.__doc__ or "").strip().splitlines()[0]
        sub = commands.add_parser(
            name, help=summary, description=(module.__doc__ or "").strip(),
            formatter_class=_DefaultsHelp,
        )
        module.add_arguments(sub)
        if getattr(module, "WRITES_REPORT", False):
            from pipeline.report.build import add_report_argument

            add_report_argument(sub)
        sub.set_defaults(command_run=module.run)  # not `run`: predict has a --run flag
    return parser


def _write_report(args, code):
    """The page of the folder a command made (train-head, ablate, finetune-e2e set `args.report_folder`),
    unless --no-report. Written here so that the stages never import `report`, which reads their folders."""
    folder = getattr(args, "report_folder", None)
    if code == 0 and folder is not None and args.report:
        from pipeline.report.build import write_report

        out = write_report(folder, overwrite=getattr(args, "overwrite", False))  # the run took --overwrite
        print(f"Report: {out} ({out.stat().st_size / 1024:.0f} KB)")


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    # What the run record (run.json) keeps as the command that made a folder.
    args.command_line = ["python", "-m", "pipeline", *(sys.argv[1:] if argv is None else argv)]
    _quiet_libraries()
    try:
        code = args.command_run(args)
        _write_report(args, code)
        return code
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
