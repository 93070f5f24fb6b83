"""Tests for distdiff.guidance: the energy, the guide preprocessing, and both guidance variants."""

import math

import pytest
import torch

from distdiff.guidance import (EnergyGuidance, GuideEnergy, apply_transform, direct_guidance, draw_transform,
                               energy, guide_preprocess, lookahead_energy, project_linf, transform_guidance)
from distdiff.sampling import encode_prompts, make_denoiser, make_generators, make_image_energy

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


def test_guide_preprocess_matches_the_prototypes_normalisation_and_raw_mode_does_not():
    images = torch.zeros(1, 3, 8, 8)
    images[..., 0, 0] = 3.0  # out of [-1, 1]: clamped like the saved PNG, except in raw mode
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.5)
    out = guide_preprocess(images, image_size=8, mean=mean, std=std)
    for c in range(3):
        assert out[0, c, 4, 4].item() == pytest.approx((0.5 - mean[c]) / std[c])
        assert out[0, c, 0, 0].item() == pytest.approx((1.0 - mean[c]) / std[c])
    raw = guide_preprocess(images, image_size=8, mean=mean, std=std, raw=True)
    assert torch.equal(raw, images)
    assert guide_preprocess(images, image_size=4, mean=mean, std=std).shape == (1, 3, 4, 4)


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
    return {"denoise": make_denoiser(tiny_sd, prompts, labels, guidance_scale=7.5),
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


def test_direct_guidance_with_rho_zero_is_a_plain_step(setup):
    t = setup["timesteps"][5]
    guided = direct_guidance(setup["latents"], t, denoise=setup["denoise"], image_energy=setup["image_energy"],
                             rho=0.0)
    with torch.no_grad():
        plain, _ = setup["denoise"](setup["latents"], t)
    assert torch.equal(guided, plain)
    moved = direct_guidance(setup["latents"], t, denoise=setup["denoise"], image_energy=setup["image_energy"],
                            rho=10.0)
    assert not torch.allclose(moved, plain)


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
    transform = EnergyGuidance(method="transform", guidance_step=20, period=2)
    direct = EnergyGuidance(method="direct", guidance_step=20, period=2)
    assert [i for i in range(50) if transform.applies_at(i, 50)] == [30]
    assert [i for i in range(50) if direct.applies_at(i, 50)] == [30, 31]
    with pytest.raises(ValueError, match="unknown guidance method"):
        EnergyGuidance(method="gradient")
    with pytest.raises(ValueError, match="guidance period"):
        EnergyGuidance(guidance_step=1, period=2)
