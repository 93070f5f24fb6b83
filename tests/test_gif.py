"""distdiff.method.gif: GIF-SD's prompts, score and latent update, equal to the authors' code on identical inputs."""

import warnings
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd import Variable

from distdiff.method.gif import (ADJECTIVES, DOMAINS, GifGuidance, draw_prompt, gif_score, gif_step,
                                 prompt_variants)
from distdiff.method.guidance import StepContext
from distdiff.method.records import Record
from distdiff.utils.settings import OptionError
from authors_code import gif_sd  # tests/authors_code/, beside this file

TOLERANCE = 1e-5  # float32 on any CPU kernel: the two compute the same operations in a different order


class Models:
    """Stand-ins for their LDM decoder, core.imresize and CLIP's image encoder: small, fixed, differentiable."""

    def __init__(self, classes: int = 5, dim: int = 8):
        torch.manual_seed(11)
        self.decoder = nn.Conv2d(4, 3, 3, padding=1)
        self.encoder = nn.Sequential(nn.Conv2d(3, dim, 7, stride=4), nn.Tanh(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.text_classifier = F.normalize(torch.randn(classes, dim), dim=1)

    def decode_first_stage(self, z):
        return torch.tanh(F.interpolate(self.decoder(z), scale_factor=2, mode="nearest"))

    def imresize(self, x, sizes):
        return F.interpolate(x, size=sizes, mode="bilinear", align_corners=False)

    def encode_image(self, x):
        return self.encoder(x)

    def features(self, z):
        """Ours: the same decode, clamp, resize and encoder, L2-normalised."""
        x = torch.clamp((self.decode_first_stage(z) + 1.0) / 2.0, min=0.0, max=1.0)
        return F.normalize(self.encode_image(self.imresize(x, (224, 224))).float(), dim=1)

    def classify(self, z):
        f = self.features(z)
        return 100.0 * f @ self.text_classifier.T, f  # CLIP zero-shot logits, as their code scores

    def source_probs(self, images):
        """The softmax of the zero-shot prediction on source images [B,3,H,W], as their lines 535-538."""
        f = F.normalize(self.encode_image(images).float(), dim=1)
        return (100.0 * f @ self.text_classifier.T).softmax(dim=-1)


def their_code(models, samples, original_inputs, *, seed: int, constraint_value: float):
    """Run the authors' lines (tests/authors_code/gif_sd.py) on these inputs; their namespace after the update."""
    ns = {"torch": torch, "F": F, "Variable": Variable, "GIF_model": models, "model": models,
          "core": SimpleNamespace(imresize=models.imresize), "text_classifier": models.text_classifier,
          "kl_loss": nn.KLDivLoss(reduction="batchmean", log_target=True),  # their line 507
          "expanded_number_per_sample_each_epoch": samples.shape[0], "samples": samples.clone(),
          "original_inputs": original_inputs, "args": SimpleNamespace(constraint_value=constraint_value)}
    exec(gif_sd.HELPERS, ns)
    with torch.no_grad():
        exec(gif_sd.SOURCE_PREDICTION, ns)
    torch.manual_seed(seed)  # their (e, b) come from torch's global generator
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # their F.log_softmax without dim (dim 1 for 2-D input)
        exec(gif_sd.SCORE_AND_UPDATE, ns)
    return ns


@pytest.fixture
def cuda_is_the_identity(monkeypatch):
    monkeypatch.setattr(torch.Tensor, "cuda", lambda self, *args, **kwargs: self)


def _inputs(copies: int, seed: int = 3):
    torch.manual_seed(seed)
    samples = torch.randn(copies, 4, 8, 8)
    source = torch.rand(1, 3, 16, 16).repeat(copies, 1, 1, 1)  # one source, one copy per sampled latent
    return samples, source


@pytest.mark.parametrize("constraint_value", [0.1, 0.8, 4.0])  # their README's values: medical, most, Caltech
def test_score_and_update_equal_the_authors_code(cuda_is_the_identity, constraint_value):
    models = Models()
    samples, source = _inputs(copies=4)
    theirs = their_code(models, samples, source, seed=7, constraint_value=constraint_value)
    source_probs = models.source_probs(source)  # ours: the same prediction on the source
    groups = torch.zeros(4, dtype=torch.long)
    torch.manual_seed(7)  # the same (e, b) their lines drew
    scale, bias = torch.rand([4, 4, 1, 1]), torch.zeros([4, 4, 1, 1]).normal_(0, 1)
    score = gif_score(*models.classify(samples * (1 + scale) + bias), source_probs, groups)
    assert score.item() == pytest.approx(theirs["Score"].item(), abs=TOLERANCE)

    def objective(z):
        return gif_score(*models.classify(z), source_probs, groups)

    ours, saturated = gif_step(samples, scale, bias, objective, step_size=0.1, eps=constraint_value)
    assert torch.allclose(ours, theirs["samples"], atol=TOLERANCE, rtol=0)
    assert (ours - samples).abs().max() <= constraint_value + 1e-6
    # an element the step took outside the ball ends on its surface (their clamp), within rounding
    on_ball = ((theirs["samples"] - samples).abs() > constraint_value - TOLERANCE).float().mean(dim=(1, 2, 3))
    assert torch.equal(saturated, on_ball)
    if constraint_value == 0.1:
        assert (saturated > 0.5).all()  # a draw e ~ U[0,1) moves most elements by more than 0.1


def test_their_top1_term_at_their_batch_of_one_source_reads_only_the_first_copy(cuda_is_the_identity):
    # Their loader gives one source per batch (--train-batch 1), so the source prediction has shape [1] and
    # torch.gather(prob [B,K], 1, index [1,1]) keeps copy 0's probability alone; this port scores every copy.
    models = Models()
    samples, source = _inputs(copies=3, seed=1)  # copies the classifier tells apart: their rule differs from ours
    theirs = their_code(models, samples, source[:1], seed=2, constraint_value=0.8)
    torch.manual_seed(2)
    scale, bias = torch.rand([3, 4, 1, 1]), torch.zeros([3, 4, 1, 1]).normal_(0, 1)
    logits, features = models.classify(samples * (1 + scale) + bias)
    source_probs = models.source_probs(source[:1])
    probs, index = logits.softmax(dim=-1), source_probs.argmax()
    every_copy = gif_score(logits, features, source_probs.expand(3, -1), torch.zeros(3, dtype=torch.long))
    first_copy_only = every_copy - probs[:, index].mean() + probs[0, index]
    assert theirs["Score"].item() == pytest.approx(first_copy_only.item(), abs=TOLERANCE)
    assert abs(every_copy.item() - first_copy_only.item()) > 10 * TOLERANCE  # the two rules differ here


def test_the_diversity_term_is_their_kl_within_each_source_group():
    torch.manual_seed(0)
    logits, features = torch.randn(4, 3), F.normalize(torch.randn(4, 6), dim=1)
    source_probs = torch.randn(4, 3).softmax(dim=-1)
    kl = nn.KLDivLoss(reduction="batchmean", log_target=True)
    base = gif_score(logits, features, source_probs, torch.zeros(4, dtype=torch.long))
    probs = logits.softmax(dim=-1)
    entropy = -(probs * probs.log()).sum(1) + (source_probs * source_probs.log()).sum(1)
    top1 = probs.gather(1, source_probs.argmax(1, keepdim=True)).mean()
    one_group = kl(F.log_softmax(features, 1), F.log_softmax(features.mean(0, keepdim=True).expand(4, -1), 1))
    assert base.item() == pytest.approx((entropy.mean() + top1 + one_group).item(), abs=1e-6)
    split = gif_score(logits, features, source_probs, torch.tensor([0, 0, 1, 1]))
    two_groups = sum(kl(F.log_softmax(features[g], 1), F.log_softmax(features[g].mean(0, keepdim=True).expand(2, -1),
                                                                       1)) * 2 for g in (slice(0, 2), slice(2, 4))) / 4
    assert split.item() == pytest.approx((entropy.mean() + top1 + two_groups).item(), abs=1e-6)
    single = gif_score(logits[:1], features[:1], source_probs[:1], torch.zeros(1, dtype=torch.long))
    assert single.item() == pytest.approx((entropy[:1].mean() + probs[0, source_probs[0].argmax()]).item(), abs=1e-6)


def test_prompts_are_their_domain_by_adjective_templates_drawn_per_image():
    variants = prompt_variants("sandal")
    assert len(variants) == len(DOMAINS) * len(ADJECTIVES) == 50
    assert variants[0] == "an image of  sandal" and variants[-1] == "a sketch of dark sandal"  # their "{} {} {}"
    draws = [draw_prompt(torch.Generator().manual_seed(s)) for s in range(2000)]
    assert draws[:5] == [draw_prompt(torch.Generator().manual_seed(s)) for s in range(5)]  # seeded
    counts = torch.bincount(torch.tensor(draws), minlength=50)
    assert counts.min() > 0 and counts.max() < 2000 / 50 * 2  # every variant drawn, none twice its share


def test_the_method_checks_its_options_and_runs_as_the_final_hook():
    with pytest.raises(OptionError, match="eps"):
        GifGuidance(eps=0)
    with pytest.raises(OptionError, match="step_size"):
        GifGuidance(step_size=-0.1)
    models = Models()
    samples, source = _inputs(copies=2)
    ctx = StepContext(timesteps=torch.arange(10, 0, -1), denoise=None, image_energy=None,
                      generators=[torch.Generator().manual_seed(s) for s in (1, 2)], classify=models.classify,
                      source_probs=models.source_probs(source), groups=torch.tensor([0, 0]))
    out = GifGuidance(eps=0.5).final_latents(samples, ctx)
    assert out.latents.shape == samples.shape and 0 < (out.latents - samples).abs().max() <= 0.5 + 1e-6
    assert out.stats[Record.EPS_SATURATED].shape == (2,)
    with pytest.raises(ValueError, match="GIF-SD needs a classifier's predictions"):
        GifGuidance().final_latents(samples, StepContext(timesteps=torch.arange(3), denoise=None, image_energy=None,
                                                         generators=ctx.generators))


def test_each_image_draws_its_own_prompt_variant_from_its_seed():
    from distdiff.runs.expansion import WorkItem
    from distdiff.runs.generation import class_prompt_table, prompt_rows

    table, variants = class_prompt_table(GifGuidance(), ["a photo of the digit 0.", "a photo of the digit 1."],
                                         ["0", "1"])
    assert variants == 50 and len(table) == 100 and table[50:52] == ["an image of  1", "an image of colorful 1"]
    assert class_prompt_table(None, ["p0", "p1"], ["0", "1"]) == (["p0", "p1"], 1)
    items = [WorkItem(source_index=i, label=i % 2, class_name=str(i % 2), stem=f"s{i}", copy=0, seed=1000 + i)
             for i in range(40)]
    rows = prompt_rows(GifGuidance(), items, variants)
    assert torch.equal(rows, prompt_rows(GifGuidance(), items[::-1], variants).flip(0))  # per image, not per batch
    assert all(it.label * 50 <= r < it.label * 50 + 50 for it, r in zip(items, rows.tolist()))
    assert len(set(rows.tolist())) > 20  # the variants differ between images
    assert prompt_rows(None, items, 1).tolist() == [it.label for it in items]


def expand_argv(tmp_path, sd_dir, guide, out, *extra):
    """expand.py's flags for 2 sources x 2 copies of digits on the tiny SD, 4 steps, one batch, no report."""
    return ["-d", "digits", "--model", str(sd_dir), "--guide_checkpoint", str(guide), "--output_dir", str(out),
            "--cache_dir", str(tmp_path / "cache"), "--max_source_images", "2", "--num_images_per_prompt", "2",
            "--steps", "4", "--batch_size", "4", "--no_report", "--num_threads", "1", *extra]


def test_expand_py_runs_gif_sd_records_its_options_and_refuses_the_others(tmp_path, tiny_sd_dir,
                                                                          digits_guide_checkpoint):
    import json

    import expand
    from distdiff.runs.manifest import MANIFEST

    def argv(out, *extra, guidance="gif_sd"):
        return expand_argv(tmp_path, tiny_sd_dir, digits_guide_checkpoint, out, "--guidance", guidance, *extra)

    result = expand.main(expand.parse_args(argv(tmp_path / "gif", "--gif_eps", "0.5")))
    assert result["written"] == 4
    records = [json.loads(line) for line in (tmp_path / "gif" / MANIFEST).read_text().splitlines()]
    assert {r["params"]["guidance"] for r in records} == {"gif_sd"}
    assert {(r["params"]["gif_eps"], r["params"]["gif_step_size"]) for r in records} == {(0.5, 0.1)}
    assert all(0 <= r["eps_saturated"] <= 1 and r["D_c_final"] is not None for r in records)
    with pytest.raises(SystemExit, match="--rho 5.0 is an option of --guidance transform or direct"):
        expand.main(expand.parse_args(argv(tmp_path / "x", "--rho", "5")))
    with pytest.raises(SystemExit, match="--gif_eps 0.5 is an option of --guidance gif_sd; add --guidance gif_sd"):
        expand.main(expand.parse_args(argv(tmp_path / "x", "--gif_eps", "0.5", guidance="transform")))
    with pytest.raises(SystemExit, match="--gif_step_size must be positive"):
        expand.main(expand.parse_args(argv(tmp_path / "x", "--gif_step_size", "0")))


def test_expand_py_scores_gif_sd_with_a_clip_model_where_gif_clip_names_one(tmp_path, tiny_sd_dir, tiny_clip_dir,
                                                                           digits_guide_checkpoint):
    import json

    import expand
    from distdiff.runs.manifest import MANIFEST

    def argv(out, *extra, guidance="gif_sd"):
        return expand_argv(tmp_path, tiny_sd_dir, digits_guide_checkpoint, out, "--guidance", guidance, *extra)

    assert expand.main(expand.parse_args(argv(tmp_path / "clip", "--gif_clip", str(tiny_clip_dir))))["written"] == 4
    assert expand.main(expand.parse_args(argv(tmp_path / "guide")))["written"] == 4
    records = {name: [json.loads(line) for line in (tmp_path / name / MANIFEST).read_text().splitlines()]
               for name in ("clip", "guide")}
    assert {r["params"]["gif_clip"] for r in records["clip"]} == {str(tiny_clip_dir)}
    assert {r["params"]["gif_clip"] for r in records["guide"]} == {None}
    # The same seeds, prompts and (e, b) draws: only the scorer differs, and with it the signed step.
    pngs = {name: sorted((tmp_path / name).rglob("*.png")) for name in records}
    assert [p.name for p in pngs["clip"]] == [p.name for p in pngs["guide"]]
    assert any(a.read_bytes() != b.read_bytes() for a, b in zip(pngs["clip"], pngs["guide"]))
    assert all(0 <= r["eps_saturated"] <= 1 and r["D_c_final"] is not None for r in records["clip"])
    with pytest.raises(SystemExit, match="--gif_clip .* is an option of --guidance gif_sd; add --guidance gif_sd"):
        expand.main(expand.parse_args(argv(tmp_path / "x", "--gif_clip", str(tiny_clip_dir), guidance="transform")))
    with pytest.raises(SystemExit, match="--gif_clip .*nowhere: no CLIP model could be loaded"):
        expand.main(expand.parse_args(argv(tmp_path / "y", "--gif_clip", str(tmp_path / "nowhere"),
                                           "--local_files_only")))
