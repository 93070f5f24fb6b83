"""Tests for distdiff.method.guidance, .transform and .direct: the energy, the guide preprocessing, both methods."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from distdiff.method.direct import DirectGuidance, direct_guidance
from distdiff.method.gif import GifGuidance
from distdiff.method.guidance import GuideEnergy, energy, guide_preprocess, project_linf
from distdiff.method.records import STEP_KEYS, Record
from distdiff.method.methods import GUIDANCE_METHODS
from distdiff.method.transform import (TransformGuidance, TransformInit, TransformStep, apply_transform, draw_transform,
                                       lookahead_energy, transform_guidance, transform_step_stats)
from distdiff.utils.settings import OptionError, SettingError
from distdiff.pipelines.sampling import (decode_latents, encode_prompts, make_denoiser, make_generators,
                                         make_image_energy)

# ---------------------------------------------------------------------------------------------
# The energy


def test_energy_matches_hand_computed_values_with_masked_group_argmax():
    features = torch.tensor([[3.0, 4.0], [0.0, 2.0]])  # normalised: [0.6, 0.8] and [0, 1]
    class_protos = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    groups = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]],
                           [[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]])
    # Image 0's best group (cosine 1) is masked out, so its nearest valid group is [0, 1] (cosine 0.8).
    mask = torch.tensor([[True, True, False], [True, False, True]])
    e, d_c, d_g = energy(features, class_protos, groups, mask, gs=2.0, ls=0.5)
    expected_dc = [math.sqrt(0.4 ** 2 + 0.8 ** 2), 0.0]
    expected_dg = [math.sqrt(0.6 ** 2 + 0.2 ** 2), math.sqrt(0.6 ** 2 + 0.2 ** 2)]  # image 1 -> [0.6, 0.8]
    assert d_c.tolist() == pytest.approx(expected_dc, abs=1e-6)
    assert d_g.tolist() == pytest.approx(expected_dg, abs=1e-6)
    expected_e = sum(2.0 * c + 0.5 * g for c, g in zip(expected_dc, expected_dg)) / 2
    assert e.item() == pytest.approx(expected_e, abs=1e-6)


def test_energy_without_normalisation_uses_raw_features():
    features = torch.tensor([[3.0, 4.0]])
    groups = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    e, d_c, d_g = energy(features, torch.tensor([[1.0, 0.0]]), groups, torch.ones(1, 2, dtype=torch.bool),
                         normalize=False)
    assert d_c.item() == pytest.approx(math.sqrt(2 ** 2 + 4 ** 2))
    assert d_g.item() == pytest.approx(math.sqrt(3 ** 2 + 3 ** 2))  # nearest by cosine: [0, 1]
    assert e.item() == pytest.approx(d_c.item() + d_g.item())


def test_energy_rejects_an_image_without_valid_groups():
    with pytest.raises(ValueError, match="all-False row"):
        energy(torch.ones(1, 2), torch.ones(1, 2), torch.ones(1, 2, 2), torch.zeros(1, 2, dtype=torch.bool))


def test_guide_preprocess_matches_the_prototypes_normalisation():
    images = torch.zeros(1, 3, 8, 8)
    images[..., 0, 0] = 3.0  # out of [-1, 1]: clamped like the saved PNG
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.5)
    out = guide_preprocess(images, image_size=8, mean=mean, std=std)
    for c in range(3):
        assert out[0, c, 4, 4].item() == pytest.approx((0.5 - mean[c]) / std[c])
        assert out[0, c, 0, 0].item() == pytest.approx((1.0 - mean[c]) / std[c])
    assert guide_preprocess(images, image_size=4, mean=mean, std=std).shape == (1, 3, 4, 4)


def test_raw_guide_input_is_the_authors_bicubic_resize_to_224_by_hand():
    """448 -> 224 samples source column 2i + 0.5: Keys cubic (a = -0.75) weights at t = 0.5 are
    (-3/32, 19/32, 19/32, -3/32) on columns 2i-1 .. 2i+2; no antialias widening, no clamp, no mean/std."""
    columns = torch.arange(448, dtype=torch.float64)
    values = (columns * 7) % 11 - 3.0  # in [-3, 7]: far outside [-1, 1]
    images = values.expand(1, 3, 448, 448).clone()
    raw = guide_preprocess(images, image_size=32, mean=(0.5,) * 3, std=(0.2,) * 3, raw=True)
    assert raw.shape == (1, 3, 224, 224) and raw.dtype == torch.float64  # 224 whatever the guide's size
    weights = [-3 / 32, 19 / 32, 19 / 32, -3 / 32]
    for i in (1, 57, 222):
        expected = sum(w * values[2 * i - 1 + k].item() for k, w in enumerate(weights))
        assert raw[0, 1, 100, i].item() == pytest.approx(expected, abs=1e-12)
    # a 224 px image passes unchanged
    same = torch.randn(2, 3, 224, 224) * 3
    assert torch.equal(guide_preprocess(same, image_size=224, mean=(0.5,) * 3, std=(0.2,) * 3, raw=True), same)


def test_guide_energy_indexes_prototypes_by_label(tiny_guide, tiny_prototypes):
    guide = GuideEnergy(tiny_guide, tiny_prototypes, image_size=16, mean=(0.5,) * 3, std=(0.5,) * 3)
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    _, d_c, d_g = guide(images, torch.tensor([9, 2]))
    x = guide_preprocess(images, image_size=16, mean=(0.5,) * 3, std=(0.5,) * 3)
    _, d_c9, d_g9 = energy(tiny_guide.features(x[:1]), tiny_prototypes.classes[[9]], tiny_prototypes.groups[[9]],
                           tiny_prototypes.group_mask[[9]])
    assert d_c[0].item() == pytest.approx(d_c9.item())
    assert d_g[0].item() == pytest.approx(d_g9.item())


# ---------------------------------------------------------------------------------------------
# Transform pieces


def test_projection_bound_holds_exactly():
    generator = torch.Generator().manual_seed(0)
    center = torch.randn(4, 4, 16, 16, generator=generator) * 3
    moved = center + torch.randn(4, 4, 16, 16, generator=generator) * 2
    projected = project_linf(moved, center, 0.2)
    assert ((projected - center).abs() <= 0.2).all()
    inside = (moved - center).abs() < 0.19
    assert torch.equal(projected[inside], moved[inside])
    outside = (moved - center).abs() > 0.2
    assert ((projected - center).abs()[outside] >= 0.2 - 1e-6).all()  # clipped onto the boundary
    assert torch.equal(torch.sign(projected - center)[outside], torch.sign(moved - center)[outside])


def test_transform_draws_are_per_image():
    e, b = draw_transform(make_generators([11, 22, 33]), 4)
    e_alone, b_alone = draw_transform(make_generators([22]), 4)
    assert e.shape == b.shape == (3, 4, 1, 1)
    assert torch.equal(e[1], e_alone[0]) and torch.equal(b[1], b_alone[0])
    assert ((e >= 0) & (e < 1)).all()
    assert not torch.equal(e[0], e[1])


# ---------------------------------------------------------------------------------------------
# Guidance on the tiny SD


@pytest.fixture(scope="module")
def setup(tiny_sd, tiny_guide, tiny_prototypes):
    """Denoiser and image energy for 2 images of classes 3 and 9, at a mid-schedule z_t."""
    labels = torch.tensor([3, 9])
    prompts = encode_prompts(tiny_sd, [f"a photo of the digit {d}." for d in range(10)])
    tiny_sd.scheduler.set_timesteps(10)
    guide = GuideEnergy(tiny_guide, tiny_prototypes, image_size=16, mean=(0.5,) * 3, std=(0.5,) * 3)
    latents = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(3))
    return {"denoise": make_denoiser(tiny_sd, prompts, labels, scheduler=tiny_sd.scheduler, guidance_scale=7.5),
            "image_energy": make_image_energy(tiny_sd, guide, labels), "timesteps": tiny_sd.scheduler.timesteps,
            "latents": latents, "prompts": prompts, "guide": guide}


def test_one_transform_step_lowers_the_lookahead_energy(setup):
    look = setup["timesteps"][5:7]
    step = transform_guidance(setup["latents"], look, denoise=setup["denoise"], image_energy=setup["image_energy"],
                              generators=make_generators([1, 2]), rho=10.0, eps=0.2)
    kwargs = {"denoise": setup["denoise"], "image_energy": setup["image_energy"]}
    with torch.no_grad():
        before = lookahead_energy(setup["latents"], step.scale, step.bias, look, **kwargs).item()
        after = lookahead_energy(setup["latents"], step.new_scale, step.new_bias, look, **kwargs).item()
    assert before == pytest.approx(step.energy, rel=1e-5)
    assert after < before
    assert ((step.latents - setup["latents"]).abs() <= 0.2).all()
    assert not torch.equal(step.new_scale, step.scale)


def test_transform_with_rho_zero_ignores_the_energy(setup):
    """rho=0: no gradient step, so z_t gets exactly the projected random transform of the paper's algorithm."""
    look = setup["timesteps"][5:7]
    step = transform_guidance(setup["latents"], look, denoise=setup["denoise"], image_energy=setup["image_energy"],
                              generators=make_generators([1, 2]), rho=0.0, eps=0.2)
    e, b = draw_transform(make_generators([1, 2]), 4)
    expected = project_linf(apply_transform(setup["latents"], e, b), setup["latents"], 0.2)
    assert torch.equal(step.latents, expected)


