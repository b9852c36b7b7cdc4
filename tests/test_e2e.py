"""End-to-end fine-tuning on tiny models: parity with stage two, export round trip, what trains and what not."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from pipeline.__main__ import main
from pipeline.data.images import ImageSettings, load_image
from pipeline.data.splits import read_split
from pipeline.e2e.data import MultimodalDataCollator
from pipeline.e2e.trainer import MultimodalTrainer
from pipeline.embed import cache
from pipeline.model.classifier import build_encoders
from pipeline.model.config import HeadConfig
from pipeline.model.head import FusionHead, load_head
from pipeline.model.text_encoder import load_tokenizer
from pipeline.train.losses import weighted_cross_entropy


def model_flags(tiny_bert, tiny_clip, dataset):
    return ["--data-dir", str(dataset), "--text-model", str(tiny_bert), "--clip-model", str(tiny_clip),
            "--num-workers", "0", "--device", "cpu"]


@pytest.fixture(scope="module")
def e2e_run(tmp_path_factory, tiny_bert, tiny_clip):
    """One short run (frozen text, LoRA image) shared by the tests below."""
    from conftest import make_dataset

    root = tmp_path_factory.mktemp("e2e")
    dataset = make_dataset(root / "data")
    out = root / "run"
    args = ["finetune-e2e", *model_flags(tiny_bert, tiny_clip, dataset), "--out", str(out),
            "--train-text", "frozen", "--train-image", "lora", "--batch-size", "8", "--max-epochs", "4",
            "--patience", "1", "--lr-encoder", "1e-2", "--seed", "3"]
    assert main(args) == 0
    return {"out": out, "dataset": dataset, "root": root}


def test_finetune_writes_its_report_page(e2e_run):
    text = (e2e_run["out"] / "report.html").read_text()
    assert text.startswith("<!DOCTYPE html>") and 'id="metrics-table"' in text and "finetune-e2e" in text
    assert "https://" not in text and 'alt="learning curves' in text


def test_run_folder_has_stage_two_files_and_exports(e2e_run):
    out = e2e_run["out"]
    for name in ("config.json", "metrics.json", "epochs.csv", "predictions_val.csv", "predictions_test.csv",
                 "curves.png", "confusion_matrix.png", "roc.png", "pr.png", "skipped.tsv", "head/model.safetensors",
                 "export/text_model/config.json", "export/text_model/tokenizer.json",
                 "export/clip_lora/adapter_config.json", "export/clip_lora.pt", "export/clip_model/config.json",
                 "export/head/head_config.json", "export/embed.sh"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    for split in ("val", "test"):
        for key in ("accuracy", "f1_macro", "f1_fake", "f1_real", "precision", "recall", "roc_auc", "loss",
                    "threshold"):
            assert key in metrics[split]
    assert len(pd.read_csv(out / "predictions_test.csv")) == 8
    checkpoint = torch.load(out / "export" / "clip_lora.pt", weights_only=True)
    assert checkpoint["config"]["lora_alpha"] == 16 and any("lora_B" in k for k in checkpoint["state_dict"])


def test_early_stopping_restores_the_best_epoch(e2e_run):
    out = e2e_run["out"]
    epochs = pd.read_csv(out / "epochs.csv")
    assert len(epochs) < 4  # stopped before max_epochs: patience 1
    state = json.loads(sorted((out / "checkpoints").glob("checkpoint-*/trainer_state.json"))[-1].read_text())
    best = state["best_model_checkpoint"]
    best_weights = load_file(f"{best}/model.safetensors")
    head = load_file(out / "head" / "model.safetensors")
    for name, value in head.items():
        assert torch.equal(value, best_weights[f"head.{name}"]), name
    last = sorted((out / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))[-1]
    if str(last) != best:  # a later, worse epoch exists: its weights must not be the ones kept
        later = load_file(last / "model.safetensors")
        assert any(not torch.equal(v, later[f"head.{k}"]) for k, v in head.items())


def test_frozen_parts_stay_and_lora_parts_move(e2e_run, tiny_bert, tiny_clip):
    from transformers import AutoModel, CLIPModel

    out = e2e_run["out"]
    exported_text = AutoModel.from_pretrained(out / "export" / "text_model").state_dict()
    for name, value in AutoModel.from_pretrained(tiny_bert).state_dict().items():
        assert torch.equal(exported_text[name], value), name  # frozen text encoder unchanged
    adapter = load_file(out / "export" / "clip_lora" / "adapter_model.safetensors")
    lora_b = [v for k, v in adapter.items() if "lora_B" in k]
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b)  # PEFT starts B at zero: it trained
    best = json.loads(sorted((out / "checkpoints").glob("checkpoint-*/trainer_state.json"))[-1].read_text())
    weights = load_file(f"{best['best_model_checkpoint']}/model.safetensors")
    base = CLIPModel.from_pretrained(tiny_clip).vision_model.state_dict()
    q = "image_encoder.vision_model.base_model.model.encoder.layers.0.self_attn.q_proj.base_layer.weight"
    assert torch.equal(weights[q], base["encoder.layers.0.self_attn.q_proj.weight"])  # base frozen under LoRA


def test_exported_encoders_round_trip_through_stage_one(e2e_run, tiny_clip, tmp_path):
    """Embeddings from the exports through `embed` equal encode() of the fine-tuned model."""
    out, dataset = e2e_run["out"], e2e_run["dataset"]
    cache_dir = tmp_path / "cache"
    args = ["embed", "--data-dir", str(dataset), "--text-model", str(out / "export" / "text_model"),
            "--clip-model", str(tiny_clip), "--clip-lora", str(out / "export" / "clip_lora"),
            "--cache-dir", str(cache_dir), "--num-workers", "0", "--device", "cpu"]
    assert main(args) == 0
    cached = cache.load_split(cache_dir, "val")
    model = fine_tuned_model(out, tiny_clip)
    rows = read_split(dataset, "val")
    expected = encode_rows(model, load_tokenizer(out / "export" / "text_model"), rows, dataset, tiny_clip)
    assert np.allclose(cached.text_emb, expected["text_emb"], atol=1e-5)
    assert np.allclose(cached.image_emb, expected["image_emb"], atol=1e-5)
    # The merged clip_model export gives the same image vectors without a LoRA file.
    assert main(args[:args.index("--clip-model")] + ["--clip-model", str(out / "export" / "clip_model"),
                                                     "--cache-dir", str(tmp_path / "c2"), "--num-workers", "0"]) == 0
    assert np.allclose(cache.load_split(tmp_path / "c2", "val").image_emb, expected["image_emb"], atol=1e-5)
    # And stage two reads that cache: the exported head scores it (train-head would train a new one).
    assert main(["train-head", "--cache-dir", str(cache_dir), "--out", str(tmp_path / "head"),
                 "--max-epochs", "2", "--device", "cpu"]) == 0


def test_export_embed_script_embeds_the_runs_own_data_from_any_folder(e2e_run, tmp_path):
    """embed.sh names the run's data folder (not the demo set's) and absolute paths, so it runs anywhere."""
    out, dataset = e2e_run["out"], e2e_run["dataset"]
    script = out / "export" / "embed.sh"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run(["sh", str(script), str(tmp_path / "cache"), "--num-workers", "0", "--device", "cpu"],
                          cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    given = cache.read_manifest(tmp_path / "cache")["config"]["embed"]
    assert Path(given["data_dir"]) == dataset.resolve() and Path(given["text_model"]) == (out / "export" /
                                                                                           "text_model").resolve()
    assert len(cache.load_split(tmp_path / "cache", "test").ids) == len(read_split(dataset, "test"))
    assert subprocess.run(["sh", str(script)], cwd=elsewhere, env=env, capture_output=True).returncode == 2


def fine_tuned_model(out, clip_folder):
    """The fine-tuned model rebuilt from its best checkpoint, with the PEFT wrapper as in training."""
    from peft import LoraConfig, get_peft_model

    model, _ = build_encoders(out / "export" / "text_model", clip_folder)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"])
    model.image_encoder.vision_model = get_peft_model(model.image_encoder.vision_model, config)
    best = json.loads(sorted((out / "checkpoints").glob("checkpoint-*/trainer_state.json"))[-1].read_text())
    weights = load_file(f"{best['best_model_checkpoint']}/model.safetensors")
    image_weights = {k[len("image_encoder."):]: v for k, v in weights.items() if k.startswith("image_encoder.")}
    model.image_encoder.load_state_dict(image_weights)
    model.head = load_head(out / "head")
    return model.eval()


def encode_rows(model, tokenizer, rows, dataset, clip_folder):
    settings = ImageSettings.from_model_folder(clip_folder)
    collator = MultimodalDataCollator(tokenizer, settings)
    features = [{"text": rows.texts[i], "pixels": load_image(dataset, rows.image_paths[i], settings),
                 "labels": int(rows.labels[i])} for i in range(len(rows))]
    batch = collator(features)
    batch.pop("labels")
    with torch.no_grad():
        return {k: v.numpy() for k, v in model.encode(batch).items()}


def test_parity_head_on_cache_equals_end_to_end_logits(tiny_bert, tiny_clip, dataset, tmp_path):
    """Same weights: the head on stage-one features gives the end-to-end model's logits."""
    assert main(["embed", *model_flags(tiny_bert, tiny_clip, dataset), "--cache-dir", str(tmp_path / "c")]) == 0
    cached = cache.load_split(tmp_path / "c", "test")
    model, _ = build_encoders(tiny_bert, tiny_clip)
    torch.manual_seed(0)
    model.head = FusionHead(HeadConfig(text_dim=32, image_dim=24, fusion="gated"))
    model.eval()
    rows = read_split(dataset, "test")
    batch_features = [{"text": rows.texts[i], "pixels": load_image(dataset, rows.image_paths[i],
                       ImageSettings.from_model_folder(tiny_clip)), "labels": int(rows.labels[i])}
                      for i in range(len(rows))]
    batch = MultimodalDataCollator(load_tokenizer(tiny_bert),
                                   ImageSettings.from_model_folder(tiny_clip))(batch_features)
    labels = batch.pop("labels")
    with torch.no_grad():
        end_to_end = model(**batch)
        on_cache = model.head({"text_emb": torch.from_numpy(cached.text_emb),
                               "image_emb": torch.from_numpy(cached.image_emb)})
    assert torch.allclose(end_to_end, on_cache, atol=1e-5)
    # The Trainer's loss is stage two's weighted cross-entropy on the same logits.
    weights = torch.tensor([0.7, 1.6])
    trainer = MultimodalTrainer.__new__(MultimodalTrainer)
    trainer.class_weights = weights
    with torch.no_grad():
        loss = trainer.compute_loss(model, {**batch, "labels": labels})
    assert torch.allclose(loss, weighted_cross_entropy(on_cache, labels, weights), atol=1e-6)


