"""Model families and damaged model folders: SD 1.x (epsilon) and SD 2.x (v-prediction) drive the guided
img2img loop with the scheduler's x0; other pipelines and damaged files are refused in one line."""

import dataclasses
import json
import shutil

import pytest
import torch
from diffusers import DDIMScheduler, StableDiffusionImg2ImgPipeline

import expand
from distdiff.method.direct import DirectGuidance
from distdiff.method.guidance import GuideEnergy
from distdiff.pipelines.distdiff_img2img import from_components
from distdiff.pipelines.sampling import encode_prompts, make_generators
from distdiff.pipelines.distdiff_img2img import load_stable_diffusion
from distdiff.pipelines.loading import MissingModelError, ModelLoadError
from distdiff.tiny_sd.model import SCHEDULER_CONFIG, build_tiny_sd, save_components

PROMPTS = [f"a photo of the digit {d}." for d in range(10)]
# x0 from z_t and the UNet output by parameterisation, written out independently of diffusers.
X0_FORMULAS = {
    "epsilon": lambda z, out, abar: (z - (1 - abar).sqrt() * out) / abar.sqrt(),
    "v_prediction": lambda z, out, abar: abar.sqrt() * z - (1 - abar).sqrt() * out,
}


def tiny_components(prediction_type: str) -> dict:
    """The tiny test SD (seed 0) with its DDIM scheduler set to `prediction_type` (v_prediction: SD 2.x)."""
    components = build_tiny_sd(seed=0)
    components["scheduler"] = DDIMScheduler(**{**SCHEDULER_CONFIG, "prediction_type": prediction_type})
    return components


@pytest.fixture(scope="module")
def v_sd_dir(tmp_path_factory):
    """A tiny SD 2.x-style folder: the tiny model saved with a v-prediction scheduler config."""
    return save_components(tiny_components("v_prediction"), tmp_path_factory.mktemp("models") / "tiny-sd-v")


@dataclasses.dataclass(frozen=True)
class RecordingGuidance(DirectGuidance):
    """Direct guidance with rho 0 that records z_t, t and every x0 latent handed to the energy."""

    seen: dict = dataclasses.field(default_factory=dict)  # mutated in place: the guidance itself is frozen

    def replace_step(self, latents, index, ctx):
        self.seen.update(z=latents.clone(), t=ctx.timesteps[index], x0=[])

        def recording(x0, normalize=True):
            self.seen["x0"].append(x0.detach().clone())
            return ctx.image_energy(x0, normalize=normalize)

        return super().replace_step(latents, index, dataclasses.replace(ctx, image_energy=recording))


@pytest.mark.parametrize("prediction_type", sorted(X0_FORMULAS))
def test_energy_sees_the_x0_of_the_models_parameterisation(prediction_type, tiny_guide, tiny_prototypes, generate):
    sd = from_components(tiny_components(prediction_type))
    assert sd.scheduler.config.prediction_type == prediction_type
    prompts = encode_prompts(sd, PROMPTS)
    guide = GuideEnergy(tiny_guide, tiny_prototypes, image_size=16, mean=(0.5,) * 3, std=(0.5,) * 3)
    labels = torch.tensor([3, 7])
    params = torch.randn(2, 8, 16, 16, generator=torch.Generator().manual_seed(0))
    hook = RecordingGuidance(guidance_step=3, period=1, rho=0.0)
    generate(sd, params, labels, [1, 2], prompts=prompts, strength=0.5, steps=6, guidance_scale=1.0,
                   guide=guide, guidance=hook)
    z, t = hook.seen["z"], hook.seen["t"]
    with torch.no_grad():  # guidance scale 1: no CFG, the UNet's conditional output is the model output
        out = sd.unet(z, t, encoder_hidden_states=prompts.cond[labels], return_dict=False)[0]
    abar = sd.scheduler.alphas_cumprod[int(t)]
    (x0,) = hook.seen["x0"]
    torch.testing.assert_close(x0, X0_FORMULAS[prediction_type](z, out, abar), atol=1e-5, rtol=1e-4)
    other = next(p for p in X0_FORMULAS if p != prediction_type)
    assert (x0 - X0_FORMULAS[other](z, out, abar)).abs().max() > 1e-2  # the test tells the two apart