def test_step_stats_match_hand_computed_saturation_and_moves():
    """One image, two channels of 2 elements: the draw and the gradient step are chosen by hand."""
    z = torch.tensor([[[[1.0, -2.0]], [[0.5, 0.0]]]])  # [1, 2, 1, 2]
    zeros = torch.zeros(1, 2, 1, 1)
    draw_bias = torch.tensor([0.05, 0.5]).view(1, 2, 1, 1)  # channel 0 stays inside eps 0.1, channel 1 leaves it
    new_bias = torch.tensor([-0.3, 0.5]).view(1, 2, 1, 1)  # the gradient pushes channel 0 out the other side
    guided = project_linf(apply_transform(z, zeros, new_bias), z, 0.1)
    step = TransformStep(guided, zeros, draw_bias, zeros, new_bias, energy=0.0)
    stats = transform_step_stats(z, step, eps=0.1)
    assert set(stats) == set(STEP_KEYS)
    assert stats[Record.EPS_SATURATED].tolist() == pytest.approx([1.0])  # |-0.3| and |0.5| both exceed 0.1
    # draw: +0.05, +0.05, +0.1, +0.1 (clamped); gradient: channel 0 goes from +0.05 to -0.1
    assert stats[Record.MOVE_DRAW].tolist() == pytest.approx([math.sqrt((2 * 0.05 ** 2 + 2 * 0.1 ** 2) / 4)])
    assert stats[Record.MOVE_GRAD].tolist() == pytest.approx([math.sqrt(2 * 0.15 ** 2 / 4)])
    inside = TransformStep(project_linf(apply_transform(z, zeros, draw_bias), z, 1.0), zeros, draw_bias, zeros,
                           draw_bias, energy=0.0)
    loose = transform_step_stats(z, inside, eps=1.0)
    assert loose[Record.EPS_SATURATED].tolist() == [0.0] and loose[Record.MOVE_GRAD].tolist() == [0.0]


