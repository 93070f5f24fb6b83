"""The pipeline as a user imports it (distdiff.pipelines.distdiff_img2img): loading, inputs, hooks, observers, scheduler state."""

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline

from distdiff.data.augment import eval_transform
from distdiff.method.gif import GifGuidance
from distdiff.method.guidance import Guidance, GuidanceOutput, GuideEnergy
from distdiff.method.transform import TransformGuidance
from distdiff.method.observers import EnergyRecorder, StepObserver
from distdiff.method.prototypes import compute_prototypes
from distdiff.method.records import Record
from distdiff.models.classifiers import load_classifier
from distdiff.pipelines.distdiff_img2img import DistDiffImg2ImgPipeline
from distdiff.data.registry import load_dataset
from distdiff.pipelines.sampling import encode_latent_dist, encode_prompts, make_generators

PROMPTS = [f"a photo of the digit {d}." for d in range(10)]


@pytest.fixture(scope="module")
def pipe(tiny_sd_dir):
    return DistDiffImg2ImgPipeline.from_pretrained(str(tiny_sd_dir), precision="fp32", local_files_only=True)


@pytest.fixture(scope="module")
def sources():
    """Two digits images [2,3,32,32] in [0,1] and their labels."""
    dataset = load_dataset("digits", "train")
    images = torch.stack([torch.from_numpy(np.array(dataset.load_image(i))).permute(2, 0, 1) for i in (0, 1)])
    return images.float() / 255.0, torch.tensor([dataset.samples[i].label for i in (0, 1)])


@pytest.fixture(scope="module")
def guide(tiny_guide, tiny_prototypes):
    return GuideEnergy(tiny_guide, tiny_prototypes, image_size=16, mean=(0.5,) * 3, std=(0.5,) * 3)


def test_from_pretrained_gives_the_pipeline_and_images_equal_cached_posteriors(pipe, sources):
    assert isinstance(pipe, DistDiffImg2ImgPipeline) and pipe.default_resolution == 32
    assert sorted(pipe.components) == ["scheduler", "text_encoder", "tokenizer", "unet", "vae"]
    images, labels = sources
    from_images = pipe(images, labels=labels, prompts=PROMPTS, generator=make_generators([1, 2]),
                       num_inference_steps=6)
    params = torch.cat([encode_latent_dist(pipe, images[i:i + 1] * 2 - 1) for i in range(2)])
    from_params = pipe(latent_params=params, labels=labels, prompt_embeds=encode_prompts(pipe, PROMPTS),
                       generator=make_generators([1, 2]), num_inference_steps=6)
    assert from_images.images.shape == (2, 3, 32, 32) and from_images.records == {}
    assert (from_images.images - from_params.images).abs().max().item() < 1e-5  # batched vs per-image VAE encoding


def test_without_source_images_it_is_diffusers_txt2img(pipe):
    labels = torch.tensor([3, 8])
    ours = pipe(labels=labels, prompts=PROMPTS, generator=make_generators([4, 5]), num_inference_steps=5).images
    scheduler = DDIMScheduler.from_config(pipe.scheduler.config)  # diffusers sets its scheduler's steps
    reference = StableDiffusionPipeline(**{**pipe.components, "scheduler": scheduler}, safety_checker=None,
                                        feature_extractor=None, requires_safety_checker=False)
    reference.set_progress_bar_config(disable=True)
    expected = reference([PROMPTS[3], PROMPTS[8]], num_inference_steps=5, guidance_scale=7.5,
                         generator=make_generators([4, 5]), output_type="pt").images
    assert (ours - expected).abs().max().item() < 1e-4


class Trace(Guidance):
    """Guides index 4 of 6: records the hook calls; replace_step takes that step with z_t unchanged."""

    def __init__(self, replace: bool):
        self.replace, self.calls = replace, []

    def applies_at(self, index, steps):
        return index == 4

    def before_step(self, latents, index, ctx):
        self.calls.append(("before_step", index))
        return GuidanceOutput(latents + 0.0)

    def replace_step(self, latents, index, ctx):
        self.calls.append(("replace_step", index))
        return GuidanceOutput(latents.clone(), {Record.MOVE_GRAD: torch.zeros(latents.shape[0])}) if self.replace else None


class Events(StepObserver):
    def __init__(self):
        self.events = []

    def on_start(self, ctx, batch_size):
        self.events.append(("start", batch_size))

    def on_guidance(self, index, latents):
        self.events.append(("guidance", index))

    def on_guided(self, index, output):
        self.events.append(("guided", index))

    def on_step(self, index, latents, x0):
        self.events.append(("step", index))

    def on_end(self, latents, decoded):
        self.events.append(("end", tuple(decoded.shape)))


