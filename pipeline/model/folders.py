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
    """transformers loads .bin weights with weights_only=True; say clearly why a file was refused."""
    try:
        yield
    except pickle.UnpicklingError as error:
        raise UserError(
            f"{flag} {folder}: refused: a weights file holds Python objects beyond tensors, and loading them "
            f"could run code (weights_only=True: {str(error).splitlines()[0]}); use model.safetensors"
        ) from None