def test_rho_zero_step_moves_only_by_the_draw_and_default_eps_saturates(setup):
    """With the paper's draw (e ~ U(0,1), b ~ N(0,1)) most of z_t leaves the 0.2 ball; rho 0 adds no move."""
    look = setup["timesteps"][5:7]
    kwargs = {"denoise": setup["denoise"], "image_energy": setup["image_energy"], "eps": 0.2}
    still = transform_guidance(setup["latents"], look, generators=make_generators([1, 2]), rho=0.0, **kwargs)
    stats = transform_step_stats(setup["latents"], still, eps=0.2)
    assert stats[Record.MOVE_GRAD].tolist() == [0.0, 0.0]
    assert all(0.5 < s <= 1.0 for s in stats[Record.EPS_SATURATED].tolist())
    assert all(0.1 < m <= 0.2 for m in stats[Record.MOVE_DRAW].tolist())
    moved = transform_guidance(setup["latents"], look, generators=make_generators([1, 2]), rho=10.0, **kwargs)
    assert all(m > 0 for m in transform_step_stats(setup["latents"], moved, eps=0.2)[Record.MOVE_GRAD].tolist())


def test_direct_guidance_with_rho_zero_is_a_plain_step(setup):
    t = setup["timesteps"][5]
    guided, still = direct_guidance(setup["latents"], t, denoise=setup["denoise"],
                                    image_energy=setup["image_energy"], rho=0.0)
    with torch.no_grad():
        plain, _ = setup["denoise"](setup["latents"], t)
    assert torch.equal(guided, plain)
    moved, move = direct_guidance(setup["latents"], t, denoise=setup["denoise"],
                                  image_energy=setup["image_energy"], rho=10.0)
    assert not torch.allclose(moved, plain)
    assert still.tolist() == [0.0, 0.0]
    # the recorded move is the RMS of what the gradient added to the plain step
    assert move.tolist() == pytest.approx((moved - plain).pow(2).mean(dim=(1, 2, 3)).sqrt().tolist(), rel=1e-4)


