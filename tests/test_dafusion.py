"""DA-Fusion's rules (distdiff/method/dafusion.py, distdiff/data/real_or_synthetic.py) against the authors' code.

The transcriptions below are their lines, copied verbatim from github.com/brandontrabucco/da-fusion at commit
ea784ad (file and line numbers beside each); only the surrounding harness is ours.
"""

import random as python_random
import textwrap
import types

import numpy as np
import pytest
import torch

from distdiff.data.real_or_synthetic import real_or_copy
from distdiff.method.dafusion import (NUM_SYNTHETIC, PROMPT, STRENGTH_PROBABILITIES, STRENGTHS, SYNTHETIC_PROBABILITY,
                                      class_prompt, draw_strength, strength_from_uniform, token_name)

# semantic_aug/augmentations/compose.py, class ComposeParallel, lines 45-47 (__init__) and 52 (forward), verbatim.
THEIR_COMPOSE_PARALLEL = '''
class ComposeParallel:
    def __init__(self, augs, probs=None):
        self.augs = augs
        self.probs = probs if probs is not None \\
            else [1.0 / len(augs) for _ in augs]

    def forward(self):
        idx = np.random.choice(len(self.probs), p=self.probs)
        return idx
'''

# semantic_aug/few_shot_dataset.py, FewShotDataset.__getitem__, lines 82-95, verbatim (the harness stubs
# get_image_by_idx / get_label_by_idx / transform, and holds synthetic copies as (id, label) pairs, not paths).
THEIR_GETITEM = '''
class FewShotDataset:
    def __init__(self, synthetic_examples, synthetic_probability):
        self.synthetic_examples = synthetic_examples
        self.synthetic_probability = synthetic_probability
        self.transform = lambda image: image

    def get_image_by_idx(self, idx):
        return ("real", idx)

    def get_label_by_idx(self, idx):
        return 0

    def __getitem__(self, idx: int) -> Tuple[torch.Tensor, int]:

        if len(self.synthetic_examples[idx]) > 0 and \\
                np.random.uniform() < self.synthetic_probability:

            image, label = random.choice(self.synthetic_examples[idx])
            if isinstance(image, str): image = Image.open(image)

        else:

            image = self.get_image_by_idx(idx)
            label = self.get_label_by_idx(idx)

        return self.transform(image), label
'''


def _their(source: str, name: str, **names):
    """Their class `name`, defined from `source` with the module names it uses bound to `names` (the shims)."""
    scope = {"Tuple": tuple, "torch": torch, "Image": None, **names}
    exec(textwrap.dedent(source), scope)
    return scope[name]


def test_constants_are_their_launch_scripts():
    assert STRENGTHS == (1.0, 0.75, 0.5, 0.25) and STRENGTH_PROBABILITIES == (0.25,) * 4
    assert (SYNTHETIC_PROBABILITY, NUM_SYNTHETIC, PROMPT) == (0.5, 10, "a photo of a {name}")
    assert token_name("golden retriever") == "<golden_retriever>" and token_name("7") == "<7>"
    assert class_prompt("Ankle boot") == "a photo of a <Ankle_boot>"


def test_strength_draws_only_their_four_values_with_equal_frequencies():
    # One generator per image, seeded as this repo seeds images: 4000 images, each strength's share within 0.03
    # of 1/4 (its binomial standard deviation is 0.0068, so 0.03 is over 4 of them).
    draws = [draw_strength(torch.Generator().manual_seed(seed)) for seed in range(4000)]
    assert set(draws) == set(STRENGTHS)
    for strength in STRENGTHS:
        assert abs(draws.count(strength) / len(draws) - 0.25) < 0.03
    again = [draw_strength(torch.Generator().manual_seed(seed)) for seed in range(200)]
    assert again == draws[:200]  # same seed, same draw


def test_strength_draw_uses_one_uniform_of_the_generator():
    generator, witness = torch.Generator().manual_seed(11), torch.Generator().manual_seed(11)
    for _ in range(50):
        u = torch.rand((), generator=witness, dtype=torch.float64).item()
        assert draw_strength(generator) == strength_from_uniform(u)
    assert strength_from_uniform(0.0) == 1.0 and strength_from_uniform(0.25) == 0.75
    assert strength_from_uniform(0.999999) == 0.25
    with pytest.raises(ValueError, match="4 strengths but 3 probabilities"):
        strength_from_uniform(0.5, probabilities=(0.5, 0.25, 0.25))


@pytest.mark.parametrize("probs", [None, [0.25, 0.25, 0.25, 0.25], [0.1, 0.2, 0.3, 0.4]])
def test_strength_rule_matches_their_compose_parallel_on_the_same_uniform(probs):
    # Their ComposeParallel with numpy's global state replaced by RandomState(seed); ours reads the one uniform
    # that RandomState(seed) draws first. probs None: their default; the launch scripts pass 0.25 each.
    for seed in range(500):
        shim = types.SimpleNamespace(random=np.random.RandomState(seed))
        compose = _their(THEIR_COMPOSE_PARALLEL, "ComposeParallel", np=shim)([None] * 4, probs=probs)
        theirs = STRENGTHS[compose.forward()]
        u = np.random.RandomState(seed).random_sample()
        ours = strength_from_uniform(u, probabilities=probs or STRENGTH_PROBABILITIES)
        assert ours == theirs, (seed, u)


