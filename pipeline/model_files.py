"""Checks on model folders before Hugging Face loads them: no remote code, clear errors."""

import json
from pathlib import Path

from pipeline.errors import UserError


def read_config(folder, flag):
    """The folder's config.json, refusing folders that ask for code from the checkpoint."""
    folder = Path(folder)
    path = folder / "config.json"
    if not folder.is_dir():
        raise UserError(f"{flag} {folder}: not a folder; give a Hugging Face model folder (config.json + weights)")
    if not path.is_file():
        raise UserError(f"{flag} {folder}: no config.json; give a folder saved with save_pretrained()")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise UserError(f"{path}: not valid JSON ({error})") from None
    if config.get("auto_map"):
        raise UserError(
            f"{path}: the model asks for custom code (auto_map: {sorted(config['auto_map'])}); "
            "this tool never runs code from a checkpoint (trust_remote_code); use a standard architecture"
        )
    return config


def check_model_folder(folder, flag):
    read_config(folder, flag)
