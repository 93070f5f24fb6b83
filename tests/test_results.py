import csv

import pytest

import parse_logs
from distdiff.training.results import (find_experiments, higher_strength_on_validation, mean_std, paired_against,
                                       per_replicate, read_results, summarize_experiment, write_results)


def _write(folder, seed, best, last10, val=None):
    results = {"seed": seed, "best_accuracy": best, "last10_accuracy": last10}
    if val is not None:
        results["val_selected_accuracy"] = val
    write_results(folder / f"seed{seed}" / "results.yaml", results)


@pytest.fixture
def runs(tmp_path):
    a = tmp_path / "digits" / "smallcnn_unpretrained_lr0.1"
    for seed, best, last10 in [(1, 80.0, 79.0), (2, 82.0, 80.0), (3, 84.0, 84.0)]:
        _write(a, seed, best, last10)
    b = tmp_path / "digits" / "distdiff" / "resnet18_unpretrained_lr0.1"
    _write(b, 1, 90.0, 88.0, val=89.0)
    _write(b, 2, 91.0, 90.0, val=87.0)
    (a / "seed4").mkdir()
    (a / "seed4" / "log.txt").write_text("epoch 1/100 ...\n")  # an unfinished run
    return tmp_path, a, b


def test_mean_and_sample_std_over_seeds(runs):
    _, a, _ = runs
    summary = summarize_experiment(a)
    assert summary["seeds"] == [1, 2, 3] and summary["unfinished"] == [4]
    assert summary["per_seed"]["best_accuracy"] == [80.0, 82.0, 84.0]
    assert summary["mean"]["best_accuracy"] == pytest.approx(82.0)
    assert summary["std"]["best_accuracy"] == pytest.approx(2.0)  # ddof=1; the population std would be 1.633
    assert summary["mean"]["last10_accuracy"] == pytest.approx(81.0)
    assert summary["std"]["last10_accuracy"] == pytest.approx(2.6457513)
    assert "val_selected_accuracy" not in summary["mean"]
    assert mean_std([70.0]) == (70.0, None)


def test_parse_logs_prints_one_experiment(runs, capsys):
    _, a, _ = runs
    parse_logs.main(parse_logs.parse_args([str(a)]))
    out = capsys.readouterr().out
    assert "best test (paper's metric, chosen on test): 82.00 ± 2.00  (seed1 80.00, seed2 82.00, seed3 84.00)" in out
    assert "unfinished seeds (no results.yaml yet): [4]" in out and "ddof=1" in out


def test_parse_logs_multi_writes_a_table_and_csv(runs, capsys):
    root, a, b = runs
    assert find_experiments(root) == sorted([a, b])
    parse_logs.main(parse_logs.parse_args([str(root), "--multi", "--csv", str(root / "summary.csv")]))
    lines = capsys.readouterr().out.splitlines()
    # the selection-free columns first, the paper's best-test metric beside them, labelled as chosen on test
    assert lines[0] == ("| experiment | seeds | test @ best-val epoch | test, mean of last 10 epochs | "
                        "best test (paper's metric, chosen on test) |")
    assert "| digits/distdiff/resnet18_unpretrained_lr0.1 | 1,2 | 88.00 ± 1.41 | 89.00 ± 1.41 | 90.50 ± 0.71 |" in lines
    assert "| digits/smallcnn_unpretrained_lr0.1 | 1,2,3 (unfinished: 4) |  | 81.00 ± 2.65 | 82.00 ± 2.00 |" in lines
    with open(root / "summary.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["experiment"] for r in rows] == ["digits/distdiff/resnet18_unpretrained_lr0.1",
                                               "digits/smallcnn_unpretrained_lr0.1"]
    assert float(rows[1]["best_accuracy_mean"]) == pytest.approx(82.0)
    assert float(rows[1]["best_accuracy_std"]) == pytest.approx(2.0)
    assert rows[1]["best_accuracy_per_seed"] == "80 82 84" and rows[1]["unfinished"] == "4"
    assert rows[1]["val_selected_accuracy_mean"] == ""


