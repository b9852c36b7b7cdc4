"""Checks on model folders before Hugging Face loads them: no remote code, no pickled code, clear errors."""

import json
import pickle
from contextlib import contextmanager
from pathlib import Path

from pipeline.errors import UserError

# Files through which a folder can ask transformers for code of its own (auto_map).
_CONFIG_FILES = ("config.json", "tokenizer_config.json", "preprocessor_config.json", "processor_config.json")


def read_config(folder, flag):
    """The folder's config.json, refusing folders that ask for code from the checkpoint."""
    folder = Path(folder)
    path = folder / "config.json"
    if not folder.is_dir():
        raise UserError(f"{flag} {folder}: not a folder; give a Hugging Face model folder (config.json + weights)")
    if not path.is_file():
        raise UserError(f"{flag} {folder}: no config.json; give a folder saved with save_pretrained()")
    for name in _CONFIG_FILES:
        settings = read_json(folder / name)
        if settings.get("auto_map"):
            raise UserError(
                f"{folder / name}: the model asks for custom code (auto_map: {sorted(settings['auto_map'])}); "
                "this tool never runs code from a checkpoint (trust_remote_code); use a standard architecture"
            )
    return read_json(path)


def read_json(path):
    """A JSON object from a model folder; {} when the file is absent."""
    path = Path(path)
    if not path.is_file():
        return {}
    try:
        settings = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(settings, dict):
        raise UserError(f"{path}: expected a JSON object, found {type(settings).__name__}")
    return settings


@contextmanager
def refusing_pickled_code(folder, flag):
    """transformers loads .bin weights with weights_only=True; say clearly why a file was refused.

    Its own LOAD REPORT (UNEXPECTED / MISSING keys, logged as a warning on every load, also for a
    Python caller of `Classifier`) is silenced meanwhile: `check_loading_info` checks the keys and
    refuses what matters, with a message that names the flag."""
    from transformers.utils import logging as hf_logging  # here: this module is imported by --help paths

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # its "Loading weights" bar too
    try:
        yield
    except pickle.UnpicklingError as error:
        raise UserError(
            f"{flag} {folder}: refused: a weights file holds Python objects beyond tensors, and loading them "
            f"could run code (weights_only=True: {str(error).splitlines()[0]}); use model.safetensors"
        ) from None
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def check_loading_info(info, name, ignore_missing=(), ignore_unexpected=(), only=None):
    """A model loads whole or not at all: missing, unexpected or mismatched weight keys (from
    `from_pretrained(..., output_loading_info=True)`) are an error naming a few. `only`: the key
    prefixes that matter (e.g. the vision half of a CLIP folder)."""
    def kept(keys, ignore):
        keys = [k if isinstance(k, str) else str(k[0]) for k in keys]
        return [k for k in keys if not k.startswith(tuple(ignore)) and (only is None or k.startswith(only))]

    problems = []
    for label, keys in (("missing", kept(info.get("missing_keys", ()), ignore_missing)),
                        ("unexpected", kept(info.get("unexpected_keys", ()), ignore_unexpected)),
                        ("of the wrong shape", kept(info.get("mismatched_keys", ()), ()))):
        if keys:
            problems.append(f"{len(keys)} {label} (e.g. {', '.join(sorted(keys)[:3])})")
    if problems:
        raise UserError(f"{name}: the weights do not fit the model's config.json: {'; '.join(problems)} weight(s); "
                        "those layers would be random: re-save the complete model with save_pretrained")


def check_finite_weights(module, name):
    """NaN or Inf in a weight makes every vector NaN: an error naming the first such tensor."""
    import torch

    for key, tensor in module.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise UserError(f"{name}: weight {key} holds NaN or Inf; every vector would be NaN: "
                            "use an intact checkpoint")


def has_weight(folder, suffix):
    """Whether the folder's weights hold a tensor whose name ends with `suffix`, read from headers only."""
    import torch

    folder, names = Path(folder), []
    index = read_json(folder / "model.safetensors.index.json")
    if isinstance(index.get("weight_map"), dict):
        names = list(index["weight_map"])
    elif (folder / "model.safetensors").is_file():
        from safetensors import safe_open

        with safe_open(folder / "model.safetensors", framework="pt") as handle:
            names = list(handle.keys())
    elif (folder / "pytorch_model.bin").is_file():
        names = list(torch.load(folder / "pytorch_model.bin", map_location="meta", weights_only=True, mmap=True))
    return any(name.endswith(suffix) for name in names)
