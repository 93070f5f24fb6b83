"""benchmarks/variants_speed.py: the alternating job order and the ratios to SD img2img."""

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "variants_speed.py"
sys.path.insert(0, str(SCRIPT.parent))  # as when run as a script: it imports pipeline_before_after from beside it
spec = importlib.util.spec_from_file_location("variants_speed", SCRIPT)
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_every_variant_runs_once_per_round_in_an_order_reversed_every_other_round():
    jobs = bench.schedule(["v_sd", "v_paper", "v_direct_p2"], 3)
    assert jobs == [(0, "v_sd"), (0, "v_paper"), (0, "v_direct_p2"),
                    (1, "v_direct_p2"), (1, "v_paper"), (1, "v_sd"),
                    (2, "v_sd"), (2, "v_paper"), (2, "v_direct_p2")]


def test_ratios_are_to_the_baseline_in_the_same_round_and_the_median_is_over_rounds():
    result = bench.ratios_to({"sd": [2.0, 1.0, 4.0], "v_paper": [1.0, 0.9, 2.0]}, "sd")
    assert result["sd"]["median_ratio"] == 1.0
    assert result["v_paper"]["ratios"] == pytest.approx([0.5, 0.9, 0.5])
    assert result["v_paper"]["median_ratio"] == pytest.approx(0.5)
    assert result["v_paper"]["rates"] == [1.0, 0.9, 2.0]


def test_every_expansion_of_the_spec_is_benchmarked_with_its_flags():
    spec = SCRIPT.parents[1] / "scripts" / "experiments" / "variants.py"
    variants, baseline = bench.spec_variants(spec, ["sd", "distdiff"])
    assert baseline == "sd" and variants["sd"] == ["--guidance", "none"] and variants["distdiff"] == []
    # every grid setting, named as compare.py names its folder: 2 rows + 4 + 2 + 2 + 2 settings + 2 energy-log variants
    assert len(variants) == 2 + 4 + 2 + 2 + 2 + 2
    assert variants["direct_p5_linear"] == ["--guidance", "direct", "--guidance_period", "5", "--rho_schedule",
                                            "linear"]
    assert variants["distdiff_no_energy_log"] == ["--no_energy_log"]
    with pytest.raises(SystemExit, match="--no_energy_log_of nope is none of"):
        bench.spec_variants(spec, ["nope"])