def test_parse_logs_errors_are_clear(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match=r"has no seed<N>/ folders.*--multi"):
        parse_logs.main(parse_logs.parse_args([str(tmp_path / "empty")]))
    with pytest.raises(SystemExit, match="no experiment folders"):
        parse_logs.main(parse_logs.parse_args([str(tmp_path / "empty"), "--multi"]))
    (tmp_path / "bad.yaml").write_text("just: text\n")
    with pytest.raises(ValueError, match="not a results.yaml"):
        read_results(tmp_path / "bad.yaml")


def test_best_on_validation_chooses_by_val_never_by_test(tmp_path):
    from distdiff.training.results import best_on_validation

    runs = {"lr0.1": {"best_accuracy": 90.8, "val_best_accuracy": 86.0},
            "lr0.01": {"best_accuracy": 81.8, "val_best_accuracy": 89.0},
            "lr0.001": {"best_accuracy": 70.0, "val_best_accuracy": 89.0}}  # a tie: the first given wins
    for name, results in runs.items():
        (tmp_path / name).mkdir()
        write_results(tmp_path / name / "results.yaml", results)
    assert best_on_validation([tmp_path / n for n in runs]) == tmp_path / "lr0.01"
    write_results(tmp_path / "lr0.1" / "results.yaml", {"best_accuracy": 99.0})
    with pytest.raises(ValueError, match="trained without --validation"):
        best_on_validation([tmp_path / "lr0.1"])
    with pytest.raises(ValueError, match="results.yaml not found; finish that run first"):
        best_on_validation([tmp_path / "missing"])


def test_the_higher_strength_is_the_lowest_with_a_clear_fidelity_drop_else_the_strongest():
    rule = {"base": 0.5, "candidates": (0.9, 0.7), "min_drop": 0.05}
    assert higher_strength_on_validation({0.5: 0.95, 0.7: 0.90, 0.9: 0.80}, **rule)[0] == 0.7  # 0.05 drop counts
    assert higher_strength_on_validation({0.5: 0.95, 0.7: 0.91, 0.9: 0.80}, **rule)[0] == 0.9
    strength, reason = higher_strength_on_validation({0.5: 0.97, 0.7: 0.99, 0.9: 0.96}, **rule)
    assert strength == 0.9 and "no candidate's fidelity" in reason and "0.7: 0.990" in reason
    with pytest.raises(ValueError, match=r"missing \[0.9\]"):
        higher_strength_on_validation({0.5: 0.9, 0.7: 0.8}, **rule)


def test_parse_logs_baseline_adds_the_paired_difference_by_seed(runs, capsys):
    root, a, b = runs
    parse_logs.main(parse_logs.parse_args([str(root), "--multi", "--baseline", "digits/smallcnn_unpretrained_lr0.1"]))
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("| Δ vs digits/smallcnn_unpretrained_lr0.1, test, mean of last 10 epochs [95% CI] "
                             "(n, MDE) | verdict |")
    # seeds 1 and 2 in common: differences 88 - 79 = 9 and 90 - 80 = 10, mean 9.5, sd 0.7071; t(0.975, 1) = 12.706
    # gives 9.5 ± 6.35, and the MDE is 11.5499 (statsmodels' standardized effect at n 2) x 0.7071 = 8.17
    assert lines[2].endswith("| +9.50 [+3.15, +15.85] (n=2, MDE 8.17) | better |")
    assert lines[3].endswith("| baseline |  |")
    with pytest.raises(SystemExit, match=r"--baseline nope is not an experiment folder"):
        parse_logs.main(parse_logs.parse_args([str(root), "--multi", "--baseline", "nope"]))
    with pytest.raises(SystemExit, match=r"--baseline compares experiments: add --multi"):
        parse_logs.main(parse_logs.parse_args([str(a), "--baseline", "x"]))


def test_pairs_are_made_by_seed_and_need_two_in_common(runs):
    _, a, b = runs
    first, second = summarize_experiment(a), summarize_experiment(b)
    assert per_replicate(first, "last10_accuracy") == {1: 79.0, 2: 80.0, 3: 84.0}
    assert per_replicate(first, "val_selected_accuracy") == {}
    assert paired_against(second, first, "last10_accuracy").replicates == (1, 2)
    assert paired_against(second, first, "val_selected_accuracy") is None
