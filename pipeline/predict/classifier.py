"""`Classifier`: a run folder's encoders and head, loaded once, for new posts from Python.

    clf = Classifier.from_run("runs/demo/head", device="auto")
    clf.predict(["a title", ...], ["img.jpg", PIL.Image, None, ...])   # -> pandas.DataFrame
    clf.predict_tsv("new_posts.tsv")                                  # what `predict` writes, as a DataFrame

Rows become the model's inputs through the one batch preparation
(`pipeline.model.batch`; titles in chunks of similar length on the CPU,
`predict/text_chunks.py`), and the head scores float32 vectors
outside autocast, as it scores stage one's cached ones, so the CLI and the API
give the same probabilities for the same rows.
"""

import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pipeline.data.classes import BINARY_CLASS_NAMES, DEFAULT_LABEL_COLUMN
from pipeline.data.halves import BOTH, IMAGE, TEXT, surviving_half
from pipeline.data.images import BadImage, ImageSettings, image_pixels, load_image
from pipeline.device import autocast, resolve_device
from pipeline.errors import UserError
from pipeline.model.batch import pixel_values
from pipeline.model.classifier import build_encoders
from pipeline.model.head import load_head
from pipeline.model.image_encoder import check_image_size
from pipeline.model.similarity import SIMILARITY, cosine_similarity
from pipeline.model.text_encoder import check_max_length, load_tokenizer
from pipeline.predict import api_inputs
from pipeline.predict import encoders as guard
from pipeline.predict.config import parse_threshold
from pipeline.predict.run import predict_file, read_results, results_frame
from pipeline.predict.text_chunks import encode_titles
from pipeline.runs.readers import read_calibration
from pipeline.runs.record import read_run
from pipeline.train.calibration import apply_temperature, apply_temperature_logits

SCORE_BATCH = 8192  # the head alone: bigger batches are just faster


def stored_temperature(head_folder):
    """The temperature `--calibrate temperature` stored with the head (head_config.json), or None."""
    return read_calibration(head_folder)


def run_threshold(record, threshold):
    """The threshold to decide at: "run" = the run's decision threshold (pipeline.runs.threshold), "tuned" =
    its val-tuned one even when the rule does not use it, or a number in [0, 1]."""
    value = parse_threshold(threshold)
    if value is None:
        raise UserError(f"--threshold {threshold!r}: not a threshold; use 'run', 'tuned' or a number from 0 to 1")
    if value == "run":
        return record.decision_threshold
    if value == "tuned":
        if record.tuned_threshold is None:
            raise UserError(f"{record.folder}: the run has no tuned threshold; use --threshold run or a number")
        return record.tuned_threshold
    return value


def _checked_options(threshold, batch_size, max_pixels):
    """`from_run`'s own arguments, checked before any model loads; returns the threshold ('run', 'tuned' or a
    float)."""
    number = None if isinstance(threshold, bool) else parse_threshold(threshold)
    if number is None:
        raise UserError(f"threshold {threshold!r}: not a threshold; use 'run', 'tuned' or a number from 0 to 1")
    for name, value in (("batch_size", batch_size), ("max_pixels", max_pixels)):
        if value is not None and not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            raise UserError(f"{name} {value!r}: give a whole number of 1 or more")
    if batch_size is None:
        raise UserError("batch_size None: give a whole number of 1 or more (default 64)")
    return number


def _host(vectors):
    """A float32 NumPy copy of (N, D) vectors, a tensor on any device or an array."""
    return torch.as_tensor(vectors).detach().float().cpu().numpy()


def _argmax_only(threshold, class_names):
    """K > 2 classes are decided by the argmax: a threshold other than the run's own is refused."""
    if threshold != "run":
        raise UserError(f"threshold {threshold!r}: this run has {len(class_names)} classes "
                        f"({', '.join(class_names)}) and decides by the highest probability; a threshold applies to "
                        "two-class runs only; leave it out")
    return None


