"""scripts/variants_table.py: the val grid and the variants table from what variants_comparison.sh writes."""

import json

import pytest

from distdiff.training.results import write_results
from scripts import variants_table

RUN = "smallcnn_unpretrained_lr0.1"


def _fake(root, dataset):
    chosen = {"identity": "v_identity_r4_i1", "direct": "v_direct_p2", "select": "v_select_energy"}
    out = root / "results" / dataset / "variants"
    (out / "logs").mkdir(parents=True)
    (out / "report").mkdir()
    (out / "chosen.json").write_text(json.dumps(chosen))
    used = ["v_sd", "v_paper", *chosen.values(), "v_select_direct"]
    for i, exp in enumerate(variants_table.GRID):
        for seed in (1, 2, 3) if exp in used else (1,):
            run = root / "checkpoint" / dataset / exp / RUN / f"seed{seed}"
            run.mkdir(parents=True)
            write_results(run / "results.yaml", {"best_accuracy": 90.0 + i, "val_selected_accuracy": 80.0 + i + seed,
                                                 "final_accuracy": 1.0, "val_best_accuracy": 70.0 + i})
    rows = [{"name": f"expanded/{dataset}/{e}", "fid": 0.01, "kid_mean": 2e-3, "kid_std": 1e-4, "fidelity_judge": 0.9,
             "fidelity_guide": 0.8, "copy_to_source": 0.25} for e in used]
    (out / "gap_test.json").write_text(json.dumps({"rows": rows}))
    independent = [{"set": e, "reference": "test", "overall": {"fid": 20.0, "kid_mean": 3e-3, "kid_std": 1e-4}}
                   for e in used]
    (out / "report" / "report.json").write_text(json.dumps(
        {"distribution": {"efficientnet_lite0": {"status": "ok", "rows": independent}}}))
    (out / "logs" / "v_sd.log").write_text("shard 0/1: wrote 500 of 500 images to x in 100.0 s (5.00 images/s)\n"
                                           "shard 0/1: wrote 0 of 500 images to x in 0.1 s (0.00 images/s)\n")
    (out / "logs" / "v_direct_p2.log").write_text("shard 0/1: wrote 500 of 500 images to x in 200.0 s (2.50 images/s)\n")


def test_the_tables_show_the_grid_and_each_variant_at_its_chosen_setting(tmp_path):
    _fake(tmp_path, "digits-shift-blur")
    text = variants_table.tables("digits-shift-blur", tmp_path / "checkpoint", tmp_path / "results")
    lines = text.splitlines()
    assert lines[2] == "| v_sd | 70.00 |" and len([l for l in lines if l.startswith("| v_")]) == len(variants_table.GRID)
    direct = next(l for l in lines if l.startswith("| direct guidance |"))
    assert direct.startswith("| direct guidance | v_direct_p2 | 1,2,3 | 88.00 ± 1.00 | 96.00 ± 0.00 |")
    assert direct.endswith("| 0.0100 / 2.00 | 20.00 / 3.00 ± 0.10 | 0.900 | 0.800 | 0.250 | 2.50 (0.50×) |")


def test_a_missing_input_names_the_command(tmp_path):
    with pytest.raises(Exception, match="chosen.json not found; run `bash scripts/variants_comparison.sh d`"):
        variants_table.tables("d", tmp_path / "checkpoint", tmp_path / "results")
