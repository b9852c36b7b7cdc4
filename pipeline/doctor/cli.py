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

from pipeline.config import config_from_args, device_name, help_field, number, validate, whole


@dataclass(frozen=True)
class DoctorConfig:
    """What doctor reads and how near a near duplicate is."""

    cache_dir: str = help_field("embedding cache folder written by `embed`", default="runs/cache")
    data_dir: str = help_field("the split files the cache was embedded from (titles, subreddit/domain/author "
                               "columns); None skips the title and label-proxy checks", default=None)
    image_pattern: str = help_field("as for embed, when the split files have no local_image_path", default="{id}.jpg")
    out: str = help_field("report folder; None means <cache-dir>/doctor", default=None)
    threshold: float = help_field("near duplicate: centred cosine to a train row at or above this", default=0.95)
    write_clean_ids: str = help_field("also write the val/test ids without any cross-split duplicate to this file "
                                      "(for train-head/ablate --eval-ids)", default=None)
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
    from pipeline.doctor.run import run_doctor, summary_lines  # heavy imports only when the command runs

    report = run_doctor(config)
    for line in summary_lines(report):
        print(line)
    clean = report.get("clean_ids")
    if clean:
        print(f"Clean val/test ids: {clean['file']} ({clean['rows']} rows; use with train-head --eval-ids)")
    print(f"Report: {report['out']} (doctor.json, doctor.md, doctor_pairs.csv; {report['seconds']} s)")
    return 0
