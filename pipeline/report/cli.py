"""Write one self-contained HTML page for a run folder (train-head, finetune-e2e) or an ablation folder.

The page holds the metrics (with intervals when present), the data, the curves,
the worst errors with thumbnails, and the config; images are inline, so it makes
no network request and can be opened from disk or sent as one file.
"""

from pathlib import Path


def add_arguments(parser):
    parser.add_argument("run_dir", metavar="RUN_DIR",
                        help="a train-head or finetune-e2e run folder, or an ablate folder")
    parser.add_argument("--out", default=None, help="the HTML file; None means RUN_DIR/report.html")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace --out even when it is a file of a run folder or cache, or a file that is not "
                             "one of our pages (without it those are refused)")


def run(args):
    from pipeline.report.build import write_report

    out = write_report(Path(args.run_dir), args.out, overwrite=args.overwrite)
    print(f"Report: {out} ({out.stat().st_size / 1024:.0f} KB)")
    return 0