def test_direct_guidance_step_lowers_the_energy_of_x0(setup):
    """z_{t-1} - rho * grad moves downhill: the gradient is that of the energy of x0(z_t)."""
    t = setup["timesteps"][5]
    z = setup["latents"].clone().requires_grad_(True)
    with torch.enable_grad():
        value = setup["image_energy"](setup["denoise"](z, t)[1])[0]
        (grad,) = torch.autograd.grad(value, [z])
    with torch.no_grad():
        lower = setup["image_energy"](setup["denoise"](setup["latents"] - 1e-2 * grad, t)[1])[0]
    assert lower.item() < value.item()


def test_hook_schedule_and_validation():
    transform = TransformGuidance(guidance_step=20, period=2)
    direct = DirectGuidance(guidance_step=20, period=2)
    assert [i for i in range(50) if transform.applies_at(i, 50)] == [30]
    assert [i for i in range(50) if direct.applies_at(i, 50)] == [30, 31]
    assert GUIDANCE_METHODS == {"transform": TransformGuidance, "direct": DirectGuidance, "gif_sd": GifGuidance}
    with pytest.raises(OptionError, match=r"^TransformGuidance: period \(2\) cannot exceed guidance_step \(1\)"):
        TransformGuidance(guidance_step=1, period=2)
    # each method takes only its own options
    with pytest.raises(TypeError, match="rho_schedule"):
        TransformGuidance(rho_schedule="linear")
    with pytest.raises(TypeError, match="eps"):
        DirectGuidance(eps=0.1)
    with pytest.raises(OptionError, match=r"^DirectGuidance: guidance_step must be in \[1, steps=4\], got 5\.$"):
        DirectGuidance(guidance_step=5, period=1).check_schedule(steps=4, start=0)


def test_a_method_is_frozen_and_its_options_are_typed():
    guidance = TransformGuidance(init="identity")
    assert guidance.init is TransformInit.IDENTITY and guidance == TransformGuidance(init=TransformInit.IDENTITY)
    with pytest.raises(dataclasses.FrozenInstanceError):
        guidance.rho = 1.0


# ---------------------------------------------------------------------------------------------
# Against the authors' code (generate_data.py: transform_guidance / direct_guidance), restated


def _authors_energy(sd, guide, x0, targets, normalize):
    """The authors' score of x0 latents: decode, bicubic to 224, mean over the batch of D_c + D_g."""
    images = decode_latents(sd, x0)
    images = F.interpolate(images, size=(224, 224), mode="bicubic")
    features = guide.model.features(images).float()
    if normalize:
        features = features / features.norm(dim=-1, keepdim=True)
    global_proto, local_proto = guide.class_protos[targets], guide.group_protos[targets]
    score = torch.norm(features - global_proto, dim=1, p=2).mean()
    nearest = torch.argmax(torch.bmm(features.unsqueeze(1), local_proto.permute(0, 2, 1)), -1)
    local = local_proto[torch.arange(local_proto.size(0)), nearest.squeeze(1)]
    return score + torch.norm(features - local, dim=1, p=2).mean()


def _authors_transform(sd, guide, denoise, latents, timesteps, targets, scale, bias, *, rho, eps):
    scale, bias = scale.clone().requires_grad_(True), bias.clone().requires_grad_(True)
    with torch.enable_grad():
        z, score = latents * (1 + scale) + bias, 0.0
        for t in timesteps:
            z, x0 = denoise(z, t)
            score = score + _authors_energy(sd, guide, x0, targets, normalize=False)
        score = score / len(timesteps)
        grad_scale, grad_bias = torch.autograd.grad(score, [scale, bias])
    moved = latents * (1 + scale.detach() - rho * grad_scale) + bias.detach() - rho * grad_bias
    return torch.minimum(torch.maximum(moved, latents - eps), latents + eps)


def _authors_direct(sd, guide, denoise, latents, t, targets, *, rho):
    with torch.enable_grad():
        z = latents.clone().requires_grad_(True)
        previous, x0 = denoise(z, t)
        (grad,) = torch.autograd.grad(_authors_energy(sd, guide, x0, targets, normalize=True), [z])
    return previous.detach() - rho * grad


