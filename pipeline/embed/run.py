"""Stage one: embed every row of the splits once and cache the vectors as Parquet.

Resumable (parts that exist are kept), fingerprinted (a cache built from other
models, checkpoints, settings or data is never reused), streaming (one part in
memory at a time) and accountable (every input row ends up embedded or listed
in skipped.tsv with its reason; the manifest also counts, per split, each class,
titles cut at --max-length, placeholder images, duplicate ids and repaired bytes).
"""

import contextlib
import fcntl
import json
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from pipeline import __version__
from pipeline.embed import cache
from pipeline.data.splits import read_split
from pipeline.device import autocast, decode_workers, resolve_device
from pipeline.distributed import Group
from pipeline.embed.loader import Collate, ImageRows, make_loader, plan_batches
from pipeline.config import help_field
from pipeline.errors import UserError
from pipeline.embed.fingerprint import combine, differences, path_sha256
from pipeline.data.images import DEFAULT_MAX_PIXELS, ImageSettings, normalize_pixels
from pipeline.model.classifier import build_encoders
from pipeline.data.placeholders import find_placeholders
from pipeline.model.text_encoder import POOLINGS, check_max_length, load_tokenizer
from pipeline.model.image_encoder import EMBEDDINGS

BAD_IMAGE_POLICIES = ("skip", "fail")
PLACEHOLDER_POLICIES = ("embed", "skip")
SPLIT_NOTES = ("placeholder_rows", "truncated_titles", "duplicate_ids", "non_utf8_rows")  # manifest keys per split
STALE_POLICIES = ("rebuild", "refuse")
CACHE_DTYPES = ("float32", "float16")


@dataclass(frozen=True)
class EmbedConfig:
    """Everything stage one depends on; saved in the manifest."""

    data_dir: str = help_field("folder with <split>_filtered.tsv or <split>.tsv files")
    text_model: str = help_field("Hugging Face BERT-family model folder (AutoModel + AutoTokenizer)")
    clip_model: str = help_field("Hugging Face CLIP folder (CLIPModel or CLIPVisionModel[WithProjection])")
    cache_dir: str = help_field("where the Parquet cache goes")
    splits: tuple = help_field("splits to embed", default=("train", "val", "test"))
    image_root: str = help_field("folder local_image_path is relative to (default: --data-dir)", default=None)
    image_pattern: str = help_field("image file name when the TSV has no local_image_path column", default="{id}.jpg")
    clip_lora: str = help_field("CLIP checkpoint to merge: PEFT adapter folder or .pt/.pth/.bin/.safetensors", default=None)
    lora_alpha: float = help_field("LoRA alpha when the checkpoint does not store it", default=None)
    pooling: str = help_field(f"text pooling: {', '.join(POOLINGS)}", default="cls")
    max_length: int = help_field("titles are truncated to this many tokens", default=128)
    clip_embedding: str = help_field(f"image vector: {', '.join(EMBEDDINGS)}", default="projected")
    device: str = help_field("auto, cpu, cuda or cuda:N", default="auto")
    batch_size: int = help_field("rows per forward pass", default=64)
    num_workers: int = help_field("DataLoader worker processes for image decoding (0 = in the main process, "
                             "-1 = auto: on CUDA all cores but one, on CPU a quarter of the cores)", default=-1)
    on_bad_image: str = help_field(f"what a bad image row does: {', '.join(BAD_IMAGE_POLICIES)}", default="skip")
    on_stale: str = help_field(f"when the cache was built from other inputs: {', '.join(STALE_POLICIES)}", default="rebuild")
    part_rows: int = help_field("input rows per Parquet part (the unit of resuming)", default=4096)
    cache_dtype: str = help_field(f"storage type of the vectors: {', '.join(CACHE_DTYPES)}", default="float32")
    max_pixels: int = help_field("images with more pixels are refused without decoding", default=DEFAULT_MAX_PIXELS)
    draft: bool = help_field("let JPEGs decode at reduced scale when much larger than needed", default=True)
    on_placeholder: str = help_field(
        f"rows whose image is a placeholder (a small file shared byte for byte by many rows): "
        f"{', '.join(PLACEHOLDER_POLICIES)}; either way they are counted", default="embed")
    placeholder_max_bytes: int = help_field("image files up to this size are checked for placeholders (0 = never)", default=16384)
    placeholder_min_rows: int = help_field("rows that must share one small image file for it to be a placeholder", default=20)

    def __post_init__(self):
        problems = []
        for name, value, choices in (
            ("pooling", self.pooling, POOLINGS), ("clip_embedding", self.clip_embedding, EMBEDDINGS),
            ("on_bad_image", self.on_bad_image, BAD_IMAGE_POLICIES), ("on_stale", self.on_stale, STALE_POLICIES),
            ("cache_dtype", self.cache_dtype, CACHE_DTYPES), ("on_placeholder", self.on_placeholder, PLACEHOLDER_POLICIES),
        ):
            if value not in choices:
                problems.append(f"--{name.replace('_', '-')} {value!r} needs to be one of: {', '.join(choices)}")
        for name in ("batch_size", "max_length", "part_rows", "max_pixels"):
            if getattr(self, name) < 1:
                problems.append(f"--{name.replace('_', '-')} must be at least 1")
        if self.num_workers < -1:
            problems.append("--num-workers must be -1 (auto), 0 or more")
        if self.placeholder_max_bytes < 0:
            problems.append("--placeholder-max-bytes must be 0 or more")
        if self.placeholder_min_rows < 2:
            problems.append("--placeholder-min-rows must be at least 2")
        if not self.splits:
            problems.append("--splits needs at least one split name")
        for name in ("data_dir", "text_model", "clip_model"):
            if not Path(getattr(self, name)).is_dir():
                problems.append(f"--{name.replace('_', '-')} {getattr(self, name)}: no such folder")
        if self.clip_lora and not Path(self.clip_lora).exists():
            problems.append(f"--clip-lora {self.clip_lora}: no such file or folder")
        if problems:
            raise UserError("; ".join(problems))

    @property
    def resolved_image_root(self):
        return self.image_root or self.data_dir


