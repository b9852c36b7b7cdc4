"""Apply the image-tower checkpoints users really have (CLIP's most often) to an `ImageEncoder` of any family.

Accepted: a PEFT adapter folder (`adapter_config.json` + weights), or a
`.pt/.pth/.bin/.safetensors` file holding a state dict (plain, or nested under
`state_dict`, `model_state_dict` or `model` beside optimizer state and a config)
with LoRA `lora_A`/`lora_B` keys or full fine-tuned tower weights. LoRA is merged
into the base weights (W + alpha / r * B @ A), so embedding costs nothing extra,
for the families with LoRA targets (CLIP, SigLIP, ViT, DINOv2); for the others a
LoRA checkpoint is an error, full weights load. Keys are read under the tower's
own names (`vision_model.` + what the tower's state dict holds), whatever wrapper
saved them. Keys that fit nothing are an error: never a silent partial load.
"""

import math
import pickle
import re
from pathlib import Path

import torch
from safetensors.torch import load_file

from pipeline.errors import UserError
from pipeline.model.folders import check_finite_weights, read_json
from pipeline.model.image_encoder import merge_lora_into

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")
NESTED_STATE_KEYS = ("state_dict", "model_state_dict", "model")
CONFIG_KEYS = ("config", "lora_config", "peft_config", "args", "hparams", "hyper_parameters")
# Wrappers that training code puts in front of CLIP's own names.
_PREFIXES = ("module.", "_orig_mod.", "base_model.model.", "clip_model.", "clip.", "model.", "image_encoder.",
             "vit.", "deit.", "dinov2.")  # the last: a *ForImageClassification's base model
# The text tower and a classifier's head are not used.
_IGNORED_PREFIXES = ("text_model.", "text_projection.", "logit_scale", "logit_bias", "classifier.")
_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<part>[AB])(?:\.[^.]+)?\.weight$")


def apply_clip_checkpoint(encoder, path, lora_alpha=None):
    """Load `path` into `encoder` in place; returns a summary dict for the manifest."""
    path = Path(path)
    state, config = read_checkpoint(path)
    roots = {key.split(".")[0] for key in encoder.vision_model.state_dict()}  # the tower's own top-level names
    state = {_canonical_key(key, roots): value for key, value in state.items()}
    ignored = [key for key in state if key.startswith(_IGNORED_PREFIXES)]
    state = {key: value for key, value in state.items() if key not in ignored}
    lora_pairs, plain = _split_lora(state, path)
    if not lora_pairs and not plain:
        raise UserError(f"{path}: holds no image-tower weights (only {len(ignored)} text-tower or classifier keys); "
                        "give the image encoder's checkpoint")
    if lora_pairs and encoder.family.lora_targets is None:
        raise UserError(f"{path}: a LoRA checkpoint, but the image model is a {encoder.family.name} model, into "
                        "which this tool merges no LoRA (it does for clip, siglip, vit and dinov2); merge the "
                        "adapter with PEFT (merge_and_unload) and pass the full weights, or save the merged model")
    _load_plain(encoder, plain, path, require_all=not lora_pairs)
    summary = {"lora_modules": len(lora_pairs), "full_weights": len(plain), "ignored_text_keys": len(ignored)}
    if lora_pairs:
        summary.update(_merge_all(encoder, lora_pairs, config, lora_alpha, path))
    check_finite_weights(encoder, f"--clip-lora {path}")  # after the merge: NaN weights or an absurd alpha
    return summary


def read_checkpoint(path):
    """(state dict of tensors, config dict) from any accepted layout."""
    if path.is_dir():
        return _read_adapter_folder(path)
    if not path.is_file():
        raise UserError(f"--clip-lora {path}: no such file or folder")
    if path.suffix not in CHECKPOINT_SUFFIXES:
        raise UserError(f"--clip-lora {path}: unknown checkpoint type; "
                        f"use one of {', '.join(CHECKPOINT_SUFFIXES)} or a PEFT adapter folder")
    if path.suffix == ".safetensors":
        return _load_safetensors(path)
    return _unnest(_torch_load(path), path)


def _read_adapter_folder(folder):
    config_path = folder / "adapter_config.json"
    if not config_path.is_file():
        raise UserError(f"--clip-lora {folder}: a folder must be a PEFT adapter with adapter_config.json")
    config = read_json(config_path)
    for key, kind in (("lora_alpha", (int, float)), ("r", int), ("use_rslora", bool), ("use_dora", bool)):
        if key in config and config[key] is not None and (not isinstance(config[key], kind)
                                                          or (kind is int and isinstance(config[key], bool))):
            raise UserError(f"{config_path}: {key} is {config[key]!r}, expected a "
                            f"{'number' if key == 'lora_alpha' else kind.__name__}; fix the adapter config")
    for name in ("adapter_model.safetensors", "adapter_model.bin"):
        if (folder / name).is_file():
            state, _ = read_checkpoint(folder / name)
            return state, config
    raise UserError(f"--clip-lora {folder}: no adapter_model.safetensors or adapter_model.bin "
                    "beside adapter_config.json")


def _load_safetensors(path):
    try:
        from safetensors import safe_open

        with safe_open(path, framework="pt") as handle:
            metadata = handle.metadata() or {}
        config = {key: _number(value) for key, value in metadata.items()}
        return load_file(path), config
    except Exception as error:  # safetensors raises its own error types for bad headers
        raise UserError(f"--clip-lora {path}: not a readable safetensors file ({error})") from None


