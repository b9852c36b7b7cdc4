"""Check a cache for what would make its evaluation lie: cross-split duplicates, label conflicts, label proxies.

Reports exact duplicates across splits (identical image bytes from the cache's
image_sha256; identical titles after normalising case, whitespace and
punctuation, with --data-dir), near duplicates (val/test rows whose centred
image or title vector has cosine >= --threshold to a train row), label
conflicts among them, class balance, placeholder images, the share of test rows
with a cross-split duplicate and, when the split files carry subreddit, domain
or author, how well each alone predicts the label. Writes doctor.json,
doctor.md and doctor_pairs.csv into --out (default <cache-dir>/doctor/).
"""

from dataclasses import dataclass
from pathlib import Path

from pipeline.config import config_from_args, device_name, help_field, number, validate, whole
from pipeline.outputs import claim_output_file, read_small_json

CLEAN_IDS_HEADER = "split\tid"


@dataclass(frozen=True)
class DoctorConfig:
    """What doctor reads and how near a near duplicate is."""

    cache_dir: str = help_field("embedding cache folder written by `embed`", default="runs/cache")
    data_dir: str = help_field("the split files the cache was embedded from (titles, subreddit/domain/author "
                               "columns); None skips the title and label-proxy checks", default=None)
    image_pattern: str = help_field("as for embed, when the split files have no local_image_path", default="{id}.jpg")
    label_column: str = help_field("the cache's label set whose conflicts and balance are checked; None means the "
                                   "one the cache's last embed used", default=None)
    out: str = help_field("report folder; None means <cache-dir>/doctor", default=None)
    threshold: float = help_field("near duplicate: centred cosine to a train row at or above this", default=0.95)
    write_clean_ids: str = help_field("also write the val/test ids without any cross-split duplicate to this file "
                                      "(for train-head/ablate --eval-ids)", default=None)
    overwrite: bool = help_field("replace --write-clean-ids even when it is a split file, a file of a run folder "
                                 "or cache, or a file doctor did not write (without it those are refused)",
                                 default=False)
    device: str = help_field("auto (cuda if available), cpu, cuda or cuda:N", default="auto")
    threads: int = help_field("torch CPU threads; 0 leaves torch's default", default=0)

    def __post_init__(self):
        validate(number(self, "threshold", above=0, at_least=None, below=1.0000001), device_name(self),
                 whole(self, "threads", 0))


def add_arguments(parser):
    from pipeline.config import add_config_arguments

    add_config_arguments(parser, DoctorConfig)


def run(args):
    config = config_from_args(DoctorConfig, args)
    if config.write_clean_ids:  # before any work: never over a split file or anything we did not write
        claim_output_file(config.write_clean_ids, "--write-clean-ids", inputs=_split_files(config),
                          overwrite=config.overwrite, ours=_earlier_clean_ids)
    from pipeline.doctor.run import run_doctor, summary_lines  # heavy imports only when the command runs

    report = run_doctor(config)
    for line in summary_lines(report):
        print(line)
    clean = report.get("clean_ids")
    if clean:
        print(f"Clean val/test ids: {clean['file']} ({clean['rows']} rows; use with train-head --eval-ids)")
    print(f"Report: {report['out']} (doctor.json, doctor.md, doctor_pairs.csv; {report['seconds']} s)")
    return 0


def _split_files(config):
    """The TSV files of --data-dir and of the folder the cache was embedded from (its manifest says)."""
    manifest = read_small_json(Path(config.cache_dir) / "manifest.json") or {}
    embedded = ((manifest.get("config") or {}).get("embed") or {}).get("data_dir") if isinstance(manifest, dict) \
        else None
    folders = [Path(folder) for folder in (config.data_dir, embedded) if isinstance(folder, str)]
    return [path for folder in folders if folder.is_dir() for path in folder.glob("*.tsv")]


def _earlier_clean_ids(path):
    """A clean-ids file of an earlier doctor: it starts with our header line."""
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.readline().rstrip("\n") == CLEAN_IDS_HEADER
    except (OSError, UnicodeDecodeError):
        return False