def run_embed(config, group=Group(), log=print):
    """Build (or resume, or reuse) the cache; returns the manifest.

    Under torchrun (`group` from pipeline.distributed.join) every rank embeds a
    disjoint share of the parts; rank 0 alone checks and clears the cache, and
    writes the manifest after a barrier, once every rank has finished.
    """
    log = log if group.is_main else (lambda *_: None)
    splits = {name: read_split(config.data_dir, name, config.image_pattern) for name in config.splits}
    check_max_length(config.text_model, config.max_length)  # before hours of work, not at the first long title
    image_settings = ImageSettings.from_model_folder(
        config.clip_model, max_pixels=config.max_pixels, draft=config.draft,
    )
    # Through JSON once, so tuples compare equal to the lists read back from disk.
    inputs = json.loads(json.dumps(fingerprint_inputs(config, splits, image_settings)))
    fingerprint = combine(inputs)
    cache_dir = Path(config.cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with cache_lock(cache_dir) if group.is_main else contextlib.nullcontext():
        state = group.broadcast(_prepare_cache(cache_dir, fingerprint, inputs, config.on_stale, log)
                                if group.is_main else None)
        if state == "complete":
            log(f"cache {cache_dir} is up to date (fingerprint {fingerprint[:12]}); nothing to embed")
            return cache.read_manifest(cache_dir)
        placeholders = find_placeholders(
            config.resolved_image_root, splits, config.placeholder_max_bytes, config.placeholder_min_rows,
        )
        device = resolve_device(group.device_name(config.device))
        model, lora_summary = build_encoders(
            config.text_model, config.clip_model, config.clip_lora, config.lora_alpha,
            config.pooling, config.clip_embedding,
        )
        model.to(device).eval()
        tokenizer = load_tokenizer(config.text_model)
        if state == "fresh" and group.is_main:
            _start_fresh(cache_dir, fingerprint, inputs)
        group.barrier()  # no rank writes a part before rank 0 has cleared a stale cache
        started = time.perf_counter()
        for name, rows in splits.items():
            skip_rows = dict.fromkeys(placeholders.rows[name], "placeholder_image") if config.on_placeholder == "skip" else {}
            embed_split(model, tokenizer, rows, config, image_settings, device, group.rank, group.world_size, skip_rows)
        group.barrier()  # every rank's parts are on disk
        timings = {"seconds": round(time.perf_counter() - started, 3), "processes": group.world_size}
        if group.is_main:
            manifest = cache.finalize(
                cache_dir, {name: len(rows) for name, rows in splits.items()}, fingerprint, inputs,
                dims=model.dims, config=_manifest_config(config, lora_summary, device, timings, placeholders),
                split_notes={name: {"placeholder_rows": placeholders.count(name), "duplicate_ids": rows.duplicate_ids,
                                    "non_utf8_rows": rows.non_utf8_rows} for name, rows in splits.items()},
            )
        group.barrier()  # the manifest is written
    manifest = cache.read_manifest(cache_dir)
    log(summary(manifest))
    return manifest


def fingerprint_inputs(config, splits, image_settings):
    """What the cache depends on: content hashes of models, checkpoint and split files, and settings."""
    return {
        "format_version": cache.FORMAT_VERSION,
        "text_model": path_sha256(config.text_model),
        "clip_model": path_sha256(config.clip_model),
        "clip_lora": path_sha256(config.clip_lora) if config.clip_lora else None,
        "lora_alpha": config.lora_alpha,
        "splits": {name: path_sha256(rows.path) for name, rows in splits.items()},
        "image_root": str(Path(config.resolved_image_root).resolve()),
        "image_pattern": config.image_pattern,
        "text": {"pooling": config.pooling, "max_length": config.max_length},
        "image": {**asdict(image_settings), "embedding": config.clip_embedding},
        "part_rows": config.part_rows,
        "cache_dtype": config.cache_dtype,
        # The thresholds change the cache only when placeholders are skipped; otherwise only the counts.
        "placeholders": {"on_placeholder": config.on_placeholder, **({
            "max_bytes": config.placeholder_max_bytes, "min_rows": config.placeholder_min_rows,
        } if config.on_placeholder == "skip" else {})},
    }


@contextmanager
def cache_lock(cache_dir):
    """One writer per cache folder; the OS drops the lock if the process dies."""
    with open(cache_dir / ".lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(
                f"{cache_dir}: another `embed` run is writing this cache; wait for it to finish or use another --cache-dir"
            ) from None
        yield


def _prepare_cache(cache_dir, fingerprint, inputs, on_stale, log):
    """'complete', 'resume' or 'fresh' (or refuses a stale cache). A fresh cache is cleared later, by
    `_start_fresh` once the models have loaded, so that a refused model or checkpoint deletes nothing."""
    cache.remove_temp_files(cache_dir)  # from a run that was killed
    old = _read_json(cache_dir / cache.FINGERPRINT_NAME)
    if old is not None and old.get("fingerprint") == fingerprint:
        manifest = _read_json(cache_dir / cache.MANIFEST_NAME)
        if manifest is None:
            return "resume"
        missing = cache.missing_parts(cache_dir, manifest)
        if not missing:
            return "complete"
        log(f"cache {cache_dir}: {len(missing)} part(s) in the manifest are gone (e.g. {missing[0]}); embedding them again")
        (cache_dir / cache.MANIFEST_NAME).unlink()
        return "resume"
    if old is not None:
        changed = ", ".join(differences(old.get("inputs", {}), inputs)) or "unknown"
        if on_stale == "refuse":
            raise UserError(
                f"{cache_dir}: cache was built from other inputs (changed: {changed}); "
                "use another --cache-dir or --on-stale rebuild"
            )
        log(f"cache {cache_dir} was built from other inputs (changed: {changed}); rebuilding it")
    return "fresh"


def _start_fresh(cache_dir, fingerprint, inputs):
    _clear(cache_dir)
    cache.write_json_atomic(cache_dir / cache.FINGERPRINT_NAME, {"fingerprint": fingerprint, "inputs": inputs})


def _read_json(path):
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _clear(cache_dir):
    (cache_dir / cache.MANIFEST_NAME).unlink(missing_ok=True)
    (cache_dir / cache.SKIPPED_NAME).unlink(missing_ok=True)
    for child in cache_dir.iterdir():
        if child.is_dir() and (any(child.glob("part-*.parquet")) or any(child.glob(".part-*"))):
            shutil.rmtree(child)


def embed_split(model, tokenizer, rows, config, image_settings, device, rank=0, world_size=1, skip_rows=None):
    """Embed the parts of one split that this rank owns and that are not on disk yet.

    `skip_rows` maps row -> reason for rows left out before loading (placeholders).
    """
    parts = PartWriter(rows, config, model.dims, skip_rows)
    pending = [p for p in parts.pending() if p % world_size == rank]
    collate = Collate(rows.texts, tokenizer, config.max_length, image_settings.size)
    dataset = ImageRows(config.resolved_image_root, rows.image_paths, image_settings)
    batches = plan_batches([parts.embeddable_rows(p) for p in pending], rows.texts, config.batch_size)
    workers = decode_workers(config.num_workers, device)
    loader = make_loader(dataset, collate, batches, workers, pin_memory=device.type == "cuda")
    total = sum(parts.size(p) for p in pending)
    embedded = 0
    try:
        for part in pending:  # rows skipped before loading (empty titles) may complete a part
            parts.maybe_write(part)
        with tqdm(total=total, desc=f"embed {rows.split}", unit="rows", disable=rank != 0) as bar:
            with torch.inference_mode(), autocast(device):
                for batch in loader:
                    embedded += _embed_batch(model, batch, rows, config, image_settings, device, parts)
                    bar.update(len(batch.rows))
    except BaseException:
        parts.abort()
        raise
    parts.close()
    return embedded


def _embed_batch(model, batch, rows, config, image_settings, device, parts):
    for row, reason in batch.bad:
        if config.on_bad_image == "fail":
            raise UserError(
                f"{rows.path}: line {rows.line(row)}, column local_image_path {rows.image_paths[row]!r}: "
                f"{reason.replace('_', ' ')}; fix the image or pass --on-bad-image skip"
            )
        parts.skip(row, reason)
    if not batch.good:
        return 0
    inputs = {k: v.to(device, non_blocking=True) for k, v in batch.text.items()}
    pixels = batch.pixels.to(device, non_blocking=True)
    inputs["pixel_values"] = normalize_pixels(pixels, image_settings)
    vectors = model.encode(inputs)
    good_rows = [batch.rows[i] for i in batch.good]
    parts.add(good_rows, vectors["text_emb"].float().cpu().numpy(), vectors["image_emb"].float().cpu().numpy(),
              truncated=batch.truncated)
    return len(good_rows)


class PartWriter:
    """Gathers results per part and writes a part (in a background thread) once all its rows are in."""

    def __init__(self, rows, config, dims, skip_rows=None):
        self.rows = rows
        self.skip_rows = skip_rows or {}
        self.dims = dims
        self.config = config
        self.part_rows = config.part_rows
        self.count = -(-len(rows) // self.part_rows)
        self.done = cache.existing_parts(config.cache_dir, rows.split)
        self.results = {}  # part -> {row: (text_vec, image_vec) or reason}
        self.truncated = {}  # part -> titles cut at max_length
        self.writer = ThreadPoolExecutor(max_workers=1)  # overlaps Parquet writing with compute
        self.futures = []

    def pending(self):
        return [p for p in range(self.count) if p not in self.done]

    def range(self, part):
        return range(part * self.part_rows, min((part + 1) * self.part_rows, len(self.rows)))

    def size(self, part):
        return len(self.range(part))

    def embeddable_rows(self, part):
        rows = []
        for row in self.range(part):
            reason = self.skip_rows.get(row) if self.rows.texts[row] else "empty_title"
            if reason:
                self.results.setdefault(part, {})[row] = reason
            else:
                rows.append(row)
        return rows

    def skip(self, row, reason):
        self.results.setdefault(row // self.part_rows, {})[row] = reason
        self.maybe_write(row // self.part_rows)

    def add(self, rows, text, image, truncated=()):
        for row in truncated:
            self.truncated[row // self.part_rows] = self.truncated.get(row // self.part_rows, 0) + 1
        touched = set()
        for i, row in enumerate(rows):
            self.results.setdefault(row // self.part_rows, {})[row] = (text[i], image[i])
            touched.add(row // self.part_rows)
        for part in touched:
            self.maybe_write(part)

    def maybe_write(self, part):
        results = self.results.get(part, {})
        if len(results) < self.size(part):
            return
        del self.results[part]
        self._check_writer()
        counts = {"truncated_titles": self.truncated.pop(part, 0)}
        self.futures.append(self.writer.submit(self._write, part, results, counts))

    def _write(self, part, results, counts):
        ids, labels, text, image, skipped = [], [], [], [], []
        for row in self.range(part):  # file order, whatever order the batches came in
            result = results[row]
            if isinstance(result, str):
                skipped.append({"id": self.rows.ids[row], "row": row, "reason": result})
                continue
            ids.append(self.rows.ids[row])
            labels.append(self.rows.labels[row])
            text.append(result[0])
            image.append(result[1])
        cache.write_part(
            cache.part_path(self.config.cache_dir, self.rows.split, part), ids, labels,
            np.stack(text) if ids else np.zeros((0, self.dims["text"]), np.float32),
            np.stack(image) if ids else np.zeros((0, self.dims["image"]), np.float32),
            skipped, dtype=self.config.cache_dtype, counts=counts,
        )

    def _check_writer(self):
        for future in [f for f in self.futures if f.done()]:
            future.result()  # re-raise a failed write here, not at the end
            self.futures.remove(future)

    def abort(self):
        """After an error: finish the write in progress, drop the queued ones (a rerun redoes them),
        so that no write outlives the cache lock."""
        self.writer.shutdown(wait=True, cancel_futures=True)

    def close(self):
        self.writer.shutdown(wait=True)
        for future in self.futures:
            future.result()
        if self.results:
            raise RuntimeError(f"{self.rows.split}: parts {sorted(self.results)} never completed")


def _manifest_config(config, lora_summary, device, timings, placeholders):
    """Settings and circumstances of this run; `timings` covers embedding only (this run's rows, all ranks)."""
    import transformers

    return {
        "embed": {**asdict(config), "splits": list(config.splits)},
        "clip_lora": lora_summary,
        "device": str(device),
        "timings": timings,
        "placeholder_files": placeholders.files,  # the most shared ones
        "versions": {"pipeline": __version__, "torch": torch.__version__, "transformers": transformers.__version__},
    }


def summary(manifest):
    """Per split: rows read, embedded, skipped by reason, embedded rows per class, and data notes."""
    lines = [f"{'split':<8} {'read':>8} {'embedded':>9} {'skipped':>8} {'fake':>8} {'real':>8}  skipped by reason; notes"]
    warnings = []
    for name, info in manifest["splits"].items():
        reasons = ", ".join(f"{k}={v}" for k, v in sorted(info["skipped_by_reason"].items())) or "-"
        notes = "".join(f"; {key}={info[key]}" for key in SPLIT_NOTES if info.get(key))
        classes = info.get("class_counts", {})
        lines.append(f"{name:<8} {info['rows_read']:>8} {info['rows_embedded']:>9} {info['rows_skipped']:>8} "
                     f"{classes.get('fake', 0):>8} {classes.get('real', 0):>8}  {reasons}{notes}")
        present = [label for label, count in classes.items() if count]
        if not present:
            warnings.append(f"warning: split {name!r} has no embedded rows")
        elif len(present) == 1:
            warnings.append(f"warning: split {name!r} has embedded rows of one class only ({present[0]}); "
                            "a classifier cannot learn or be scored on it")
    return "\n".join(lines + warnings)
