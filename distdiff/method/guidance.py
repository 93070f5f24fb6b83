"""Guidance: the hooks a sampler calls, and the energy every guidance method of DistDiff descends.

docs/METHOD.md#energy. One energy, E = gs * D_c + ls * D_g, measured on images decoded from the
predicted clean latent, drives the methods the way guided-diffusion hands a `cond_fn` to its
sampler: the sampler (distdiff/pipelines/distdiff_img2img.py) owns the DDIM loop and calls the
named hooks of a `Guidance` at the schedule indices it guides, with a StepContext holding a
`denoise` function (one CFG + DDIM step) and an `image_energy` function (decode + guide + energy).
Each method is one class overriding these hooks (distdiff/method/transform.py: the paper's
transform guidance; distdiff/method/direct.py: direct guidance), named in distdiff/method/methods.py.

The update is per image: the gradient is taken of the batch *sum* of energies, which equals the
authors' code at its batch size of 1 (their mean over a batch of B makes the step rho/B per image)
and keeps an image independent of its batch (docs/METHOD.md#differences-from-the-paper-and-the-authors-code).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from enum import Enum
from typing import Callable, ClassVar, Protocol, Sequence

import torch
import torch.nn.functional as F

from distdiff.method.records import Record
from distdiff.utils.settings import AT_LEAST_1, NON_NEGATIVE, OptionError, check_option

logger = logging.getLogger(__name__)

GS = 1.0  # weight of the class energy; the authors' expand_diff.sh (--gs default 1)
LS = 1.0  # weight of the group energy; the authors' expand_diff.sh (--ls default 1)
RHO = 10.0  # guidance learning rate; the paper's rho ablation (best of 0.1/1/10/20), expand_diff.sh RHO=10
EPS = 0.2  # L-inf radius around z_t; the authors' expand_diff.sh CON=0.2 (--constraint_value)
GUIDANCE_STEP = 20  # M: guide at schedule index T-M; the paper's M ablation, expand_diff.sh START=20
GUIDANCE_PERIOD = 2  # look-ahead steps; the paper's ablation (2 best), expand_diff.sh PERIOD=2 (Algorithm 1 shows 1)
# The authors' guide input (generate_data.py): the decoded [-1,1] image, unnormalised, resized by
# F.interpolate(size=(224, 224), mode="bicubic"): align_corners False, no antialias.
AUTHORS_GUIDE_SIZE = 224


# (z_t [B,C,h,w], t) -> (z_{t-1}, predicted x0 latent), one classifier-free-guided DDIM step.
Denoise = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
# (x0 latents [B,C,h,w], normalize) -> (E scalar, D_c [B], D_g [B]) of the decoded images.
ImageEnergy = Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
# (latents [B,C,h,w]) -> (the guide's logits [B,K], its L2-normalised features [B,D]) of their decodings.
Classify = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class Scorer(Protocol):
    """What classifies images for a final-latent hook: the guide (GuideEnergy), or GIF-SD's CLIP zero-shot."""

    def logits_and_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits [B,K] and L2-normalised features [B,D] of images [B,3,H,W] in [-1,1]."""


def energy(features: torch.Tensor, class_protos: torch.Tensor, group_protos: torch.Tensor,
           group_mask: torch.Tensor, *, gs: float = GS, ls: float = LS, normalize: bool = True
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hierarchical energy of features [B,D] against each image's class [B,D] and groups [B,K,D] (mask [B,K]).

    Returns (E = mean_b(gs * D_c + ls * D_g), D_c [B], D_g [B]) with Euclidean (not squared)
    distances; the group is the valid one of highest cosine similarity to the features.
    """
    features = features.float()
    if normalize:
        features = F.normalize(features, dim=1)
    class_protos, group_protos = class_protos.float(), group_protos.float()
    if not bool(group_mask.any(dim=1).all()):
        raise ValueError("every image needs at least one valid group prototype (group_mask has an all-False row).")
    d_c = torch.linalg.vector_norm(features - class_protos, dim=1)
    cosine = F.cosine_similarity(features.unsqueeze(1), group_protos, dim=2)  # [B, K]
    cosine = cosine.masked_fill(~group_mask.bool(), float("-inf"))
    nearest = cosine.argmax(dim=1)
    chosen = group_protos[torch.arange(features.shape[0], device=features.device), nearest]
    d_g = torch.linalg.vector_norm(features - chosen, dim=1)
    return (gs * d_c + ls * d_g).mean(), d_c, d_g


