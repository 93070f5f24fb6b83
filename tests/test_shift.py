"""Tests for distdiff.data.shift (the shifted-digits datasets, transformations, unseen prompts) and its table script."""

import json

import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel

import expand
from distdiff.data import shift
from distdiff.data.registry import load_dataset
from distdiff.training.results import write_results
from distdiff.pipelines.sampling import encode_prompts
from distdiff.data.shift import SHIFTED_DIGITS, UNSEEN_CLASS_NAMES, shift_array
from scripts import shift_table

SPLITS = ("train", "val", "test", "pool")
IMAGE_SHIFTS = sorted(name for name, spec in SHIFTED_DIGITS.items() if spec.shift is not None)


def digits_images(split="train"):
    dataset = load_dataset("digits", split)
    return np.stack([s.source for s in dataset.samples])


@pytest.mark.parametrize("name", sorted(SHIFTED_DIGITS))
def test_splits_are_disjoint_seeded_and_the_digits_own(name):
    stems = {}
    for split in SPLITS:
        dataset = load_dataset(name, split)
        again = load_dataset(name, split)
        assert [s.stem for s in dataset.samples] == [s.stem for s in again.samples]
        assert all(np.array_equal(a.source, b.source) for a, b in zip(dataset.samples, again.samples))
        digits = load_dataset("digits", split)  # the same seeded partition as the unshifted digits
        assert [(s.stem, s.label) for s in dataset.samples] == [(s.stem, s.label) for s in digits.samples]
        stems[split] = {s.stem for s in dataset.samples}
    assert sum(len(v) for v in stems.values()) == len(set().union(*stems.values())) == 1797
    assert [len(stems[s]) for s in ("train", "val", "test")] == [100, 100, 600]


@pytest.mark.parametrize("name", IMAGE_SHIFTS)
def test_transformation_is_deterministic_and_not_the_identity(name):
    images = digits_images()
    first = shift_array(images, SHIFTED_DIGITS[name].shift)
    second = shift_array(images.copy(), SHIFTED_DIGITS[name].shift)
    assert first.dtype == np.uint8 and first.shape == images.shape
    assert first.tobytes() == second.tobytes()
    changed = np.mean(np.any(first != images, axis=(1, 2, 3)))
    assert changed == 1.0  # every image is changed
    shifted = load_dataset(name, "val")
    assert np.array_equal(shifted.samples[0].source, shift_array(digits_images("val")[:1], SHIFTED_DIGITS[name].shift)[0])


def test_thicken_and_thin_move_every_pixel_the_right_way():
    images = digits_images()
    thick, thin = shift_array(images, shift.thicken), shift_array(images, shift.thin)
    assert np.all(thick >= images) and np.all(thin <= images)
    assert thick.mean() > images.mean() + 10 and thin.mean() < images.mean() - 10


def test_shift_that_changes_the_size_is_refused():
    with pytest.raises(ValueError, match="must keep the image size"):
        shift_array(digits_images()[:2], lambda image: image.resize((16, 16)))


def test_unseen_dataset_prompts_name_no_digit():
    dataset = load_dataset("digits-shift-unseen", "train")
    prompts = [dataset.prompt(c) for c in range(10)]
    assert prompts == [f"a photo of a {name}." for name in UNSEEN_CLASS_NAMES]
    assert len(set(prompts)) == 10 and not any(ch.isdigit() for p in prompts for ch in p)


