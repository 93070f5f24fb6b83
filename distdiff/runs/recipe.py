"""What makes an image of an expansion folder: one frozen, typed Recipe, and the parameters derived from it.

OUT/expand_config.json and each manifest line's "params" are `recipe_params(recipe)`: every field of
the recipe, of its sampling settings, of its guidance method and of its energy, flattened under
its own name (or the name its `param` field metadata gives, the key earlier folders used). Nothing
is copied by hand, so an option added to a method is recorded, and compared on resume, the moment
it exists.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from enum import Enum
from typing import Any

from distdiff.method.guidance import Guidance
from distdiff.pipelines.sampling import SamplingConfig

NO_GUIDANCE = "none"  # the "guidance" of plain SD img2img


class RecipeError(ValueError):
    """Two fields of a recipe would be recorded under one key (a bug in a new option's name)."""


@dataclass(frozen=True)
class EnergyTerms:
    """How the guide scores an image: its prototypes (K groups by `cluster`), the energy's weights and input."""

    K: int
    cluster: str
    gs: float
    ls: float
    optimize_targets: str
    raw_guide_input: bool


@dataclass(frozen=True)
class Selection:
    """Best of `candidates` by the guide's `select` score (1: each image made once, the paper)."""

    candidates: int = 1
    select: str = "energy"


@dataclass(frozen=True)
class ClassTokens:
    """The class words of the prompts: the dataset's prompts with class names, or (DA-Fusion) one token per class
    learned on the train split by textual inversion, in DA-Fusion's prompt "a photo of a <class>"."""

    learned: bool = field(default=False, metadata={"param": "class_tokens_learned"})
    inversion_steps: int = 1000  # DA-Fusion's scripts/fine_tuning/*.sh --max_train_steps=1000


@dataclass(frozen=True)
class StrengthDraw:
    """Each image's img2img strength drawn from `choices`, equally likely (DA-Fusion: 1.0, 0.75, 0.5, 0.25);
    empty: every image at the sampler's strength."""

    choices: tuple[float, ...] = field(default=(), metadata={"param": "strength_choices"})


@dataclass(frozen=True)
class Recipe:
    """Everything an image of OUT depends on besides its own seed: model, size, sampler, guidance, energy."""

    dataset: str
    model: str
    resolution: int  # image side in pixels
    crop: str
    dtype: str
    sampling: SamplingConfig
    guidance: Guidance | None  # None: plain SD img2img, recorded as "none"
    energy: EnergyTerms
    selection: Selection
    seed: int  # the run seed each image's seed is hashed from
    tokens: ClassTokens = field(default_factory=ClassTokens)
    strengths: StrengthDraw = field(default_factory=StrengthDraw)
    guide_checkpoint: str | None = field(default=None)  # resolved path of the guide file, None without one


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):  # as JSON holds it, so a resumed folder's list compares equal
        return [_plain(v) for v in value]
    return value.value if isinstance(value, Enum) else value


def _flatten(obj: Any) -> dict[str, Any]:
    """{param key: plain value} of a frozen dataclass's fields, nested dataclasses and guidance methods flattened."""
    params: dict[str, Any] = {}

    def put(key: str, value: Any) -> None:
        if key in params:
            raise RecipeError(f"two fields of the recipe are recorded as '{key}'; give one a `param` metadata name.")
        params[key] = _plain(value)

    for item in fields(obj):
        key, value = item.metadata.get("param", item.name), getattr(obj, item.name)
        if isinstance(value, Guidance) or (value is None and item.name == "guidance"):
            put(key, value.name if value is not None else NO_GUIDANCE)
            for inner, inner_value in (_flatten(value) if value is not None else {}).items():
                put(inner, inner_value)
        elif is_dataclass(value):
            for inner, inner_value in _flatten(value).items():
                put(inner, inner_value)
        else:
            put(key, value)
    return params


def recipe_params(recipe: Recipe) -> dict[str, Any]:
    """OUT/expand_config.json's content: every field of `recipe`, flattened (JSON-ready values)."""
    return _flatten(recipe)


def recipe_defaults(recipe: Recipe) -> dict[str, Any]:
    """{param key: default} of every option of `recipe`'s sampler, guidance method and selection: the value a
    folder written before an option existed was made with (a new option's default keeps the old behaviour)."""
    defaults: dict[str, Any] = {}
    for part in (recipe.sampling, recipe.guidance, recipe.selection, recipe.tokens, recipe.strengths):
        if part is not None:
            defaults.update(_flatten(type(part)()))
    return defaults
