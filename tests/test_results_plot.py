import math

import pytest
from PIL import Image

import parse_logs
from distdiff.training.results import plot_summaries, summarize_experiment, write_results


@pytest.fixture
def experiments(tmp_path):
    root = tmp_path / "digits"
    for name, values in {"baseline": [(80.0, 79.0), (82.0, 80.0), (84.0, 84.0)],
                         "distdiff_5x/smallcnn": [(90.0, 88.0), (91.0, 90.0)],
                         "one_seed": [(70.0, 69.0)]}.items():
        for seed, (best, last10) in enumerate(values, 1):
            write_results(root / name / f"seed{seed}" / "results.yaml",
                          {"seed": seed, "best_accuracy": best, "last10_accuracy": last10})
    return root


def test_plot_draws_means_with_sample_std_error_bars(experiments, tmp_path):
    summaries = [summarize_experiment(experiments / n) for n in ("baseline", "distdiff_5x/smallcnn", "one_seed")]
    drawn = plot_summaries(summaries, tmp_path / "bars.png", root=experiments)
    by_key = {(name, metric): (height, err) for name, metric, height, err in drawn}
    assert by_key[("baseline", "best_accuracy")] == pytest.approx((82.0, 2.0))  # ddof=1 std of 80, 82, 84
    assert by_key[("baseline", "last10_accuracy")] == pytest.approx((81.0, math.sqrt(7)))
    assert by_key[("distdiff_5x/smallcnn", "best_accuracy")] == pytest.approx((90.5, math.sqrt(0.5)))
    assert by_key[("one_seed", "best_accuracy")] == pytest.approx((70.0, 0.0))  # one seed: no error bar
    with Image.open(tmp_path / "bars.png") as image:
        assert image.format == "PNG" and image.width > 300


def test_parse_logs_plot_flag_writes_the_png(experiments, tmp_path, capsys):
    out = tmp_path / "table.png"
    parse_logs.main(parse_logs.parse_args([str(experiments), "--multi", "--plot", str(out)]))
    assert f"wrote {out}" in capsys.readouterr().out
    with Image.open(out) as image:
        assert image.format == "PNG"