def test_unseen_prompt_reaches_the_unet(tmp_path, monkeypatch, tiny_sd, tiny_sd_dir):
    """The text embeddings the UNet receives are those of the unseen-name prompts, not the digits'."""
    seen = []
    forward = UNet2DConditionModel.forward

    def spy(self, sample, timestep, encoder_hidden_states, *args, **kwargs):
        seen.append(encoder_hidden_states.detach().clone())
        return forward(self, sample, timestep, encoder_hidden_states, *args, **kwargs)

    monkeypatch.setattr(UNet2DConditionModel, "forward", spy)
    argv = ["-d", "digits-shift-unseen", "--model", str(tiny_sd_dir), "--guidance", "none",
            "--guide_checkpoint", str(tmp_path / "none.pth.tar"), "--output_dir", str(tmp_path / "out"),
            "--cache_dir", str(tmp_path / "cache"), "--max_source_images", "1", "--num_images_per_prompt", "1",
            "--steps", "4", "--guidance_scale", "1.0", "--feature_space", "none"]
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match="guide checkpoint"):  # a named guide that does not exist is refused
        expand.main(expand.parse_args(argv))
    argv[argv.index("--guide_checkpoint"):argv.index("--guide_checkpoint") + 2] = []
    assert expand.main(expand.parse_args(argv))["written"] == 1
    unseen = encode_prompts(tiny_sd, [f"a photo of a {name}." for name in UNSEEN_CLASS_NAMES]).cond
    digits = encode_prompts(tiny_sd, [f"a photo of the digit {d}." for d in range(10)]).cond
    assert seen
    for embeds in seen:  # CFG scale 1: the UNet gets the conditional embeddings alone, [1, L, D]
        assert any(torch.allclose(embeds[0], e) for e in unseen)
        assert not any(torch.allclose(embeds[0], e) for e in digits)


def _fake_comparison(root, dataset, *, drop=None, table_rows=shift_table.ROWS):
    """What scripts/shift_comparison.sh leaves behind, with made-up numbers: runs, gap_test.json, report.json."""
    for index, (_, folder, expansion) in enumerate(table_rows):
        for seed in (1, 2, 3):
            run = root / "checkpoint" / dataset / folder / f"seed{seed}"
            run.mkdir(parents=True)
            spread = seed - 2 if index == 0 else 0  # the original data varies by seed, the rest do not
            write_results(run / "results.yaml", {"best_accuracy": 90.0 + index + seed,
                                                 "val_selected_accuracy": 80.0 + index + spread, "final_accuracy": 1.0})
    expansions = [e for _, _, e in table_rows if e is not None and e != drop]
    rows = [{"name": "yardstick: real train vs test", "fid": 0.0058, "kid_mean": -1e-4, "kid_std": 2e-4,
             "fidelity_judge": 0.98, "fidelity_guide": 1.0, "copy_to_source": None}]
    rows += [{"name": f"expanded/{dataset}/{e}", "fid": 0.01 * (i + 1), "kid_mean": 1e-3, "kid_std": 1e-4,
              "fidelity_judge": 0.9, "fidelity_guide": 0.8, "copy_to_source": 0.25} for i, e in enumerate(expansions)]
    out = root / "results" / dataset
    (out / "comparison_report").mkdir(parents=True, exist_ok=True)
    (out / "gap_test.json").write_text(json.dumps({"rows": rows}))
    energies = {e: {"D_c": {"status": "ok", "final": {"mean": 0.3}},
                    "step": {"eps_saturated": {"mean": 0.87, "n": 500}, "move_draw": {"mean": 0.18, "n": 500},
                             "move_grad": {"mean": 0.004, "n": 500}}} for e in expansions}
    energies["sd_5x"] = {"D_c": {"status": "ok", "final": {"mean": 0.31}}, "step": {"status": "missing"}}
    if drop != "distdiff_direct_5x":  # no draw and no eps ball: only the gradient's move
        energies["distdiff_direct_5x"]["step"] = {"move_grad": {"mean": 0.9, "n": 500}}
    independent = [{"set": "real train (yardstick)", "reference": "test",
                    "overall": {"fid": 5.0, "kid_mean": 1e-4, "kid_std": 1e-3}}]
    independent += [{"set": e, "reference": reference, "overall": {"fid": 10.0 + i + (reference == "train"),
                                                                   "kid_mean": 2e-3, "kid_std": 1e-4}}
                    for i, e in enumerate(expansions) for reference in ("train", "test")]
    distribution = {"efficientnet_lite0": {"status": "ok", "rows": independent}}
    (out / "comparison_report" / "report.json").write_text(json.dumps({"energies": energies,
                                                                       "distribution": distribution}))