@pytest.fixture(scope="module")
def authors_setup(tiny_sd, tiny_guide, tiny_prototypes):
    """Two images of classes 3 and 4 (all groups valid, as the authors' code assumes), raw guide input."""
    labels = torch.tensor([3, 4])
    prompts = encode_prompts(tiny_sd, [f"a photo of the digit {d}." for d in range(10)])
    tiny_sd.scheduler.set_timesteps(10)
    guide = GuideEnergy(tiny_guide, tiny_prototypes, image_size=16, mean=(0.5,) * 3, std=(0.5,) * 3, raw_input=True)
    return {"sd": tiny_sd, "guide": guide, "labels": labels, "timesteps": tiny_sd.scheduler.timesteps,
            "prompts": prompts,
            "denoise": make_denoiser(tiny_sd, prompts, labels, scheduler=tiny_sd.scheduler, guidance_scale=7.5),
            "image_energy": make_image_energy(tiny_sd, guide, labels),
            "latents": torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(5))}


def test_raw_input_transform_guidance_is_the_authors_per_image_and_rho_over_b_per_batch(authors_setup):
    s = authors_setup
    look = s["timesteps"][5:7]
    ours = transform_guidance(s["latents"], look, denoise=s["denoise"], image_energy=s["image_energy"],
                              generators=make_generators([1, 2]), rho=10.0, eps=0.2, normalize=False)
    for i in range(2):  # the authors' batch size 1
        one = slice(i, i + 1)
        denoise = make_denoiser(s["sd"], s["prompts"], s["labels"][one], scheduler=s["sd"].scheduler, guidance_scale=7.5)
        alone = _authors_transform(s["sd"], s["guide"], denoise, s["latents"][one], look, s["labels"][one],
                                   ours.scale[one], ours.bias[one], rho=10.0, eps=0.2)
        assert (alone - ours.latents[one]).abs().max().item() < 1e-5
    # A batch of 2 in the authors' code: the mean halves each image's step, i.e. our rho / 2.
    theirs = _authors_transform(s["sd"], s["guide"], s["denoise"], s["latents"], look, s["labels"], ours.scale,
                                ours.bias, rho=10.0, eps=0.2)
    half = transform_guidance(s["latents"], look, denoise=s["denoise"], image_energy=s["image_energy"],
                              generators=make_generators([1, 2]), rho=5.0, eps=0.2, normalize=False)
    assert (theirs - half.latents).abs().max().item() < 1e-5
    assert (theirs - ours.latents).abs().max().item() > 1e-3


def test_raw_input_direct_guidance_is_the_authors_rho_over_b_per_batch(authors_setup):
    s = authors_setup
    t = s["timesteps"][5]
    theirs = _authors_direct(s["sd"], s["guide"], s["denoise"], s["latents"], t, s["labels"], rho=10.0)
    ours, _ = direct_guidance(s["latents"], t, denoise=s["denoise"], image_energy=s["image_energy"], rho=5.0)
    assert (theirs - ours).abs().max().item() < 1e-5
    full, _ = direct_guidance(s["latents"], t, denoise=s["denoise"], image_energy=s["image_energy"], rho=10.0)
    assert (theirs - full).abs().max().item() > 1e-4


def _linear_energy(weights: torch.Tensor):
    """A hand-made energy E = sum_c w_c * mean(x0_c) per image (batch mean), with x0 = z: a known gradient."""
    def image_energy(x0, normalize=True):
        per_image = (x0.float().mean(dim=(2, 3)) * weights).sum(dim=1)
        return per_image.mean(), per_image, per_image
    return image_energy


def _identity_denoise(z, t):
    return z, z