@pytest.mark.parametrize("replace", [False, True])
def test_hooks_and_observers_run_in_the_loops_order(pipe, sources, guide, replace):
    images, labels = sources
    guidance, observer = Trace(replace), Events()
    pipe(images, labels=labels, prompts=PROMPTS, generator=make_generators([1, 2]), num_inference_steps=6,
         guidance=guidance, guide=guide, observers=[observer])
    assert guidance.calls == [("before_step", 4), ("replace_step", 4)]
    # strength 0.5 of 6 steps starts at index 3; a replaced step is not the sampler's
    steps_done = [3, 5] if replace else [3, 4, 5]
    expected = [("start", 2), ("step", 3), ("guidance", 4), ("guided", 4)] + [("step", i) for i in steps_done[1:]]
    assert observer.events == expected + [("end", (2, 3, 32, 32))]


def test_an_observer_does_not_change_the_images_and_records_per_image(pipe, sources, guide):
    images, labels = sources
    common = {"labels": labels, "prompts": PROMPTS, "num_inference_steps": 6, "guide": guide,
              "guidance": TransformGuidance(guidance_step=3, period=2)}
    watched = pipe(images, generator=make_generators([1, 2]), observers=[EnergyRecorder(guide, labels)], **common)
    unwatched = pipe(images, generator=make_generators([1, 2]), **common)
    assert torch.equal(watched.images, unwatched.images)
    assert unwatched.records == {}
    assert {key.value for key in watched.records} == {"D_c_before", "D_g_before", "D_c_after", "D_g_after",
                                                       "D_c_final", "D_g_final", "eps_saturated", "move_draw",
                                                       "move_grad"}
    assert all(len(values) == 2 for values in watched.records.values())


def test_each_call_has_its_own_scheduler_state(pipe, sources):
    images, labels = sources
    common = {"labels": labels, "prompts": PROMPTS}
    first = pipe(images, generator=make_generators([1, 2]), num_inference_steps=6, **common).images
    pipe(images, generator=make_generators([1, 2]), num_inference_steps=10, **common)
    again = pipe(images, generator=make_generators([1, 2]), num_inference_steps=6, **common).images
    assert torch.equal(first, again)
    assert pipe.scheduler.num_inference_steps is None  # the pipeline's own scheduler is never set


def test_inputs_that_do_not_match_are_refused_in_one_line(pipe, sources, guide):
    images, labels = sources
    with pytest.raises(ValueError, match="exactly one of `prompts` and `prompt_embeds`"):
        pipe(images, labels=labels, generator=make_generators([1, 2]))
    with pytest.raises(ValueError, match="one generator per image: 2 labels, 1 generators"):
        pipe(images, labels=labels, prompts=PROMPTS, generator=make_generators([1]))
    with pytest.raises(ValueError, match="guidance needs a guide"):
        pipe(images, labels=labels, prompts=PROMPTS, generator=make_generators([1, 2]), guidance=TransformGuidance())
    with pytest.raises(ValueError, match="gif_sd classifies the images: pass a guide or a classifier"):
        pipe(images, labels=labels, prompts=PROMPTS, generator=make_generators([1, 2]), guidance=GifGuidance())
    with pytest.raises(ValueError, match="one source per label: 1 sources, 2 labels"):
        pipe(images[:1], labels=labels, prompts=PROMPTS, generator=make_generators([1, 2]))


def test_the_readmes_python_example_runs_as_written(tiny_sd_dir, digits_guide_checkpoint, tmp_path):
    """README.md's "Use the pipeline from Python" block, with its three paths pointed at test files."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = readme.split("### Use the pipeline from Python", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    model, info = load_classifier(digits_guide_checkpoint)
    train = load_dataset("digits", "train").with_transform(eval_transform(32, info["mean"], info["std"]))
    compute_prototypes(model, train, k=3, device="cpu").save(tmp_path / "prototypes.pt")
    paths = {'"checkpoint/tiny-sd-digits"': repr(str(tiny_sd_dir)),
             '"checkpoint/digits/smallcnn_unpretrained_lr0.1/seed1"': repr(str(digits_guide_checkpoint)),
             '"expanded/digits/distdiff_5x/prototypes.pt"': repr(str(tmp_path / "prototypes.pt"))}
    for written, test_file in paths.items():
        assert written in code
        code = code.replace(written, test_file)
    scope = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["out"].images.shape == (2, 3, 32, 32)
    assert len(scope["out"].records[Record.D_C_FINAL]) == 2 and Record.EPS_SATURATED in scope["out"].records


def test_two_observers_recording_the_same_value_are_refused(pipe, sources, guide):
    # merging would keep one of the two silently; the pipeline says so instead
    images, labels = sources
    with pytest.raises(ValueError, match="two observers record Record.D_C_FINAL: EnergyRecorder"):
        pipe(images, labels=labels, prompts=PROMPTS, num_inference_steps=4, guide=guide,
             generator=make_generators([1, 2]), observers=[EnergyRecorder(guide, labels), EnergyRecorder(guide, labels)])