class _SameDraws:
    """Their np.random.uniform() and random.choice(seq), taken from one numpy Generator as ours takes them."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng

    def uniform(self) -> float:
        return self.rng.random()

    def choice(self, seq):
        return seq[self.rng.integers(len(seq))]


@pytest.mark.parametrize("probability", [0.0, 0.3, SYNTHETIC_PROBABILITY, 1.0])
def test_sampling_rule_matches_their_few_shot_dataset(probability):
    # Images with 0, 1, 3 and 10 copies, visited in a fixed random order: the same decisions and the same copies,
    # draw for draw (an image without copies takes no draw in either).
    copies = {i: [(("copy", i, c), 0) for c in range(n)] for i, n in enumerate([0, 1, 3, 10, 0, 3])}
    order = python_random.Random(0).choices(range(len(copies)), k=300)
    for seed in range(20):
        shim = _SameDraws(np.random.default_rng(seed))
        dataset = _their(THEIR_GETITEM, "FewShotDataset", np=types.SimpleNamespace(random=shim), random=shim)(
            copies, probability)
        theirs = [dataset[i][0] for i in order]
        rng = np.random.default_rng(seed)
        ours = []
        for i in order:
            pick = real_or_copy(len(copies[i]), probability, rng)
            ours.append(("real", i) if pick is None else copies[i][pick][0])
        assert ours == theirs


def test_each_image_draws_its_strength_from_its_own_seed():
    from distdiff.runs.expansion import WorkItem
    from distdiff.runs.generation import image_strengths

    items = [WorkItem(source_index=i, label=0, class_name="0", stem=f"s{i}", copy=0, seed=500 + i) for i in range(200)]
    drawn = image_strengths(items, STRENGTHS, 0.5)
    assert set(drawn) == set(STRENGTHS)
    assert drawn == image_strengths(items[::-1], STRENGTHS, 0.5)[::-1]  # per image, not per batch
    assert image_strengths(items, (), 0.3) == [0.3] * 200


def test_expand_py_learns_the_tokens_once_draws_strengths_and_keeps_images_batch_independent(
        tmp_path, tiny_sd_dir, digits_guide_checkpoint):
    import json

    import expand
    from distdiff.runs.expansion import CLASS_TOKENS
    from distdiff.runs.manifest import MANIFEST

    def argv(out, *extra):
        return ["-d", "digits", "--model", str(tiny_sd_dir), "--guide_checkpoint", str(digits_guide_checkpoint),
                "--output_dir", str(out), "--cache_dir", str(tmp_path / "cache"), "--max_source_images", "2",
                "--num_images_per_prompt", "3", "--steps", "8", "--no_report", "--num_threads", "1",
                "--guidance", "none", "--class_tokens", "learned", "--inversion_steps", "2",
                "--strength_choices", "1.0", "0.75", "0.5", "0.25", *extra]

    assert expand.main(expand.parse_args(argv(tmp_path / "a", "--batch_size", "6")))["written"] == 6
    tokens = torch.load(tmp_path / "a" / CLASS_TOKENS)
    assert sorted(tokens) == sorted(f"<{d}>" for d in range(10))
    records = [json.loads(line) for line in (tmp_path / "a" / MANIFEST).read_text().splitlines()]
    assert {r["params"]["class_tokens_learned"] for r in records} == {True}
    assert all(r["strength"] in STRENGTHS for r in records) and len({r["strength"] for r in records}) > 1
    stamp = (tmp_path / "a" / CLASS_TOKENS).stat().st_mtime_ns
    assert expand.main(expand.parse_args(argv(tmp_path / "a", "--batch_size", "6")))["written"] == 0  # resumed
    assert (tmp_path / "a" / CLASS_TOKENS).stat().st_mtime_ns == stamp  # the tokens were reused, not relearnt
    # one image per call: the same tokens, strengths and images as in batches of 6 with mixed strengths; the tokens
    # are not learnt again but taken from the cache the first folder filled (the same model, split, steps and seed)
    cached = list((tmp_path / "cache" / "class_tokens").glob("digits-*.pt"))
    assert len(cached) == 1
    cached[0].write_bytes(cached[0].read_bytes())  # a fresh mtime, to tell a reuse from a relearn
    stamp = cached[0].stat().st_mtime_ns
    expand.main(expand.parse_args(argv(tmp_path / "b", "--batch_size", "1")))
    assert torch.equal(torch.load(tmp_path / "b" / CLASS_TOKENS)["<3>"], tokens["<3>"])
    assert cached[0].stat().st_mtime_ns == stamp
    import numpy as np
    from PIL import Image

    from test_pinned_images import ROUNDING_BAND  # batching reorders float sums: equal bytes only on some kernels

    for record in records:
        a, b = (np.asarray(Image.open(tmp_path / run / record["image"]), dtype=np.int16) for run in "ab")
        assert np.abs(a - b).max() <= ROUNDING_BAND["max_level_difference"]
        assert (a != b).sum() <= ROUNDING_BAND["max_values_off_per_image"]
    with pytest.raises(SystemExit, match="--inversion_steps 5 sets how --class_tokens learned"):
        expand.main(expand.parse_args(argv(tmp_path / "c", "--class_tokens", "names", "--inversion_steps", "5")))
    with pytest.raises(SystemExit, match=r"--strength_choices 1.5 must be in \(0, 1\]"):
        expand.main(expand.parse_args(argv(tmp_path / "c", "--strength_choices", "1.5")))
    with pytest.raises(SystemExit, match="--guidance_step"):  # DistDiff's window at T - M lies before 0.25's start
        expand.main(expand.parse_args(argv(tmp_path / "c", "--guidance", "transform", "--guidance_step", "4")))
