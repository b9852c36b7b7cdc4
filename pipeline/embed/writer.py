"""Writing stage one's results: rows gather per part, and a part is written once all its rows are in."""

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from pipeline.data.halves import skipped_before_loading
from pipeline.embed import cache
from pipeline.model.similarity import cosine_similarity

MAX_QUEUED_WRITES = 2  # parts finished but not yet on disk; beyond this the main loop waits (bounded memory)


@dataclass(frozen=True)
class PartJob:
    """What embedding one split into parts needs, given explicitly: stage one fills it from its config
    (`from_config`), predict from its own arguments."""

    folder: str  # where the parts go: a cache folder (or its staging folder), or predict's parts folder
    image_root: str  # the folder the split's image paths are relative to
    part_rows: int  # input rows per part (the unit of resuming)
    max_length: int  # title tokens
    batch_size: int
    num_workers: int  # -1: auto
    on_bad_image: str = "skip"  # skip, fail or text-only
    on_empty_title: str = "skip"  # skip or image-only
    cache_dtype: str = "float32"
    similarity: bool = False  # also write each row's text-image cosine (a same-model pair: model/similarity.py)

    @classmethod
    def from_config(cls, config, folder=None):
        """Stage one's job for `config` (an EmbedConfig), writing into `folder` (default: its cache folder)."""
        return cls(folder=str(folder or config.cache_dir), image_root=config.resolved_image_root,
                   part_rows=config.part_rows, max_length=config.max_length, batch_size=config.batch_size,
                   num_workers=config.num_workers, on_bad_image=config.on_bad_image,
                   on_empty_title=config.on_empty_title, cache_dtype=config.cache_dtype)


class PartWriter:
    """Gathers results per part and writes a part (in a background thread) once all its rows are in."""

    def __init__(self, rows, job, dims, skip_rows=None):
        self.rows = rows
        self.skip_rows = skip_rows or {}
        self.dims = dims
        self.job = job
        self.part_rows = job.part_rows
        self.count = -(-len(rows) // self.part_rows)
        self.done = cache.existing_parts(job.folder, rows.split)
        self.results = {}  # part -> {row: (text, image, (missing, reason) or None, sha256, phash) or skip reason}
        self.keep_image_only = job.on_empty_title == "image-only"
        self.truncated = {}  # part -> titles cut at max_length
        self.writer = ThreadPoolExecutor(max_workers=1)  # overlaps Parquet writing with compute
        self.queued = threading.BoundedSemaphore(MAX_QUEUED_WRITES)
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
            has_title = bool(self.rows.texts[row])
            reason = skipped_before_loading(has_title, self.keep_image_only) or self.skip_rows.get(row)
            if reason:
                self.results.setdefault(part, {})[row] = reason
            else:
                rows.append(row)
        return rows

    def skip(self, row, reason):
        self.results.setdefault(row // self.part_rows, {})[row] = reason
        self.maybe_write(row // self.part_rows)

    def add(self, rows, text, image, truncated=(), missing=None, sha256=None, phash=None):
        """`text[i]`, `image[i]`: row i's vectors, None for a missing half; `missing`: row -> (half, reason);
        `sha256`: row -> the SHA-256 hex of its image file, `phash`: row -> the perceptual hash of its pixels
        (rows without an image have neither)."""
        missing, sha256, phash = missing or {}, sha256 or {}, phash or {}
        for row in truncated:
            self.truncated[row // self.part_rows] = self.truncated.get(row // self.part_rows, 0) + 1
        touched = set()
        for i, row in enumerate(rows):
            self.results.setdefault(row // self.part_rows, {})[row] = (text[i], image[i], missing.get(row),
                                                                       sha256.get(row, ""), phash.get(row))
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
        self.queued.acquire()  # waits only when the writer is MAX_QUEUED_WRITES parts behind
        future = self.writer.submit(self._write, part, results, counts)
        future.add_done_callback(lambda _: self.queued.release())  # also when it fails or is cancelled
        self.futures.append(future)

    def _write(self, part, results, counts):
        ids, text, image, digests, phashes, skipped, partial = [], [], [], [], [], [], []
        zeros = {name: np.zeros(self.dims[name], np.float32) for name in ("text", "image")}
        for row in self.range(part):  # file order, whatever order the batches came in
            result = results[row]
            if isinstance(result, str):
                skipped.append({"id": self.rows.ids[row], "row": row, "reason": result})
                continue
            ids.append(self.rows.ids[row])
            text.append(zeros["text"] if result[0] is None else result[0])
            image.append(zeros["image"] if result[1] is None else result[1])
            digests.append(result[3])
            phashes.append(result[4])
            if result[2] is not None:
                partial.append({"id": self.rows.ids[row], "row": row, "missing": result[2][0],
                                "reason": result[2][1]})
        absent = {(entry["row"], entry["missing"]) for entry in partial}
        kept = [row for row in self.range(part) if not isinstance(results[row], str)]
        has_text = [(row, "text") not in absent for row in kept]
        has_image = [(row, "image") not in absent for row in kept]
        cache.write_part(  # labels live apart from the vectors (embed/labels.py): the part's own are null
            cache.part_path(self.job.folder, self.rows.split, part), ids, None,
            np.stack(text) if ids else np.zeros((0, self.dims["text"]), np.float32),
            np.stack(image) if ids else np.zeros((0, self.dims["image"]), np.float32),
            skipped, dtype=self.job.cache_dtype, counts=counts,
            has_text=has_text, has_image=has_image, partial=partial, image_sha256=digests, image_phash=phashes,
            # From the float32 vectors, before --cache-dtype rounds them.
            similarity=self._similarity(text, image, has_text, has_image),
        )

    def _similarity(self, text, image, has_text, has_image):
        """The part's similarity column (None: the job has none)."""
        if not self.job.similarity:
            return None
        return cosine_similarity(text, image, has_text, has_image) if text else np.zeros(0, np.float32)

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
