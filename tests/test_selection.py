"""Tests for distdiff.runs.selection: best of k candidates by the guide's score."""

import hashlib

import pytest
import torch

import expand
from distdiff.method.records import Record
from distdiff.pipelines.distdiff_img2img import DistDiffOutput
from distdiff.runs.manifest import MANIFEST, read_manifest
from distdiff.runs.selection import best_of, candidate_seeds, generate_best_of


def test_candidate_zero_is_the_image_itself_and_the_others_have_their_own_seeds():
    assert candidate_seeds([5, 9], 0) == [5, 9]
    first, second = candidate_seeds([5, 9], 1), candidate_seeds([5, 9], 2)
    assert first == candidate_seeds([5, 9], 1) and len({*first, *second, 5, 9}) == 6


def _output(fill, scores, extra):
    return DistDiffOutput(images=torch.full((len(scores), 1, 1, 1), float(fill)),
                          records={Record.SELECTION_SCORE: scores, Record.D_C_FINAL: extra})


def test_best_of_keeps_each_images_best_candidate_with_its_own_records():
    outputs = [_output(0, [0.5, 0.2, 0.3], [10, 11, 12]), _output(1, [0.4, 0.9, 0.3], [20, 21, 22])]
    lowest = best_of(outputs, by="energy")
    assert lowest.records[Record.CANDIDATE] == [1, 0, 0]  # the tie at image 2 keeps the first
    assert lowest.images.flatten().tolist() == [1.0, 0.0, 0.0]
    assert lowest.records[Record.D_C_FINAL] == [20, 11, 12] and lowest.records[Record.SELECTION_SCORE] == [0.4, 0.2, 0.3]
    highest = best_of(outputs, by="probability")
    assert highest.records[Record.CANDIDATE] == [0, 1, 0] and highest.records[Record.D_C_FINAL] == [10, 21, 12]


def test_one_candidate_is_one_call_and_k_candidates_are_k_calls():
    calls = []

    def generate(seeds):
        calls.append(seeds)
        return _output(len(calls), [float(len(calls))] * len(seeds), [0.0] * len(seeds))

    assert generate_best_of(generate, [3, 4], candidates=1, by="energy").records[Record.SELECTION_SCORE] == [1.0, 1.0]
    assert calls == [[3, 4]]
    calls.clear()
    best = generate_best_of(generate, [3, 4], candidates=3, by="probability")
    assert calls == [candidate_seeds([3, 4], j) for j in range(3)] and best.records[Record.CANDIDATE] == [2, 2]
    with pytest.raises(ValueError, match="--candidates must be at least 1"):
        generate_best_of(generate, [3], candidates=0, by="energy")


def _expand(tmp_path, tiny_sd_dir, guide, name, *extra):
    out = tmp_path / name
    expand.main(expand.parse_args([
        "-d", "digits", "--model", str(tiny_sd_dir), "--guide_checkpoint", str(guide), "--output_dir", str(out),
        "--cache_dir", str(tmp_path / "cache"), "--max_source_images", "3", "--num_images_per_prompt", "1",
        "--steps", "4", "--guidance", "none", "--batch_size", "3", "--num_threads", "1", "--no_report", *extra]))
    return out, read_manifest(out / MANIFEST)


def test_selection_on_plain_img2img_keeps_the_lowest_energy_of_its_candidates(tmp_path, tiny_sd_dir,
                                                                           digits_guide_checkpoint):
    plain_dir, plain = _expand(tmp_path, tiny_sd_dir, digits_guide_checkpoint, "plain")
    best_dir, best = _expand(tmp_path, tiny_sd_dir, digits_guide_checkpoint, "best", "--candidates", "3")
    assert sorted(best) == sorted(plain) and all(plain[i]["candidate"] is None for i in plain)
    for image, record in best.items():
        own = plain[image]["D_c_final"] + plain[image]["D_g_final"]  # candidate 0's energy (gs = ls = 1)
        assert record["candidate"] in (0, 1, 2)
        assert record["selection_score"] == pytest.approx(record["D_c_final"] + record["D_g_final"], abs=1e-5)
        assert record["selection_score"] <= own + 1e-5
        same = hashlib.sha256((best_dir / image).read_bytes()).digest() == \
            hashlib.sha256((plain_dir / image).read_bytes()).digest()
        assert same == (record["candidate"] == 0)
    assert best[next(iter(best))]["params"]["candidates"] == 3
    assert {r["candidate"] for r in best.values()} != {0}  # some image kept another candidate than its own