class Classifier:
    def __init__(self, model, tokenizer, settings, encoders, threshold, device, run_dir, warnings=(), batch_size=64,
                 temperature=None, class_names=BINARY_CLASS_NAMES, label_column=DEFAULT_LABEL_COLUMN):
        self.class_names = tuple(class_names)  # in label order; K > 2 decides by the argmax (threshold None)
        self.label_column = label_column  # the column the run learned: what predict reads labels from
        self.model = model  # EncodersWithHead with the run's head, in eval mode
        self.temperature = temperature  # from `train-head --calibrate temperature`; None: the plain softmax
        self.tokenizer = tokenizer
        self.settings = settings  # ImageSettings the head's features were made with
        self.encoders = encoders  # paths, content hashes and settings, as `guard.resolve` returns them
        self.threshold = threshold
        self.device = device
        self.run_dir = Path(run_dir)
        self.warnings = list(warnings)
        self.batch_size = batch_size

    @classmethod
    def from_run(cls, run_dir, device="auto", threshold="run", text_model=None, clip_model=None, clip_lora=None,
                 pooling=None, allow_other_encoders=False, batch_size=64, max_pixels=None):
        """Load the run's head and the encoders it was trained on (checked by content; see `predict.encoders`).
        `threshold`: "run" (the run's decision threshold, as in its predictions files), "tuned" or a number."""
        threshold = _checked_options(threshold, batch_size, max_pixels)  # before any model loads
        run_dir = Path(run_dir)
        run = read_run(run_dir)
        if run.kind not in ("train-head", "finetune-e2e"):
            raise UserError(f"{run_dir}: a {run.kind} folder, which holds no single head; point at a run folder "
                            "of train-head or finetune-e2e")
        record = guard.read_record(run_dir)
        class_names = tuple(record["class_names"])
        decide_at = run_threshold(run, threshold) if len(class_names) == 2 else _argmax_only(threshold, class_names)
        given = {"text_model": text_model, "clip_model": clip_model, "clip_lora": clip_lora, "pooling": pooling}
        encoders, warnings = guard.resolve(run_dir, record, given, allow_other_encoders)
        device = resolve_device(device)
        model, _ = build_encoders(encoders["text_model"], encoders["clip_model"], encoders["clip_lora"],
                                  encoders["lora_alpha"], encoders["pooling"], encoders["clip_embedding"])
        model.head = load_head(run_dir / "head", dims=model.dims,
                               dims_source=f"the encoders {encoders['text_model']} and {encoders['clip_model']}")
        if model.head.config.num_classes != len(class_names):
            raise UserError(f"{run_dir}: its head has {model.head.config.num_classes} outputs but encoders.json names "
                            f"{len(class_names)} classes; train the head again")
        image = {**encoders["image"], "mean": tuple(encoders["image"]["mean"]), "std": tuple(encoders["image"]["std"])}
        if max_pixels is not None:
            image["max_pixels"] = max_pixels
        settings, tokenizer = ImageSettings(**image), load_tokenizer(encoders["text_model"])
        where = run_dir / "encoders.json"
        check_max_length(encoders["text_model"], encoders["max_length"], tokenizer, source=f"{where}: max_length")
        check_image_size(encoders["clip_model"], settings.size, f"{where} (image.size)")
        return cls(model.to(device).eval(), tokenizer, settings, encoders,
                   decide_at, device, run_dir, warnings,
                   batch_size, temperature=stored_temperature(run_dir / "head"), class_names=class_names,
                   label_column=run.label_column)

    def check_text_only(self):
        """Refuse `--text-only` for a head that cannot score a post from its title alone."""
        if not self.can_score([True], [False])[0]:
            raise UserError(f"--text-only: the head in {self.run_dir} cannot score a post without its image (it has "
                            "no missing vectors, or it reads only images); give the images (--image-root) or "
                            "use a run trained with missing vectors")

    @property
    def fingerprint(self):
        """What the features depend on: content hashes and settings (not the paths)."""
        return {k: v for k, v in self.encoders.items() if k not in guard.MODELS}

    def can_score(self, has_text, has_image):
        """(N,) bool: rows the head can score. A whole post always; a half-post when the head has missing
        vectors and reads the half that is there (or when it reads only that half)."""
        present = {"text": np.asarray(has_text, dtype=bool), "image": np.asarray(has_image, dtype=bool)}
        modalities = self.model.head.config.modalities
        has_all = np.logical_and.reduce([present[m] for m in modalities])
        has_any = np.logical_or.reduce([present[m] for m in modalities])
        return has_any if self.model.head.supports_missing else has_all

    @torch.inference_mode()
    def score_features(self, text_emb, image_emb, has_text=None, has_image=None):
        """Cached vectors (N, Dt), (N, Di) and presence masks (default: all there) -> (N, K) float64 class
        probabilities in `class_names` order, as train-head scores them (calibrated when it was). A head
        that reads the similarity gets it computed from these vectors, as
        stage one computed the cached one (pipeline.model.similarity)."""
        rows = len(text_emb)
        masks = {"has_text": np.ones(rows, bool) if has_text is None else np.asarray(has_text, dtype=bool),
                 "has_image": np.ones(rows, bool) if has_image is None else np.asarray(has_image, dtype=bool)}
        if SIMILARITY in self.model.head.config.features:
            masks[SIMILARITY] = cosine_similarity(_host(text_emb), _host(image_emb), **masks)
        probs = []
        for start in range(0, rows, SCORE_BATCH):
            part = slice(start, start + SCORE_BATCH)
            features = {"text_emb": torch.as_tensor(text_emb[part]).float().to(self.device),
                        "image_emb": torch.as_tensor(image_emb[part]).float().to(self.device),
                        **{k: torch.as_tensor(v[part]).to(self.device) for k, v in masks.items()}}
            logits = self.model.head(features).float()  # (B, K)
            probs.append(self._probabilities(logits))
        return np.concatenate(probs) if probs else np.zeros((0, len(self.class_names)))

    def _probabilities(self, logits):
        """(B, K) float64 of (B, K) logits: the softmax, or train-head's calibration of it (binary: the
        temperature divides the margin, so the tuned threshold means what it meant there)."""
        if self.temperature is None:  # float64: the K probabilities of a row sum to 1 within 1e-12
            return torch.softmax(logits.double(), dim=1).cpu().numpy()
        if logits.shape[1] == 2:
            margins = (logits.double()[:, 1] - logits.double()[:, 0]).cpu().numpy()
            prob_second = apply_temperature(margins, self.temperature)
            return np.stack([1.0 - prob_second, prob_second], axis=1)
        return apply_temperature_logits(logits.double().cpu().numpy(), self.temperature)

    @torch.inference_mode()
    def predict(self, titles, images, ids=None, labels=None, image_root=None):
        """Titles and images (see `api_inputs`: paths, relative to `image_root` when given; Pillow images;
        (H, W, 3) uint8 arrays; or None) -> a DataFrame with the CLI's columns, one row per input in order;
        `reason` says why a row is not scored whole (the missing half's reason, or the skip reason)."""
        titles, images = api_inputs.checked_titles(titles), api_inputs.checked_images(images)
        ids = None if ids is None else api_inputs.as_list(ids, "ids")
        labels = api_inputs.checked_labels(labels, self.class_names)
        api_inputs.same_length(len(titles), images=images, ids=ids, labels=labels)
        ids = [str(i) for i in range(len(titles))] if ids is None else [str(key) for key in ids]
        prob = np.full((len(titles), len(self.class_names)), np.nan)
        status, reasons = ["ok"] * len(titles), [""] * len(titles)
        keep_text_only, keep_image_only = self.can_score([True], [False])[0], self.can_score([False], [True])[0]
        size = self.settings.size
        for start in range(0, len(titles), self.batch_size):
            good, pixels, has_text, has_image = [], [], [], []
            for row in range(start, min(start + self.batch_size, len(titles))):
                try:
                    pixels.append(self._pixels(images[row], image_root))
                    image_reason = None
                except BadImage as error:
                    pixels.append(np.zeros((size, size, 3), np.uint8))  # a stand-in the head never sees
                    image_reason = error.reason
                survivor = surviving_half(bool(titles[row]), image_reason, keep_text_only, keep_image_only)
                reasons[row] = survivor.reason or ""
                if not survivor.kept:
                    status[row] = survivor.reason
                    continue
                good.append(row)
                has_text.append(survivor.half in (BOTH, TEXT))
                has_image.append(survivor.half in (BOTH, IMAGE))
                status[row] = {BOTH: "ok", TEXT: "ok_text_only", IMAGE: "ok_image_only"}[survivor.half]
            if good:
                images_in = pixel_values(torch.from_numpy(np.stack([pixels[row - start] for row in good])),
                                         self.settings)
                with autocast(self.device):
                    text_emb = encode_titles(self.model, self.tokenizer, [titles[row] for row in good],
                                             self.encoders["max_length"], self.device)
                    image_emb = self.model.encode_image({"pixel_values": images_in.to(self.device)})
                prob[good] = self.score_features(text_emb.float(), image_emb.float(), has_text, has_image)
        return results_frame(ids, prob, status, self.threshold, self.class_names, labels, reasons=reasons)

    def _pixels(self, image, image_root):
        if image is None:
            raise BadImage("no_image_path")
        if isinstance(image, Image.Image):
            return image_pixels(image, self.settings)
        path = Path(image)
        if image_root is None:  # a path of the caller's own: its folder is the root
            return load_image(path.parent, path.name, self.settings)
        return load_image(image_root, str(image), self.settings)

    def predict_tsv(self, path, out=None, **options):
        """What `python -m pipeline predict` writes for `path`, as a DataFrame (and into `out` when given);
        `options`: image_root, image_pattern, cache_dir, num_workers, on_bad_image, on_empty_title, part_rows,
        text_only, label_column, log."""
        options = {"batch_size": self.batch_size, "log": lambda *_: None, **options}
        if out is not None:
            predict_file(self, path, out, **options)
            return read_results(out)
        with tempfile.TemporaryDirectory() as folder:
            predict_file(self, path, Path(folder) / "predictions.csv", **options)
            return read_results(Path(folder) / "predictions.csv")