def test_identity_init_takes_gradient_steps_from_z_itself_and_iterates():

    z = torch.tensor([[[[0.5, -0.5]], [[0.2, 0.2]]]])  # [B=1, C=2, h=1, w=2]
    w = torch.tensor([1.0, -2.0])
    rho, eps = 0.1, 10.0  # a wide ball: the projection changes nothing
    # dE/de_c = w_c * mean(z_c), dE/db_c = w_c; both constant in (e, b), so k steps move k times as far.
    grad_scale = torch.tensor([1.0 * 0.0, -2.0 * 0.2]).view(1, 2, 1, 1)
    grad_bias = w.view(1, 2, 1, 1)
    for k in (1, 3):
        step = transform_guidance(z, [torch.tensor(1)], denoise=_identity_denoise, image_energy=_linear_energy(w),
                                  generators=[torch.Generator().manual_seed(0)], rho=rho, eps=eps,
                                  init="identity", iterations=k)
        assert torch.equal(step.scale, torch.zeros(1, 2, 1, 1)) and torch.equal(step.bias, torch.zeros(1, 2, 1, 1))
        torch.testing.assert_close(step.new_scale, -k * rho * grad_scale)
        torch.testing.assert_close(step.new_bias, -k * rho * grad_bias)
        torch.testing.assert_close(step.latents, (1 - k * rho * grad_scale) * z - k * rho * grad_bias)
        assert step.energy == pytest.approx(float((z.mean(dim=(2, 3)) * w).sum()))  # at the start: z itself
    stats = transform_step_stats(z, step, eps=eps)
    assert float(stats[Record.MOVE_DRAW]) == 0.0  # nothing drawn: every move is the gradient's


def test_random_init_with_one_iteration_is_the_papers_step_unchanged():

    torch.manual_seed(3)
    z, w = torch.randn(2, 4, 3, 3), torch.randn(4)
    generators = lambda: [torch.Generator().manual_seed(s) for s in (5, 6)]  # noqa: E731
    step = transform_guidance(z, [torch.tensor(1)], denoise=_identity_denoise, image_energy=_linear_energy(w),
                              generators=generators(), rho=10.0, eps=0.2)
    scale, bias = draw_transform(generators(), 4)
    assert torch.equal(step.scale, scale) and torch.equal(step.bias, bias)
    # batch mean times B: each image's own gradient, w_c * mean(z_c) and w_c
    torch.testing.assert_close(step.new_scale, scale - 10.0 * (w * z.mean(dim=(2, 3))).view(2, 4, 1, 1))
    torch.testing.assert_close(step.new_bias, bias - 10.0 * w.view(1, 4, 1, 1).expand(2, 4, 1, 1))
    torch.testing.assert_close(step.latents, project_linf(apply_transform(z, step.new_scale, step.new_bias), z, 0.2))


def test_transform_options_are_checked_and_reach_the_hook():
    with pytest.raises(OptionError, match=r"^TransformGuidance: init must be one of \['random', 'identity'\], got 'zero'"):
        TransformGuidance(init="zero")
    with pytest.raises(OptionError, match="^TransformGuidance: iterations must be at least 1, got 0.$"):
        TransformGuidance(iterations=0)
    import expand
    from distdiff.jobs import expand_config

    config = expand.parse_config(["-d", "digits", "--transform_init", "identity", "--transform_iters", "3"])
    assert (config.transform_init, config.transform_iters) == ("identity", 3)
    with pytest.raises(SettingError, match="^--transform_iters must be at least 1, got 0.$"):
        expand_config.resolve(expand.parse_config(["-d", "digits", "--transform_iters", "0"]))


def test_identity_init_reaches_the_sampler_end_to_end(tmp_path, tiny_sd_dir, digits_guide_checkpoint):
    import json

    import expand

    out = tmp_path / "out"
    expand.main(expand.parse_args([
        "-d", "digits", "--model", str(tiny_sd_dir), "--guide_checkpoint", str(digits_guide_checkpoint),
        "--output_dir", str(out), "--cache_dir", str(tmp_path / "cache"), "--max_source_images", "2",
        "--num_images_per_prompt", "1", "--steps", "4", "--guidance_step", "2", "--guidance_period", "1",
        "--transform_init", "identity", "--transform_iters", "2", "--transform_resolution", "2", "--num_threads", "1",
        "--no_report"]))
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(records) == 2 and all(r["move_draw"] == 0.0 and r["move_grad"] > 0 for r in records)
    config = json.loads((out / "expand_config.json").read_text())
    assert (config["transform_init"], config["transform_iters"], config["transform_resolution"]) == ("identity", 2, 2)