def _number(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return text


def _torch_load(path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise UserError(
            f"--clip-lora {path}: refused: the file holds Python objects beyond tensors and plain "
            f"containers, and loading them could run code (weights_only=True: {str(error).splitlines()[0]}); "
            "re-save it as a state dict of tensors or as safetensors"
        ) from None
    except (RuntimeError, EOFError, OSError) as error:
        raise UserError(f"--clip-lora {path}: not a readable PyTorch checkpoint ({error})") from None


def _unnest(loaded, path):
    if not isinstance(loaded, dict):
        raise UserError(f"--clip-lora {path}: holds a {type(loaded).__name__}, expected a dict of tensors")
    config = {}
    for key in CONFIG_KEYS:
        if isinstance(loaded.get(key), dict):
            config.update(loaded[key])
    for key in ("lora_alpha", "alpha", "lora_r", "r"):
        if isinstance(loaded.get(key), (int, float)):
            config.setdefault(key, loaded[key])
    for key in NESTED_STATE_KEYS:
        if isinstance(loaded.get(key), dict) and any(torch.is_tensor(v) for v in loaded[key].values()):
            return loaded[key], config
    tensors = {k: v for k, v in loaded.items() if torch.is_tensor(v)}
    if not tensors:
        raise UserError(f"--clip-lora {path}: no tensors at the top level nor under {', '.join(NESTED_STATE_KEYS)}")
    return tensors, config


def _canonical_key(key, roots):
    stripped = True
    while stripped:
        stripped = False
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key, stripped = key[len(prefix):], True
    key = key.replace(".base_layer.", ".")  # PEFT's wrapped Linear keeps the base weight here
    if key.split(".")[0] in roots:
        key = "vision_model." + key  # a checkpoint of the vision tower alone
    return key


def _split_lora(state, path):
    pairs, plain = {}, {}
    for key, value in state.items():
        match = _LORA_KEY.match(key)
        if match:
            pairs.setdefault(match["module"], {})[match["part"]] = value
        elif "lora_" in key:
            raise UserError(f"{path}: LoRA key {key!r} has an unsupported form; expected '<module>.lora_A.weight'")
        else:
            plain[key] = value
    for module, parts in pairs.items():
        if set(parts) != {"A", "B"}:
            raise UserError(f"{path}: LoRA module {module!r} has lora_{''.join(parts)} but not both A and B")
    return pairs, plain


def _load_plain(encoder, plain, path, require_all):
    if not plain:
        return
    own = encoder.state_dict()
    unknown = [k for k in plain if k not in own]
    wrong = [k for k in plain if k in own and tuple(plain[k].shape) != tuple(own[k].shape)]
    missing = [k for k in own if k not in plain] if require_all else []
    if unknown or wrong or missing:
        problems = []
        for label, keys in (("unknown", unknown), ("wrong shape", wrong), ("missing", missing)):
            if keys:
                problems.append(f"{len(keys)} {label} (e.g. {', '.join(keys[:3])})")
        raise UserError(
            f"{path}: keys do not fit the {encoder.family.name} image encoder: {'; '.join(problems)}; expected its "
            "full tower weights (for CLIP 'vision_model.encoder.layers.0.self_attn.q_proj.weight', "
            "'visual_projection.weight') or LoRA keys ('...q_proj.lora_A.weight'), optionally under "
            "'base_model.model.' or 'module.'"
        )
    encoder.load_state_dict({**own, **plain})


def _merge_all(encoder, pairs, config, lora_alpha, path):
    alpha = lora_alpha if lora_alpha is not None else config.get("lora_alpha", config.get("alpha"))
    if alpha is None:
        raise UserError(
            f"{path}: LoRA alpha is not stored in the checkpoint; pass --lora-alpha "
            "(the lora_alpha used in training, often 2 x rank)"
        )
    if config.get("use_dora") or config.get("alpha_pattern") or config.get("rank_pattern"):
        raise UserError(f"{path}: DoRA and per-module rank/alpha patterns are not supported; "
                        "merge the adapter with PEFT and pass full weights")
    try:
        alpha = float(alpha)
    except (TypeError, ValueError):
        alpha = math.nan
    if not (math.isfinite(alpha) and 0 < alpha <= 1e6):
        raise UserError(f"{path}: LoRA alpha {alpha!r} is not a positive finite number; pass --lora-alpha "
                        "(the lora_alpha used in training, often 2 x rank)")
    rslora = bool(config.get("use_rslora"))
    ranks = set()
    for module_name, parts in sorted(pairs.items()):
        try:
            module = encoder.get_submodule(module_name)
        except AttributeError:
            raise UserError(f"{path}: LoRA targets {module_name!r}, "
                            f"which the {encoder.family.name} image encoder does not have") from None
        a, b = parts["A"], parts["B"]
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] == 0:
            raise UserError(f"{path}: LoRA weights for {module_name!r} are not two non-empty matrices "
                            f"(A {tuple(a.shape)}, B {tuple(b.shape)})")
        if not (a.is_floating_point() and b.is_floating_point()
                and bool(torch.isfinite(a).all()) and bool(torch.isfinite(b).all())):
            raise UserError(f"{path}: LoRA weights for {module_name!r} hold NaN or Inf (or are not floats); "
                            "every image vector would be NaN: use an intact checkpoint")
        rank = a.shape[0]
        if b.shape[1] != rank or tuple(module.weight.shape) != (b.shape[0], a.shape[1]):
            raise UserError(f"{path}: LoRA shapes for {module_name!r} (A {tuple(a.shape)}, B {tuple(b.shape)}) "
                            f"do not fit its weight {tuple(module.weight.shape)}")
        merge_lora_into(module, a, b, float(alpha) / (math.sqrt(rank) if rslora else rank))
        ranks.add(rank)
    return {"lora_alpha": float(alpha), "lora_rank": sorted(ranks), "use_rslora": rslora}