def guide_preprocess(images: torch.Tensor, *, image_size: int, mean: Sequence[float], std: Sequence[float],
                     raw: bool = False) -> torch.Tensor:
    """Differentiable guide input from decoded images [B,3,H,W] in [-1,1]: [B,3,S,S].

    Default: [0,1] (clamped as the saved PNG will be), antialiased bilinear resize to the guide's
    `image_size`, guide mean/std: the preprocessing the prototypes were built with. `raw=True` is
    the authors' code exactly: the unclamped [-1,1] tensor, bicubic without antialias to a fixed
    224 px whatever `image_size` is, no mean/std (docs/METHOD.md#energy).
    """
    if raw:
        if images.shape[-2:] == (AUTHORS_GUIDE_SIZE, AUTHORS_GUIDE_SIZE):
            return images
        return F.interpolate(images, size=(AUTHORS_GUIDE_SIZE, AUTHORS_GUIDE_SIZE), mode="bicubic",
                             align_corners=False, antialias=False)
    x = ((images.float() + 1.0) / 2.0).clamp(0.0, 1.0)
    if x.shape[-2:] != (image_size, image_size):
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True)
    mean_t = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std_t = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - mean_t) / std_t


class GuideEnergy:
    """The guide θ with its prototypes: energy of decoded images for given class labels."""

    def __init__(self, model: torch.nn.Module, prototypes, *, image_size: int, mean: Sequence[float],
                 std: Sequence[float], raw_input: bool = False, gs: float = GS, ls: float = LS):
        self.model = model.eval().requires_grad_(False)
        parameter = next(model.parameters())
        self.device, self.dtype = parameter.device, parameter.dtype
        self.class_protos = prototypes.classes.to(self.device, torch.float32)
        self.group_protos = prototypes.groups.to(self.device, torch.float32)
        self.group_mask = prototypes.group_mask.to(self.device, torch.bool)
        self.image_size, self.mean, self.std, self.raw_input = image_size, list(mean), list(std), raw_input
        self.gs, self.ls = gs, ls

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, *, normalize: bool = True
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(E, D_c [B], D_g [B]) of decoded images [B,3,H,W] in [-1,1] with class labels [B]."""
        x = guide_preprocess(images, image_size=self.image_size, mean=self.mean, std=self.std, raw=self.raw_input)
        features = self.model.features(x.to(self.device, self.dtype))
        labels = labels.to(self.device)
        return energy(features, self.class_protos[labels], self.group_protos[labels], self.group_mask[labels],
                      gs=self.gs, ls=self.ls, normalize=normalize)

    def logits_and_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The guide's logits [B,K] and L2-normalised pooled features [B,D] of decoded images [B,3,H,W] in [-1,1]."""
        x = guide_preprocess(images, image_size=self.image_size, mean=self.mean, std=self.std, raw=self.raw_input)
        x = x.to(self.device, self.dtype)
        return self.model(x).float(), F.normalize(self.model.features(x).float(), dim=1)

    def class_probability(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The guide's softmax probability [B] of each image's class `labels` [B], decoded images [B,3,H,W] in [-1,1]."""
        x = guide_preprocess(images, image_size=self.image_size, mean=self.mean, std=self.std, raw=self.raw_input)
        logits = self.model(x.to(self.device, self.dtype)).float()
        return logits.softmax(dim=1).gather(1, labels.to(self.device).view(-1, 1)).squeeze(1)


def project_linf(latents: torch.Tensor, center: torch.Tensor, eps: float) -> torch.Tensor:
    """Element-wise clamp of `latents` onto the L-inf ball of radius eps around `center`, exact in their dtype."""
    projected = torch.minimum(torch.maximum(latents, center - eps), center + eps)
    # center -/+ eps is rounded, which can land half an ulp outside the ball; step those back in.
    outside = (projected - center).abs() > eps
    return torch.where(outside, torch.nextafter(projected, center), projected)


@dataclass
class StepContext:
    """What the sampler hands its guidance hooks and observers for one batch."""

    timesteps: torch.Tensor  # the whole DDIM schedule [T]
    denoise: Denoise  # one CFG + DDIM step on this batch
    image_energy: ImageEnergy | None  # decode + guide + energy on this batch (None without a guide)
    generators: Sequence[torch.Generator]  # one per image
    # decode + the guide's (logits [B,K], L2-normalised features [B,D]) on this batch (None without a guide)
    classify: Classify | None = None
    source_probs: torch.Tensor | None = None  # the guide's softmax [B,K] on each image's source (None: unknown)
    groups: torch.Tensor | None = None  # [B]: images with the same value are copies of one source


@dataclass
class GuidanceOutput:
    """What a guidance hook hands back: z_t changed (before_step) or z_{t-1} (replace_step), with per-image stats."""

    latents: torch.Tensor
    stats: dict[Record, torch.Tensor] = field(default_factory=dict)  # of STEP_KEYS, each [B] (direct: move_grad only)


class Guidance:
    """A sampler's guidance, in the spirit of guided-diffusion's `cond_fn`: named hooks the loop calls.

    At each schedule index where `applies_at` is true the sampler calls `before_step` (change z_t
    before the step) and then `replace_step` (return z_{t-1} to take the step in the sampler's
    place, or None to let the sampler step from the changed z_t). After the last step it calls
    `final_latents` on z_0 before decoding. The defaults do nothing. A method is a subclass with a
    `name` (its key in distdiff/method/methods.py) whose constructor checks its own options.
    """

    name: ClassVar[str] = ""
    uses_sources: ClassVar[bool] = False  # final_latents reads the guide's softmax on the sources (StepContext)
    uses_energy: ClassVar[bool] = False  # the prototype energy gs * D_c + ls * D_g drives it

    def prompt_variants(self, class_prompts: Sequence[str], class_names: Sequence[str]) -> list[list[str]]:
        """Each class's prompts, one drawn per image by `draw_prompt` (default: the dataset's one prompt per class)."""
        return [[prompt] for prompt in class_prompts]

    def draw_prompt(self, generator: torch.Generator) -> int:
        """Which of its class's prompt variants one image gets, drawn from its own generator (default: the first)."""
        return 0

    def applies_at(self, index: int, steps: int) -> bool:
        """Whether the hooks run at schedule index `index` of `steps`."""
        return False

    def check_schedule(self, *, steps: int, start: int) -> None:
        """Raise if the guided indices cannot fall in the sampled steps [start, steps)."""

    def before_step(self, latents: torch.Tensor, index: int, ctx: StepContext) -> GuidanceOutput:
        """z_t [B,C,h,w] as the step at `index` should see it."""
        return GuidanceOutput(latents)

    def replace_step(self, latents: torch.Tensor, index: int, ctx: StepContext) -> GuidanceOutput | None:
        """z_{t-1} in place of the sampler's step from z_t at `index`, or None."""
        return None

    def final_latents(self, latents: torch.Tensor, ctx: StepContext) -> GuidanceOutput:
        """z_0 [B,C,h,w] as it should be decoded (e.g. a post-hoc latent perturbation), with per-image stats."""
        return GuidanceOutput(latents)