def test_bad_flags_exit_2(tiny_bert, tiny_clip, dataset, tmp_path, capsys):
    base = ["finetune-e2e", *model_flags(tiny_bert, tiny_clip, dataset), "--out", str(tmp_path / "r")]
    assert main(base + ["--train-image", "partial"]) == 2
    assert "--train-image 'partial': not a valid choice; use one of: lora, frozen, full" in capsys.readouterr().err
    assert main(base + ["--resume"]) == 2
    assert "no complete checkpoint" in capsys.readouterr().err
    assert main(base + ["--lr-head", "1e30"]) == 2
    assert "--lr-head 1e+30: needs to be a finite number at least 0 below 10" in capsys.readouterr().err


def test_out_holding_other_files_is_refused_and_left_alone(tiny_bert, tiny_clip, dataset, tmp_path, capsys):
    out = tmp_path / "mine"
    (out / "checkpoints").mkdir(parents=True)
    (out / "notes.txt").write_text("my notes")
    (out / "checkpoints" / "keep.bin").write_bytes(b"mine")
    args = ["finetune-e2e", *model_flags(tiny_bert, tiny_clip, dataset), "--out", str(out)]
    assert main(args) == 2
    assert "not empty and not a finetune-e2e run folder" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "my notes" and (out / "checkpoints" / "keep.bin").read_bytes() == b"mine"