def test_shift_table_rows_come_from_the_runs_and_reports(tmp_path):
    _fake_comparison(tmp_path, "digits-shift-blur")
    text = shift_table.table("digits-shift-blur", tmp_path / "checkpoint", tmp_path / "results")
    lines = text.splitlines()
    assert len(lines) == 2 + 1 + len(shift_table.ROWS)
    original, autoaugment, sd = lines[3], lines[4], lines[5]
    # paired with SD img2img (82 in every seed): -3, -2, -1, i.e. -2 ± t(0.975, 2) x 1 / sqrt(3) = -2 ± 2.48
    assert original.startswith("| original data | 1,2,3 | 92.00 ± 1.00 | 80.00 ± 1.00 | -2.00 [-4.48, +0.48] (n=3, "
                               "MDE 3.26) | – |")
    assert sd.startswith("| SD img2img | 1,2,3 | 94.00 ± 1.00 | 82.00 ± 0.00 | – | 0.0100 |")
    assert "| 5.00 | 0.10 ± 1.00 |" in lines[2]  # the yardstick in the independent space
    assert "| 0.0100 | 1.00 ± 0.10 | 10.00 | 2.00 ± 0.10 |" in sd  # guide space, then the independent space vs test
    assert autoaugment.startswith("| AutoAugment | 1,2,3 | 93.00 ± 1.00 | 81.00 ± 0.00 | -1.00 [-1.00, -1.00] (n=3, "
                                  "MDE 0.00) |")
    assert "| 0.0100 |" in sd and "| 0.310 |" in sd and sd.endswith("| 0.310 |  |  |")
    assert lines[-1].startswith("| random transform alone (rho 0) |")
    assert lines[-2].startswith("| direct guidance |") and lines[-2].endswith("| – / 0.900 |")
    assert lines[-1].endswith("| 0.0600 | 1.00 ± 0.10 | 15.00 | 2.00 ± 0.10 | 0.900 | 0.800 | 0.250 | 0.300 | 0.870 | "
                              "0.180 / 0.004 |")


def test_shift_table_names_the_missing_input(tmp_path):
    with pytest.raises(ValueError, match="gap_test.json not found; run `bash scripts/shift_comparison.sh"):
        shift_table.table("digits-shift-blur", tmp_path / "checkpoint", tmp_path / "results")
    _fake_comparison(tmp_path, "digits-shift-blur", drop="distdiff_direct_5x")
    with pytest.raises(ValueError, match="distdiff_direct_5x is not in"):
        shift_table.table("digits-shift-blur", tmp_path / "checkpoint", tmp_path / "results")


def test_fashion_table_has_both_strengths_and_reads_the_choice_made_on_val(tmp_path):
    out = tmp_path / "results" / "fashion-mnist"
    with pytest.raises(ValueError, match="strength_choice.json not found; run `bash scripts/fashion_comparison.sh`"):
        shift_table.table("fashion-mnist", tmp_path / "checkpoint", tmp_path / "results", "fashion")
    out.mkdir(parents=True)
    (out / shift_table.STRENGTH_CHOICE).write_text(json.dumps({"strength": 0.9}))
    rows = shift_table.fashion_rows(out)
    assert [e for _, _, e in rows] == [None, None, "sd_5x", "distdiff_5x", "sd_5x_s0.9", "distdiff_5x_s0.9",
                                       "distdiff_direct_5x", "distdiff_rho0_5x"]
    _fake_comparison(tmp_path, "fashion-mnist", table_rows=rows)
    lines = shift_table.table("fashion-mnist", tmp_path / "checkpoint", tmp_path / "results", "fashion").splitlines()
    assert len(lines) == 3 + len(rows)
    assert lines[7].startswith("| SD img2img, strength 0.9 | 1,2,3 | 96.00 ± 1.00 | 84.00 ± 0.00 | +2.00 [+2.00, "
                               "+2.00] (n=3, MDE 0.00) | 0.0300 |")
    assert lines[8].startswith("| DistDiff class + group, 0.9 | 1,2,3 | 97.00 ± 1.00 | 85.00 ± 0.00 |")
