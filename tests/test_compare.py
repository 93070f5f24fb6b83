"""distdiff.jobs.{spec,compare,compare_table} and scripts/compare.py: a benchmark spec run as whole-pipeline
replicates and its table."""

import json
import sys
from pathlib import Path

import pytest

from distdiff.errors import UserError
from distdiff.jobs.compare import experiment_jobs, guide_job, run_benchmark
from distdiff.jobs.compare_table import table
from distdiff.jobs.spec import Augmentation, Benchmark, Experiment, Grid, Layout, SpecError, load_benchmark
from distdiff.training.results import read_results, write_results

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


# each shipped spec: (its experiments' names, whether it runs the judge); a renamed row is a new folder, so a change
# here is a change of what the runs are called
SHIPPED = {
    "digits_shift_blur": (["sd", "distdiff", "distdiff_authors", "select_probability", "variant"], False),
    "digits_shift_unseen": (["sd", "distdiff", "distdiff_authors", "select_probability", "variant"], False),
    "fashion_mnist": (["sd", "distdiff", "distdiff_authors", "select_probability", "variant"], False),
    "digits_paper": (["autoaugment", "sd", "distdiff_class", "distdiff_group", "distdiff"], False),
    "shift_paper": (["autoaugment", "sd", "distdiff_class", "distdiff_group", "distdiff", "distdiff_direct",
                     "distdiff_rho0"], True),
    "fashion_mnist_paper": (["autoaugment", "sd", "distdiff", "sd_s09", "distdiff_s09", "distdiff_direct",
                             "distdiff_rho0"], True),
    "variants": (["sd", "distdiff", "identity", "direct", "select", "select_direct"], True),
    "rivals": (["sd", "distdiff", "gif_sd", "dafusion", "distdiff_tokens"], True),
    "fashion_mnist_10": (["sd", "distdiff"], False),
}
# replicates where a spec differs from the protocol's default 1-5
REPLICATES = {"fashion_mnist_10": tuple(range(1, 11))}


def test_every_shipped_spec_is_listed_here():
    assert sorted(s.stem for s in SPECS if s.name != "rows.py") == sorted(SHIPPED)


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_the_shipped_specs_load(name):
    bench = load_benchmark(REPO / "scripts" / "experiments" / f"{name}.py")
    assert bench.replicates == REPLICATES.get(name, (1, 2, 3, 4, 5)) and bench.baseline == "sd"
    assert ([e.name for e in bench.experiments], bench.judge) == SHIPPED[name]


def test_a_row_shared_by_two_specs_is_the_same_runs_with_the_same_flags():
    # sd and distdiff of the replicates spec and the paper's table on digits-shift-blur: one folder each, so the flags
    # (and the benchmark-wide expand flags) must agree or expand.py would refuse to resume the other's folder
    specs = [load_benchmark(REPO / "scripts" / "experiments" / f"{n}.py") for n in ("digits_shift_blur", "shift_paper",
                                                                                   "variants", "rivals")]
    for name in ("sd", "distdiff"):
        flags = {next(e.flags for e in b.experiments if e.name == name) + b.expand_flags for b in specs}
        assert len(flags) == 1


def test_an_experiment_s_own_train_flags_reach_its_training_only(tmp_path):
    bench = load_benchmark(REPO / "scripts" / "experiments" / "rivals.py")
    by_name = {e.name: e for e in bench.experiments}
    layout = Layout(bench, tmp_path)
    expand, train = (job.argv for job in experiment_jobs(layout, by_name["dafusion"], 2))
    assert train[-2:] == ("--synthetic_probability", "0.5") and "--synthetic_probability" not in expand
    assert expand[expand.index("--strength_choices") + 1:][:4] == ("1.0", "0.75", "0.5", "0.25")
    assert "--synthetic_probability" not in experiment_jobs(layout, by_name["distdiff_tokens"], 2)[1].argv


