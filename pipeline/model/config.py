"""The model's settings and choices, without torch: flags and `--help` are built from these.

`HeadConfig` is saved beside every head's weights (head_config.json), so a head
loads without flags.
"""

from dataclasses import dataclass

from pipeline.config import help_field, number, one_of, validate, whole
from pipeline.errors import UserError
from pipeline.model.similarity import check_features

# How a title's token states become one vector; `projected` is CLIP's get_text_features. Which ones a model
# has comes from its family (model/families.py).
POOLINGS = ("cls", "mean", "max", "pooler", "projected")
# auto: the pooling the folder says its model was trained with, else its family's (text_encoder.resolve_pooling)
POOLING_CHOICES = ("auto", *POOLINGS)
# Which image vector: CLIP's after or before its visual projection, a tower's pooled output, ViT's CLS token. Which
# ones a model has comes from its family (model/families.py IMAGE_FAMILIES).
EMBEDDINGS = ("projected", "pooled", "cls")
EMBEDDING_CHOICES = ("auto", *EMBEDDINGS)  # auto: the family's own (image_encoder.resolve_embedding)
MODALITIES = ("text", "image")
FUSIONS = ("concat", "max", "mean", "gated")


def parse_modalities(value):
    """'text,image' or ('image', 'text') -> ('text', 'image'): one canonical order, so equal sets compare equal."""
    names = [name.strip() for name in value.split(",")] if isinstance(value, str) else list(value)
    unknown = [name for name in names if name not in MODALITIES]
    if unknown or not names or len(set(names)) != len(names):
        raise UserError(
            f"--modalities {value!r}: not a set of modalities; give one or both of {', '.join(MODALITIES)}, "
            "comma-separated and without repeats (e.g. text,image)"
        )
    return tuple(name for name in MODALITIES if name in names)


@dataclass(frozen=True)
class HeadConfig:
    """The fusion head's shape; the widths of the inputs come from the cache manifest or the encoders."""

    modalities: tuple = help_field("which embeddings the head reads: text, image or text,image", default=MODALITIES)
    fusion: str = help_field(f"how two projected modalities are combined: {', '.join(FUSIONS)} "
                             "(ignored with one modality)", default="concat")
    text_dim: int = help_field("width of text_emb (from the cache manifest)", default=768)
    image_dim: int = help_field("width of image_emb (from the cache manifest)", default=512)
    proj_dim: int = help_field("common width each modality is projected to", default=128)
    hidden_dim: int = help_field("width of the classifier's hidden layer", default=128)
    dropout: float = help_field("dropout after each projection and in the classifier", default=0.1)
    # Heads saved before N classes have no num_classes in head_config.json: they were binary.
    num_classes: int = help_field("number of classes K: the head's outputs (from the cache's label column)",
                                  default=2)
    # Heads saved before extra features have no `features` in head_config.json: they read the embeddings only.
    features: tuple = help_field("extra per-row features the head reads beside the embeddings: similarity (the "
                                 "cosine of one CLIP/SigLIP model's text and image vectors, cached by `embed` when "
                                 "that one model is both towers); none by default", default=())

    def __post_init__(self):
        problems = []
        try:
            # Frozen, so normalise through object.__setattr__: JSON gives lists, the CLI gives strings.
            object.__setattr__(self, "modalities", parse_modalities(self.modalities))
        except UserError as error:
            problems.append(str(error))
        validate(
            *problems, one_of(self, "fusion", FUSIONS),
            *(whole(self, name, 1) for name in ("text_dim", "image_dim", "proj_dim", "hidden_dim")),
            whole(self, "num_classes", 2), _features_problem(self),
            number(self, "dropout", at_least=0, below=1),
        )

    def dims(self):
        return {"text": self.text_dim, "image": self.image_dim}


def _features_problem(config):
    """Normalise `features` (JSON gives a list, the CLI a tuple) and return its problem, if any."""
    features = config.features
    if isinstance(features, str):
        features = tuple(name.strip() for name in features.split(",") if name.strip())
    if not isinstance(features, (list, tuple)):
        return f"--features {features!r}: not a list of feature names"
    object.__setattr__(config, "features", tuple(features))
    return check_features(config.features)
