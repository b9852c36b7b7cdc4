"""End-to-end fine-tuning with the Hugging Face Trainer, on the same model code as the two stages.

The model is `EncodersWithHead` (stage one's encoders + stage two's
`FusionHead`); the loss is stage two's class-weighted cross-entropy; metrics,
threshold tuning and the run folder are stage two's. What trains is chosen per
encoder (full, frozen or LoRA). The encoders are exported in the forms
`make embed` takes, so a fine-tuned model feeds straight back into stage one.
"""

import torch
from peft import LoraConfig, get_peft_model
from transformers import Trainer

from pipeline.model.families import family_lora_targets, image_lora_targets
from pipeline.model.head import drop_modalities
from pipeline.train.losses import weighted_cross_entropy
from pipeline.train.metrics import compute_metrics


class MultimodalTrainer(Trainer):
    """A Trainer whose loss is the class-weighted cross-entropy of stage two and whose
    optimizer gives the encoders and the head their own learning rates."""

    def __init__(self, *args, class_weights=None, lr_encoder=2e-5, lr_head=1e-3, modality_dropout=0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.class_weights = class_weights
        self.modality_dropout = modality_dropout  # stage two's: only while training, only for a two-modality head
        self.lr_encoder = lr_encoder
        self.lr_head = lr_head

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")
        if model.training and self.modality_dropout and "has_text" in inputs:
            inputs = drop_modalities(inputs, self.modality_dropout)
        logits = model(**inputs)  # (B, 2)
        loss = weighted_cross_entropy(logits, labels, self.class_weights)
        return (loss, {"logits": logits}) if return_outputs else loss

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            model = self.model if model is None else model
            decay = set(self.get_decay_parameter_names(model))
            groups = {}
            for name, param in model.named_parameters():
                if not param.requires_grad:
                    continue
                lr = self.lr_head if name.startswith("head.") else self.lr_encoder
                weight_decay = self.args.weight_decay if name in decay else 0.0
                groups.setdefault((lr, weight_decay), []).append(param)
            self.optimizer = torch.optim.AdamW(
                [{"params": p, "lr": lr, "weight_decay": wd} for (lr, wd), p in groups.items()],
                betas=(self.args.adam_beta1, self.args.adam_beta2), eps=self.args.adam_epsilon,
            )
        return self.optimizer


def metrics_from_logits(eval_prediction):
    """Trainer's compute_metrics: stage two's metrics at the default threshold."""
    logits = torch.as_tensor(eval_prediction.predictions)
    labels = eval_prediction.label_ids
    prob_real = torch.softmax(logits.float(), dim=-1)[:, 1].numpy()
    metrics = compute_metrics(labels, prob_real)
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and v is not None}


def configure_trainable(model, train_text, train_image, lora_rank, lora_alpha, lora_targets, text_lora_targets):
    """Freeze, fully train or LoRA-wrap each encoder; the head always trains."""
    text_model = model.text_encoder.model
    if train_text == "lora":
        targets = family_lora_targets(model.text_encoder.family, text_model.config.model_type, text_lora_targets)
        config = LoraConfig(r=lora_rank, lora_alpha=lora_alpha, target_modules=list(targets))
        model.text_encoder.model = get_peft_model(text_model, config)
    else:
        text_model.requires_grad_(train_text == "full")
    vision = model.image_encoder.vision_model
    if train_image == "lora":
        model.image_encoder.requires_grad_(False)
        targets = image_lora_targets(model.image_encoder.family, lora_targets)
        config = LoraConfig(r=lora_rank, lora_alpha=lora_alpha, target_modules=list(targets))
        model.image_encoder.vision_model = get_peft_model(vision, config)
    else:
        model.image_encoder.requires_grad_(train_image == "full")
    model.head.requires_grad_(True)
    return model
