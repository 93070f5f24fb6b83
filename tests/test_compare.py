"""distdiff.jobs.compare and scripts/compare.py: a benchmark spec run as whole-pipeline replicates."""

import json
import sys
from pathlib import Path

import pytest

from distdiff.jobs.compare import (Benchmark, Experiment, Grid, Layout, SpecError, experiment_jobs, guide_job,
                                   load_benchmark, run_benchmark)
from distdiff.training.results import read_results

REPO = Path(__file__).resolve().parents[1]
SPECS = sorted((REPO / "scripts" / "experiments").glob("*.py"))


def test_a_spec_is_checked_when_it_is_made():
    sd = Experiment("sd", "SD", ("--guidance", "none"))
    with pytest.raises(SpecError, match="baseline 'nope'"):
        Benchmark("b", "digits", (sd,), baseline="nope")
    with pytest.raises(SpecError, match="unique"):
        Benchmark("b", "digits", (sd, sd), baseline="sd")
    with pytest.raises(SpecError, match="at least 2 replicates including 1"):
        Benchmark("b", "digits", (sd,), baseline="sd", replicates=(2, 3))
    with pytest.raises(SpecError, match="'a-b' is not a folder name"):
        Benchmark("b", "digits", (Experiment("a-b", "x"),), baseline="original")


@pytest.mark.parametrize("spec", [s for s in SPECS if s.name != "rows.py"], ids=lambda p: p.stem)
def test_the_shipped_specs_load(spec):
    bench = load_benchmark(spec)
    assert bench.replicates == (1, 2, 3, 4, 5) and bench.baseline == "sd"
    names = [e.name for e in bench.experiments]
    assert names == ["sd", "distdiff", "distdiff_authors", "select_probability", "variant"]


def test_replicate_r_is_guided_seeded_and_trained_by_r(tmp_path):
    bench = Benchmark("b", "digits", (Experiment("dd", "DistDiff", ("--rho", "5")),), baseline="original")
    layout = Layout(bench, tmp_path)
    expand, train = (job.argv for job in experiment_jobs(layout, bench.experiments[0], 3))
    guide = str(tmp_path / "checkpoint" / "digits" / "smallcnn_unpretrained_lr0.1" / "seed3" / "model_best.pth.tar")
    out = str(tmp_path / "expanded" / "digits" / "dd" / "seed3")
    assert expand[expand.index("--guide_checkpoint") + 1] == guide and expand[expand.index("--seed") + 1] == "3"
    assert expand[expand.index("--output_dir") + 1] == out and expand[-2:] == ("--rho", "5")
    assert train[train.index("--seed") + 1] == "3" and train[train.index("--expanded_dir") + 1] == out
    assert train[2:5] == ("digits", "smallcnn", "0.1") and train[5] == "dd"
    assert guide_job(layout, 3).argv[-2:] == ("--output_root", str(tmp_path / "checkpoint"))


def test_a_tiny_benchmark_runs_end_to_end_and_chooses_on_val(tmp_path):
    # 2 replicates, 2 sources x 1 copy, 4 DDIM steps, 2 epochs: every stage but the report, for real
    tiny = ("--max_source_images", "2", "--steps", "4", "--guidance_step", "2", "--guidance_period", "1",
            "--batch_size", "2")
    bench = Benchmark("tiny", "digits", (Experiment("sd", "SD img2img", ("--guidance", "none")),
                                         Grid("g", "a grid", {"low": ("--rho", "0"), "high": ()})),
                      baseline="sd", replicates=(1, 2), copies=1, expand_flags=tiny,
                      train_flags=("--epochs", "2", "--batch_size", "20"), report=False)
    text = run_benchmark(bench, lanes=2, root=tmp_path)
    layout = Layout(bench, tmp_path)
    val = {s: read_results(layout.runs(f"g_{s}") / "seed1" / "results.yaml")["val_best_accuracy"]
           for s in ("low", "high")}
    chosen = "low" if val["low"] >= val["high"] else "high"  # the first on a tie
    assert json.loads((layout.results / "chosen.json").read_text()) == {"g": chosen}
    other = "high" if chosen == "low" else "low"
    assert not (layout.runs(f"g_{other}") / "seed2").exists()  # the other setting ran replicate 1 only
    assert (layout.expansion(f"g_{chosen}", 2) / "expand_config.json").is_file()
    config = json.loads((layout.expansion("sd", 2) / "expand_config.json").read_text())
    assert config["seed"] == 2 and config["guide_checkpoint"] == str(layout.guide(2).resolve())
    lines = (layout.results / "table.md").read_text().splitlines()
    assert text.splitlines() == lines
    assert [line.split(" | ")[1] for line in lines[2:5]] == ["original", "sd", f"g_{chosen}"]
    assert all(line.split(" | ")[2] == "1,2" for line in lines[2:5])
    sd_row = lines[3].split(" | ")  # vs itself (2 metrics), paired with the original data (2), then the report's 2
    assert sd_row[-6:-4] == ["–", "–"] and all("(n=2, MDE" in cell for cell in sd_row[-4:-2])
    assert lines[3].endswith("|  |  |")  # no report stage in this benchmark: blank report columns
    assert f"Chosen on val: a grid: {chosen}" in lines[-1]
    # rerunning skips everything finished and gives the same table
    assert run_benchmark(bench, lanes=1, root=tmp_path, stages=("table",)) == text
    # the report stage's distances and fidelity (replicate 1) fill the last two columns
    report = {"distribution": {"efficientnet_lite0": {"status": "ok", "rows": [
        {"set": "real train (yardstick)", "reference": "test", "overall": {"fid": 7.5}},
        {"set": "sd/seed1", "reference": "train", "overall": {"fid": 99.0}},
        {"set": "sd/seed1", "reference": "test", "overall": {"fid": 21.25}}]}},
        "label_fidelity": {"guide": {"sd/seed1": {"overall": {"share": 0.875}}}}}
    (layout.results / "report").mkdir()
    (layout.results / "report" / "report.json").write_text(json.dumps(report))
    with_report = run_benchmark(bench, lanes=1, root=tmp_path, stages=("table",)).splitlines()
    assert with_report[2].endswith("| 7.50 |  |") and with_report[3].endswith("| 21.25 | 0.875 |")
    assert with_report[4].endswith("|  |  |")  # not in the report: blank, never a made-up value
    # a benchmark whose grid is not chosen yet still tables what has finished, and says what is missing
    (layout.results / "chosen.json").unlink()
    partial = run_benchmark(bench, lanes=1, root=tmp_path, stages=("table",)).splitlines()
    assert [line.split(" | ")[1] for line in partial[2:4]] == ["original", "sd"] and partial[4] == ""
    assert partial[-1] == "Chosen on val: a grid: not chosen yet (the choose stage has not run)."
    import shutil

    shutil.rmtree(layout.runs("sd"))  # an experiment not run yet: a row without replicates
    assert run_benchmark(bench, lanes=1, root=tmp_path, stages=("table",)).splitlines()[3].startswith(
        "| SD img2img | sd |  |  |  |  | – | – | too few replicates | too few replicates | 21.25 | 0.875 |")


def test_compare_py_names_a_missing_spec(tmp_path):
    sys.path.insert(0, str(REPO / "scripts"))
    import compare

    with pytest.raises(SystemExit, match=r"^compare.py: error: .*none.py not found; pass a spec file"):
        compare.main(compare.parse_args([str(tmp_path / "none.py")]))
