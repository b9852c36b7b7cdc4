"""The one owner of a run folder's schema: its record, run.json, written once by the command that made
the folder and read by report, predict, `Classifier` (and compare).

    format_version     FORMAT_VERSION; a folder without run.json (written before it existed) is version 0
    kind               train-head, finetune-e2e, ablate or compare
    pipeline_version   the package version that wrote it
    command_line       the command as typed (a list of words)
    cache              {"dir", "fingerprint"} of the cache the run was trained on; null for finetune-e2e
    encoders           what made its features (as encoders.json, see pipeline.runs.encoders); null if unknown
    data               the split files it read itself: {"data_dir", "image_root", "image_pattern"} (e2e only)
    label_column, class_names
    threshold          the decision threshold and how it was chosen (pipeline.runs.threshold); null for
                       ablate and compare, whose runs each have their own

Readers never guess a run's kind from the keys of config.json: they call `read_run`, which for a
folder without run.json infers its record once, here (`_legacy_record`).
"""

import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import pipeline
from pipeline.data.splits import CLASS_NAMES, LABEL_COLUMN
from pipeline.errors import UserError
from pipeline.fields import INTEGER, NUMBER, Field, checked, one_of, within
from pipeline.files import read_json_object, write_json_atomic
from pipeline.runs import encoders as encoders_record
from pipeline.runs import readers, threshold

RUN_NAME = "run.json"
FORMAT_VERSION = 1
READABLE_VERSIONS = (1,)
KINDS = ("train-head", "finetune-e2e", "ablate", "compare")
FIX = "rerun the command that made the folder (or restore run.json from the run it came from)"
_THRESHOLD_FIELDS = (Field("threshold", NUMBER, within(0, 1)), Field("source", str, one_of(("tuned", "default"))),
                     Field("tuned", NUMBER, within(0, 1)), Field("tuned_on", str), Field("rows_per_class", list))
FIELDS = (
    Field("format_version", INTEGER), Field("kind", str, one_of(KINDS)), Field("pipeline_version", str),
    Field("command_line", list, optional=True),
    Field("cache", dict, fields=(Field("dir", str), Field("fingerprint", str, optional=True)), optional=True),
    Field("encoders", dict, optional=True), Field("data", dict, optional=True),
    Field("label_column", str), Field("class_names", list),
    Field("threshold", dict, fields=_THRESHOLD_FIELDS, optional=True),
)


@dataclass(frozen=True)
class RunRecord:
    folder: Path
    kind: str
    format_version: int  # 0: a folder from before run.json, its record inferred by `read_run`
    pipeline_version: str = None
    command_line: list = None
    cache: dict = None
    encoders: dict = None
    data: dict = None
    label_column: str = LABEL_COLUMN
    class_names: tuple = CLASS_NAMES
    threshold: dict = None  # pipeline.runs.threshold.Decision.as_dict()

    @property
    def legacy(self):
        return self.format_version == 0

    @property
    def decision_threshold(self):
        """The threshold every file and command of this run decides at (0.5 for a run without one)."""
        return self.threshold["threshold"] if self.threshold else threshold.DEFAULT

    @property
    def tuned_threshold(self):
        return self.threshold["tuned"] if self.threshold else None


def write_run_record(out, kind, *, cache=None, encoders=None, decision=None, data=None, command_line=None,
                     class_names=CLASS_NAMES, label_column=LABEL_COLUMN):
    """Write run.json into folder `out` and return its RunRecord. `cache`: {"dir", "fingerprint"};
    `decision`: a `threshold.Decision` (None for K > 2 classes: the argmax decides); `command_line`: the
    words typed (default: this process's argv); `class_names`: the labels' classes in label order, those of
    `label_column`."""
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r} is not one of {KINDS}")
    payload = {
        "format_version": FORMAT_VERSION, "kind": kind, "pipeline_version": pipeline.__version__,
        "command_line": list(command_line if command_line is not None else ["python", *sys.argv]),
        "cache": None if cache is None else {"dir": str(cache["dir"]), "fingerprint": cache.get("fingerprint")},
        "encoders": encoders, "data": data, "label_column": label_column, "class_names": list(class_names),
        "threshold": None if decision is None else decision.as_dict(),
    }
    write_json_atomic(Path(out) / RUN_NAME, payload)
    return _record(out, payload)


def read_run(run_dir):
    """The record of a run folder: run.json checked field by field, or, for a folder from before run.json,
    the record inferred from the files it has (its config.json's command, metrics.json's val counts)."""
    run_dir = Path(run_dir)
    path = run_dir / RUN_NAME
    if not path.exists():
        return _legacy_record(run_dir)
    payload = read_json_object(path, "missing", FIX)
    checked(payload, FIELDS, path, FIX)
    if payload["format_version"] not in READABLE_VERSIONS:
        raise UserError(f"{path}: format_version {payload['format_version']!r}; this version of the package "
                        f"reads run records of format {', '.join(map(str, READABLE_VERSIONS))}: update the package")
    return _record(run_dir, payload)


def _record(folder, payload):
    fields = {k: payload.get(k) for k in ("kind", "format_version", "pipeline_version", "command_line", "cache",
                                          "encoders", "data", "label_column", "threshold")}
    return RunRecord(folder=Path(folder), class_names=tuple(payload["class_names"]), **fields)


def _legacy_record(run_dir):
    """A folder from before run.json: its kind from config.json's `command` (or ablation.csv), its decision
    threshold by today's rule from metrics.json's val-tuned threshold and val class counts."""
    if (run_dir / "ablation.csv").is_file():
        config = readers.read_config(run_dir) if (run_dir / "config.json").is_file() else {}
        return RunRecord(folder=run_dir, kind="ablate", format_version=0, cache=_cache_of(config),
                         pipeline_version=config.get("pipeline_version"))
    config = readers.read_config(run_dir)
    kind = config.get("command")
    if kind not in ("train-head", "finetune-e2e"):
        raise UserError(f"{run_dir / 'config.json'}: field 'command' is {kind!r}, not one of: train-head, "
                        f"finetune-e2e; point at a run folder written by one of those")
    val = readers.read_metrics(run_dir)["val"]
    rows_per_class = [sum(row) for row in val["confusion_matrix"]]
    decision = threshold.decide(val["tuned"]["threshold"], rows_per_class)
    encoders = None
    if (run_dir / encoders_record.ENCODERS_NAME).is_file():
        encoders = encoders_record.read_encoders(run_dir)
        encoders = {k: v for k, v in encoders.items() if k not in ("class_names", "threshold")}
    data = config.get("data") if kind == "finetune-e2e" else None
    return RunRecord(folder=run_dir, kind=kind, format_version=0, pipeline_version=config.get("pipeline_version"),
                     cache=_cache_of(config), encoders=encoders, data=_data_of(data), threshold=decision.as_dict())


def _cache_of(config):
    cache = config.get("cache")
    return {"dir": cache["dir"], "fingerprint": cache.get("fingerprint")} if isinstance(cache, dict) else None


def _data_of(data):
    return None if data is None else {k: data.get(k) for k in ("data_dir", "image_root", "image_pattern")}


def data_of_e2e(data_config):
    """The `data` entry of a finetune-e2e record from its EmbedConfig (the split files it read itself)."""
    return _data_of(asdict(data_config))