def typed_choice(owner: str, option: str, value: str | Enum, choices: type[Enum]) -> Enum:
    """`value` as a member of the Enum `choices` (its member or its string), else an OptionError naming them."""
    try:
        return choices(value)
    except ValueError:
        raise OptionError(owner, f"{{{option}}} must be one of {[c.value for c in choices]}, got {value!r}.",
                          option) from None


@dataclass(frozen=True)
class WindowGuidance(Guidance):
    """A guidance that acts from schedule index T - M on: the window and step size both DistDiff methods share.

    guidance_step is M (guide at index T - M), period the look-ahead or guided steps, rho the step size. A
    field's `param` metadata is the key an expansion records it under (distdiff/runs/recipe.py): expand.py's flag.
    """

    uses_energy = True
    guidance_step: int = GUIDANCE_STEP
    period: int = field(default=GUIDANCE_PERIOD, metadata={"param": "guidance_period"})
    rho: float = RHO

    def __post_init__(self):
        check_option(self.owner, "guidance_step", self.guidance_step, AT_LEAST_1)
        check_option(self.owner, "period", self.period, AT_LEAST_1)
        check_option(self.owner, "rho", self.rho, NON_NEGATIVE)
        if self.period > self.guidance_step:
            raise OptionError(self.owner, f"{{period}} ({self.period}) cannot exceed {{guidance_step}} "
                              f"({self.guidance_step}): the guidance period's look-ahead would run past the last "
                              f"step.", "period", "guidance_step")

    @property
    def owner(self) -> str:
        return type(self).__name__

    def first_index(self, steps: int) -> int:
        """Schedule index T - M of the (first) guided step."""
        return steps - self.guidance_step

    def check_schedule(self, *, steps: int, start: int) -> None:
        """Guidance at T - M (and its period) must lie inside the img2img steps [start, steps)."""
        if self.guidance_step > steps:
            raise OptionError(self.owner, f"{{guidance_step}} must be in [1, {{steps}}={steps}], got "
                              f"{self.guidance_step}.", "guidance_step", "steps")
        if steps - self.guidance_step < start:
            raise OptionError(self.owner, f"{{guidance_step}} {self.guidance_step} guides schedule index "
                              f"{steps - self.guidance_step}, before the first img2img step {start} (set by "
                              f"{{strength}}); use {{guidance_step}} <= {steps - start}, i.e. lower {{guidance_step}} "
                              f"or raise {{strength}}.", "guidance_step", "strength")