def test_a_spatial_field_moves_each_block_of_the_latent_by_its_own_gradient():
    z = torch.arange(16.0).view(1, 1, 4, 4) / 16  # [B=1, C=1, 4, 4]
    w = torch.tensor([2.0])
    rho, eps = 0.5, 10.0
    step = transform_guidance(z, [torch.tensor(1)], denoise=_identity_denoise, image_energy=_linear_energy(w),
                              generators=[torch.Generator()], rho=rho, eps=eps, init="identity", resolution=2)
    # E = w * mean(z~); a 2x2 field over a 4x4 latent: cell (i, j) scales the block z[2i:2i+2, 2j:2j+2], so
    # dE/de_ij = w * sum(block) / 16 and dE/db_ij = w * 4 / 16.
    blocks = z.view(1, 1, 2, 2, 2, 2).permute(0, 1, 2, 4, 3, 5).sum(dim=(-1, -2))
    torch.testing.assert_close(step.new_scale, -rho * w * blocks / 16)
    torch.testing.assert_close(step.new_bias, torch.full((1, 1, 2, 2), -rho * 2.0 * 4 / 16))
    up = F.interpolate(step.new_scale, size=(4, 4), mode="nearest")
    torch.testing.assert_close(step.latents, (1 + up) * z - rho * 2.0 * 4 / 16)
    assert len(torch.unique(step.latents - z)) > 2  # unlike a per-channel transform, moves differ across blocks
    e, b = draw_transform([torch.Generator().manual_seed(0)], 4, 3)
    assert e.shape == b.shape == (1, 4, 3, 3)
    e1, _ = draw_transform([torch.Generator().manual_seed(0)], 4)
    torch.testing.assert_close(e1.flatten(), torch.rand(4, generator=torch.Generator().manual_seed(0)))
    with pytest.raises(OptionError, match="resolution must be at least 1"):
        TransformGuidance(resolution=0)


@pytest.mark.parametrize("schedule, factors", [("constant", [1.0, 1.0, 1.0, 1.0]), ("linear", [1.0, 0.75, 0.5, 0.25]),
                                               ("cosine", [1.0, 0.5 + 0.5 * math.cos(math.pi / 4), 0.5,
                                                           0.5 - 0.5 * math.cos(math.pi / 4)])])
def test_direct_guidance_scales_rho_by_its_schedule_at_each_guided_step(schedule, factors):
    """A hand-made case: DDIM halves z and x0 = z; E = sum(x0) / B, so grad_{z} (B * E) = 1 everywhere and the
    guided step is 0.5 z - rho_j exactly."""
    from distdiff.method.guidance import StepContext

    z = torch.tensor([[[[1.0, -2.0]]], [[[0.5, 4.0]]]])  # [B=2, C=1, 1, 2]
    ctx = StepContext(timesteps=torch.arange(10, 0, -1), denoise=lambda x, t: (0.5 * x, x),
                      image_energy=lambda x0, normalize=True: (x0.sum() / x0.shape[0], None, None), generators=[])
    guidance = DirectGuidance(guidance_step=4, period=4, rho=2.0, rho_schedule=schedule)
    assert [i for i in range(10) if guidance.applies_at(i, 10)] == [6, 7, 8, 9]
    for j, index in enumerate(range(6, 10)):
        assert guidance.before_step(z, index, ctx).latents is z  # direct guidance leaves z_t alone
        out = guidance.replace_step(z, index, ctx)
        torch.testing.assert_close(out.latents, 0.5 * z - 2.0 * factors[j])
        torch.testing.assert_close(out.stats[Record.MOVE_GRAD], torch.full((2,), 2.0 * factors[j]))
    with pytest.raises(OptionError, match="rho_schedule must be one of \\['constant', 'linear', 'cosine'\\], got 'step'"):
        DirectGuidance(rho_schedule="step")


def test_rho_schedule_reaches_the_sampler_from_the_flag_and_is_refused_without_direct_guidance(
        digits_guide_checkpoint):
    import expand
    from distdiff.jobs import expand_config
    from distdiff.runs.expansion import ExpansionError
    from distdiff.runs.recipe import recipe_params

    job = expand_config.resolve(expand.parse_config(["-d", "digits", "--guidance", "direct", "--rho_schedule", "linear",
                                                     "--guide_checkpoint", str(digits_guide_checkpoint)]))
    assert job.guidance == DirectGuidance(rho_schedule="linear")
    assert recipe_params(job.recipe(resolution=32, dtype="float32"))["rho_schedule"] == "linear"
    with pytest.raises(ExpansionError, match="--rho_schedule linear is an option of --guidance direct; add --guidance direct"):
        expand_config.resolve(expand.parse_config(["-d", "digits", "--rho_schedule", "linear"]))