def test_init_head_starts_from_a_stage_two_head(tiny_bert, tiny_clip, dataset, tmp_path):
    assert main(["embed", *model_flags(tiny_bert, tiny_clip, dataset), "--cache-dir", str(tmp_path / "c")]) == 0
    assert main(["train-head", "--cache-dir", str(tmp_path / "c"), "--out", str(tmp_path / "head-run"),
                 "--max-epochs", "2", "--fusion", "max", "--device", "cpu"]) == 0
    out = tmp_path / "e2e"
    assert main(["finetune-e2e", *model_flags(tiny_bert, tiny_clip, dataset), "--out", str(out),
                 "--init-head", str(tmp_path / "head-run"), "--lr-head", "0", "--train-text", "frozen",
                 "--train-image", "frozen", "--max-epochs", "1"]) == 0
    started = load_file(tmp_path / "head-run" / "head" / "model.safetensors")
    exported = load_file(out / "export" / "head" / "model.safetensors")
    assert started.keys() == exported.keys()
    assert all(torch.equal(started[k], exported[k]) for k in started)
    assert load_head(out / "export" / "head").config.fusion == "max"


def test_bad_images_follow_stage_one_policy(tiny_bert, tiny_clip, dataset, tmp_path, capsys):
    (dataset / "images" / "va0002.jpg").write_text("not an image")
    base = ["finetune-e2e", *model_flags(tiny_bert, tiny_clip, dataset), "--out", str(tmp_path / "r")]
    assert main(base + ["--on-bad-image", "fail"]) == 2
    assert "val.tsv: line 4, column local_image_path 'images/va0002.jpg': not an image" in capsys.readouterr().err
    assert main(base + ["--max-epochs", "1", "--train-text", "frozen"]) == 0
    skipped = (tmp_path / "r" / "skipped.tsv").read_text().splitlines()
    assert skipped == ["split\tid\treason", "val\tva0002\tnot_an_image"]
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["val"]["rows"] == 7
