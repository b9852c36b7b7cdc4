"""The one owner of a run folder's encoders.json: what rebuilds the feature extractor its head was trained on.

    text_model, clip_model, clip_lora   {"path": as given, "sha256": content hash[, "in_run": path in the run]}
                                        (clip_lora may be null)
    lora_alpha, pooling, max_length, clip_embedding, image (size, mean, std, max_pixels, draft[, resize, resize_to,
                                        resample: absent when CLIP's]), dims
    text_family, image_family           the towers' families (pipeline.model.families); absent in runs
                                        written before families existed
    class_names, threshold              the run's decision threshold (pipeline.runs.threshold)

train-head builds it from the cache's manifest (`from_manifest`), finetune-e2e from its own export/
(`exported`); both write it through `write_encoders`, and `predict` / `Classifier` read it through
`read_encoders`, which checks every field.
"""

import json
from dataclasses import replace
from pathlib import Path

from pipeline.data.preprocessor import MAX_IMAGE_SIZE, RESAMPLES, RESIZE_MODES
from pipeline.data.splits import CLASS_NAMES
from pipeline.embed.fingerprint import path_sha256
from pipeline.errors import UserError
from pipeline.fields import INTEGER, NUMBER, Field, checked, numbers, one_of, positive, within
from pipeline.files import read_json_object, write_json_atomic
from pipeline.model.config import EMBEDDINGS, POOLINGS

ENCODERS_NAME = "encoders.json"
MODELS = ("text_model", "clip_model", "clip_lora")
_MODEL_FIELDS = (Field("path", str), Field("sha256", str), Field("in_run", str, optional=True))
_IMAGE_FIELDS = (Field("size", INTEGER, within(1, MAX_IMAGE_SIZE)), Field("mean", list, numbers(3, 0, 1)),
                 Field("std", list, numbers(3, 1e-6, 10)), Field("max_pixels", INTEGER, positive()),
                 Field("draft", bool), Field("resize", str, one_of(RESIZE_MODES), optional=True),
                 Field("resize_to", INTEGER, within(1, MAX_IMAGE_SIZE), optional=True),
                 Field("resample", str, one_of(tuple(RESAMPLES.values())), optional=True))
FIELDS = (
    Field("text_model", dict, fields=_MODEL_FIELDS), Field("clip_model", dict, fields=_MODEL_FIELDS),
    Field("clip_lora", dict, fields=_MODEL_FIELDS, optional=True), Field("lora_alpha", NUMBER, positive(),
                                                                         optional=True),
    Field("pooling", str, one_of(POOLINGS)), Field("max_length", INTEGER, positive()),
    Field("clip_embedding", str, one_of(EMBEDDINGS)), Field("image", dict, fields=_IMAGE_FIELDS),
    Field("dims", dict, fields=(Field("text", INTEGER, positive()), Field("image", INTEGER, positive()))),
    Field("class_names", list, lambda names: None if len(names) == 2 and all(isinstance(n, str) for n in names)
          else "expected two class names"),
    Field("threshold", NUMBER, within(0, 1)),
    Field("text_family", str, optional=True),
    Field("image_family", str, optional=True),
)
FIX = "train the head again (or restore the file from the run it came from)"
# A K-class run (K > 2) writes K names and no threshold: it decides by the argmax.
_K_FIELDS = tuple(
    replace(f, check=lambda names: None if len(names) > 2 and all(isinstance(n, str) for n in names)
            else "expected more than two class names") if f.name == "class_names" else
    replace(f, optional=True) if f.name == "threshold" else f for f in FIELDS)


def _fields_for(record):
    names = record.get("class_names")
    return _K_FIELDS if isinstance(names, list) and len(names) > 2 else FIELDS


def from_manifest(manifest):
    """What rebuilt the features of a cache: the models' paths as given and content hashes (the manifest's
    `inputs`), pooling, max length, image settings; None for a cache without model records."""
    inputs, given = manifest.get("inputs") or {}, (manifest.get("config") or {}).get("embed") or {}
    if not inputs.get("text_model"):
        return None

    def model(name):
        return {"path": given.get(name), "sha256": inputs[name]} if inputs.get(name) else None

    image = dict(inputs["image"])
    image.pop("family", None)  # the fingerprint names a non-CLIP image family; the record keeps it as image_family
    return {"text_model": model("text_model"), "clip_model": model("clip_model"), "clip_lora": model("clip_lora"),
            "lora_alpha": inputs.get("lora_alpha"), "pooling": inputs["text"]["pooling"],
            "max_length": inputs["text"]["max_length"], "clip_embedding": image.pop("embedding"), "image": image,
            "dims": manifest["dims"], **_family((manifest.get("config") or {}).get("text_family")),
            **_family((manifest.get("config") or {}).get("image_family"), "image_family")}


def _family(name, key="text_family"):
    return {key: name} if name else {}


def exported(out, pooling, max_length, clip_embedding, image, dims, text_family=None, image_family=None):
    """finetune-e2e's own export/ encoders (LoRA merged into export/clip_model); `in_run` lets a moved run
    folder find them. `image` is the run's ImageSettings as a dict."""
    def model(name):
        path = Path(out) / "export" / name
        return {"path": str(path), "in_run": f"export/{name}", "sha256": path_sha256(path)}

    return {"text_model": model("text_model"), "clip_model": model("clip_model"), "clip_lora": None,
            "lora_alpha": None, "pooling": pooling, "max_length": max_length, "clip_embedding": clip_embedding,
            "image": dict(image), "dims": dict(dims), **_family(text_family),
            **_family(image_family, "image_family")}


def write_encoders(out, encoders, threshold, class_names=CLASS_NAMES):
    """encoders.json in folder `out`: `encoders` (from `from_manifest` or `exported`) with the class names
    and the run's decision threshold (None for K > 2 classes: the argmax decides)."""
    # As JSON will read it back (tuples become lists), so the check below sees what readers will see.
    record = json.loads(json.dumps({**encoders, "class_names": list(class_names),
                                    "threshold": None if threshold is None else float(threshold)}))
    checked(record, _fields_for(record), Path(out) / ENCODERS_NAME, "this is a bug: please report it")
    write_json_atomic(Path(out) / ENCODERS_NAME, record)
    return record


def read_encoders(run_dir):
    """The run's encoders.json, every field checked; a UserError naming the file and the field otherwise."""
    path = Path(run_dir) / ENCODERS_NAME
    record = read_json_object(
        path, "missing, so the run does not say which encoders made its features (runs trained before `predict` "
        "existed, or on a cache without model records, lack it); train the head again with train-head", FIX)
    checked(record, _fields_for(record), path, FIX)
    names = record["class_names"]
    if len(set(names)) != len(names):
        raise UserError(f"{path}: field 'class_names' names a class twice ({names!r}); {FIX}")
    return record