def test_an_augmentation_row_is_trained_on_the_original_data_with_its_augment(tmp_path):
    with pytest.raises(SpecError, match="augment 'nope' is none of"):
        Augmentation("aa", "AutoAugment", "nope")
    aa = Augmentation("aa", "AutoAugment", "autoaugment")
    bench = Benchmark("b", "digits", (aa,), baseline="original")
    argv = guide_job(Layout(bench, tmp_path), 2, aa).argv
    assert argv[argv.index("--augment") + 1] == "autoaugment" and argv[argv.index("--seed") + 1] == "2"
    assert guide_job(Layout(bench, tmp_path), 2, aa).name == "aa_seed2"
    assert Layout(bench, tmp_path).runs(None, augment="autoaugment").name == "smallcnn_unpretrained_lr0.1_autoaugment"


def _write_runs(folder, values):
    for seed, (at_val, last10) in enumerate(values, start=1):
        write_results(folder / f"seed{seed}" / "results.yaml", {"best_accuracy": at_val + 1, "val_selected_accuracy":
                                                                at_val, "last10_accuracy": last10})


def test_the_table_has_the_judge_and_speed_columns_and_blank_cells_where_nothing_was_measured(tmp_path):
    bench = Benchmark("b", "digits-shift-blur", (Augmentation("aa", "AutoAugment", "autoaugment"),
                                                 Experiment("sd", "SD img2img"), Experiment("dd", "DistDiff")),
                      baseline="sd", replicates=(1, 2, 3), judge=True)
    layout = Layout(bench, tmp_path)
    _write_runs(layout.guide_runs(), [(80, 81), (82, 83), (84, 85)])
    _write_runs(layout.runs(None, augment="autoaugment"), [(81, 81), (83, 83), (85, 85)])
    _write_runs(layout.runs("sd"), [(90, 90), (90, 90), (90, 90)])
    _write_runs(layout.runs("dd"), [(91, 90), (92, 90), (90, 90)])
    layout.results.mkdir(parents=True)
    judge = {"rows": [{"name": "yardstick: real train vs test", "fidelity_judge": 0.98, "copy_to_source": None},
                      {"name": str(layout.expansion("sd", 1)), "fidelity_judge": 0.9, "copy_to_source": 0.25}]}
    (layout.results / "gap_test.json").write_text(json.dumps(judge))
    speed = {"sd": {"median_ratio": 1.0}, "dd": {"median_ratio": 0.614}}
    lines = table(layout, {}, speed=speed).splitlines()
    assert lines[0].endswith("| label fidelity, pool-trained judge (replicate 1) | copy→source distance (replicate 1) "
                             "| images/s × SD img2img (median of rounds) |")
    cells = [line.split(" | ") for line in lines[2:6]]
    assert [c[1] for c in cells] == ["original", "aa", "sd", "dd"]
    # dd vs sd at the best-val epoch: +1, +2, 0 -> +1.00, t(0.975, 2) x 1 / sqrt(3) = 2.48
    assert cells[3][6] == "+1.00 [-1.48, +3.48] (n=3, MDE 3.26)" and cells[3][7].startswith("+0.00 [+0.00, +0.00]")
    assert cells[0][-5:] == ["", "", "0.980", "", "– |"]  # the real train images: the judge's yardstick, no report
    assert cells[1][-5:] == ["–", "–", "–", "–", "– |"]  # an augmentation row has no images to measure
    assert cells[2][-5:] == ["", "", "0.900", "0.250", "1.00 |"]
    assert cells[3][-5:] == ["", "", "", "", "0.61 |"]  # not in gap_test.json: blank, never a made-up value
    with pytest.raises(UserError, match="the speed file has no 'dd'.*benchmarks/variants_speed.py --spec"):
        table(layout, {}, speed={"sd": {"median_ratio": 1.0}})
    assert "images/s" not in table(layout, {})  # no speed file: no cost column


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
    spec = str(REPO / "scripts" / "experiments" / "shift_paper.py")
    with pytest.raises(SystemExit, match=r"^compare.py: error: unknown dataset 'nope'; choose one of"):
        compare.main(compare.parse_args([spec, "--dataset", "nope"]))
    with pytest.raises(SystemExit, match=r"--speed .*none.json not found; make it with `python "
                                         r"benchmarks/variants_speed.py --spec .*shift_paper.py"):
        compare.main(compare.parse_args([spec, "--speed", str(tmp_path / "none.json")]))