def test_v_prediction_loop_reproduces_diffusers_img2img_pipeline(v_sd_dir, generate):
    sd = load_stable_diffusion(str(v_sd_dir), precision="fp32", local_files_only=True)
    assert sd.scheduler.config.prediction_type == "v_prediction"
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([1, 4])
    pipe = StableDiffusionImg2ImgPipeline(vae=sd.vae, text_encoder=sd.text_encoder, tokenizer=sd.tokenizer,
                                          unet=sd.unet, scheduler=sd.scheduler, safety_checker=None,
                                          feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(prompt=[PROMPTS[int(c)] for c in labels], image=images, strength=0.5, num_inference_steps=6,
                    guidance_scale=7.5, generator=make_generators([5, 6]), output_type="pt").images
    params = torch.cat([sd.vae.encode(images[i:i + 1] * 2 - 1).latent_dist.parameters for i in range(2)]).detach()
    ours = generate(sd, params, labels, [5, 6], prompts=encode_prompts(sd, PROMPTS), strength=0.5, steps=6,
                          guidance_scale=7.5).images
    assert (ours - expected).abs().max().item() < 1e-4


def test_expand_writes_images_with_a_v_prediction_model(v_sd_dir, digits_guide_checkpoint, tmp_path):
    out = tmp_path / "out"
    argv = ["-d", "digits", "--model", str(v_sd_dir), "--guide_checkpoint", str(digits_guide_checkpoint),
            "--output_dir", str(out), "--cache_dir", str(tmp_path / "cache"), "--max_source_images", "2",
            "--num_images_per_prompt", "1", "--steps", "4", "--guidance_step", "2", "--guidance_period", "1",
            "--batch_size", "2", "--no_report", "--num_threads", "1"]
    assert expand.main(expand.parse_args(argv))["written"] == 2
    assert len(list(out.rglob("*.png"))) == 2


def write_model_index(folder, class_name: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": class_name, "_diffusers_version": "0.30.0"}))


def test_an_sdxl_folder_is_refused_before_loading_naming_what_works(tmp_path):
    folder = tmp_path / "sdxl"
    write_model_index(folder, "StableDiffusionXLPipeline")  # no weights at all: the check runs before loading
    with pytest.raises(ModelLoadError, match=r"StableDiffusionXLPipeline.*Stable Diffusion 1\.x and 2\.x") as info:
        load_stable_diffusion(str(folder), local_files_only=True)
    assert "\n" not in str(info.value)
    for sub in ("unet", "vae", "text_encoder", "tokenizer", "scheduler", "text_encoder_2", "tokenizer_2"):
        (folder / sub).mkdir()  # an SDXL folder's layout (empty), past expand.py's own layout check
    argv = ["-d", "digits", "--model", str(folder), "--guidance", "none", "--output_dir", str(tmp_path / "out")]
    with pytest.raises(SystemExit, match=r"expand.py: error: .*StableDiffusionXLPipeline.*hub id"):
        expand.main(expand.parse_args(argv))


@pytest.mark.parametrize("key, value, reason", [("addition_embed_type", "text_time", "added conditioning"),
                                                ("in_channels", 9, "9 UNet input channels")])
def test_a_unet_with_extra_conditioning_is_refused(tiny_sd_dir, tmp_path, key, value, reason):
    folder = shutil.copytree(tiny_sd_dir, tmp_path / "model")
    config_path = folder / "unet" / "config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), key: value}))
    with pytest.raises(ModelLoadError, match=rf"{reason}.*Stable Diffusion 1\.x and 2\.x"):
        load_stable_diffusion(str(folder), precision="fp32", local_files_only=True)


def truncate(path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def as_truncated_bin(path) -> None:
    """Replace a .safetensors file by the same tensors as a torch .bin cut in half."""
    from safetensors.torch import load_file
    tensors = load_file(path)
    path.unlink()
    target = path.with_name(path.name.replace(".safetensors", ".bin"))
    torch.save(tensors, target)
    truncate(target)


DAMAGE = {"truncated": truncate, "zeroed": lambda p: p.write_bytes(bytes(p.stat().st_size)), "bin": as_truncated_bin}


@pytest.mark.parametrize("component, name, damage", [
    ("unet", "diffusion_pytorch_model.safetensors", "truncated"),
    ("vae", "diffusion_pytorch_model.safetensors", "zeroed"),
    ("text_encoder", "model.safetensors", "truncated"),
    ("unet", "diffusion_pytorch_model.bin", "bin"),
    ("scheduler", "scheduler_config.json", "truncated"),
])
def test_a_damaged_file_is_named(tiny_sd_dir, tmp_path, component, name, damage):
    folder = shutil.copytree(tiny_sd_dir, tmp_path / "model")
    DAMAGE[damage](folder / component / name.replace(".bin", ".safetensors") if damage == "bin" else
                   folder / component / name)
    with pytest.raises(ModelLoadError) as info:
        load_stable_diffusion(str(folder), precision="fp32", local_files_only=True)
    message = str(info.value)
    assert message.startswith(f"{folder / component / name} is truncated or corrupt (")
    assert message.endswith("re-download or re-copy the model folder.") and "\n" not in message


def test_a_missing_weights_file_is_named(tiny_sd_dir, tmp_path):
    folder = shutil.copytree(tiny_sd_dir, tmp_path / "model")
    (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match=rf"^{folder / 'unet'} holds no weights file"):
        load_stable_diffusion(str(folder), precision="fp32", local_files_only=True)



def test_a_local_path_with_no_folder_is_said_to_be_missing(tmp_path):
    """A path, not a hub id: one line saying so, not diffusers' failed lookup of it as an id."""
    absent, file = tmp_path / "absent", tmp_path / "model.safetensors"
    file.touch()
    for model, what in ((str(absent), "does not exist"), (str(file), "is a file, not a folder"),
                        ("./absent/sd", "does not exist")):
        with pytest.raises(MissingModelError) as info:
            load_stable_diffusion(model, precision="fp32", local_files_only=True)
        assert str(info.value).startswith(f"--model {model} {what}; ") and "\n" not in str(info.value)

def test_expand_names_a_truncated_unet(tiny_sd_dir, tmp_path):
    folder = shutil.copytree(tiny_sd_dir, tmp_path / "model")
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    truncate(weights)
    argv = ["-d", "digits", "--model", str(folder), "--guidance", "none", "--output_dir", str(tmp_path / "out")]
    with pytest.raises(SystemExit, match=rf"expand.py: error: {weights} is truncated or corrupt") as info:
        expand.main(expand.parse_args(argv))
    assert "neither a diffusers folder" not in str(info.value)
