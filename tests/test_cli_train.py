import logging
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import expand
import train_expand
import train_original
from distdiff.jobs import expand_config
from distdiff.models.classifiers import load_classifier
from distdiff.data.datasets import holdout
from distdiff.data.registry import load_dataset

FAST = ["--epochs", "1", "--batch_size", "50", "--num_workers", "0"]
RESULT_KEYS = {"best_accuracy", "final_accuracy", "best_epoch", "seed", "num_train", "num_test", "num_val",
               "num_synthetic", "val_selected_accuracy", "val_best_accuracy", "val_selected_epoch",
               "last10_accuracy", "model_best", "model_best_epoch"}


@pytest.fixture(autouse=True)
def _restore_gpu_env(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)  # main() sets it; monkeypatch restores it


def test_train_original_writes_results_and_skips_a_finished_run(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    argv = ["digits", "smallcnn", "0.1", "False", "0", "--seed", "2", "--output_root", str(tmp_path)] + FAST
    results = train_original.main(train_original.parse_args(argv))
    run = tmp_path / "digits" / "smallcnn_unpretrained_lr0.1" / "seed2"
    saved = yaml.safe_load((run / "results.yaml").read_text())
    assert RESULT_KEYS <= set(saved) and saved == results
    assert (saved["seed"], saved["num_train"], saved["num_val"], saved["num_test"], saved["num_synthetic"]) == \
           (2, 100, 100, 600, 0)  # digits brings its own val split
    # without --validation: a dataset's own val split is always used, and chooses model_best
    assert saved["val_source"] == "val split" and saved["model_best"] == "best_val_epoch"
    assert saved["image_size"] == 32 and saved["flip"] is False
    model, info = load_classifier(run / "model_best.pth.tar")
    assert info["image_size"] == 32 and info["dataset"] == "digits" and info["args"]["seed"] == 2
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)
    assert "epoch 1/1" in (run / "log.txt").read_text()

    before = (run / "results.yaml").stat().st_mtime_ns
    assert train_original.main(train_original.parse_args(argv)) is None
    assert "skipping" in caplog.text and "--overwrite" in caplog.text
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0"
    assert ("GPU 0 ignored: no CUDA device" in caplog.text) != torch.cuda.is_available()
    assert (run / "results.yaml").stat().st_mtime_ns == before


def test_print_checkpoint_names_the_file_training_writes_and_expand_reads(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    guide = ["digits", "smallcnn", "0.1", "False", "0", "--seed", "1"] + FAST
    assert train_original.main(train_original.parse_args(guide + ["--print_checkpoint"])) is None
    printed = capsys.readouterr().out.strip()
    assert not Path(printed).exists()  # printing trains nothing
    train_original.main(train_original.parse_args(guide))
    assert Path(printed).is_file()
    job = expand_config.resolve(expand.parse_config(["-d", "digits", "--model", str(tmp_path)]))
    assert job.guide_checkpoint == printed  # expand.py's default guide is that very file


def test_bad_positional_arguments_give_clear_errors(capsys):
    with pytest.raises(SystemExit):
        train_original.parse_args(["digits", "smallcnn", "0.1", "false", "0"])
    assert "PRETRAINED must be True or False" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train_original.parse_args(["digits", "smallcnn", "-1", "False", "0"])
    assert "LR must be a positive number" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train_expand.parse_args(["digits", "smallcnn", "0.1", "a/b", "False", "0"])
    assert "EXP names a folder" in capsys.readouterr().err


def _imagefolder(root, per_class=4):
    """PATH/{train,test}/<class>/*.png with no val/ (as most of the paper's datasets: no val split)."""
    for split in ("train", "test"):
        for label, value in (("dark", 40), ("light", 220)):
            for i in range(per_class):
                path = root / split / label / f"{label}_{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.full((16, 16, 3), value + i, dtype=np.uint8)).save(path)
    return f"imagefolder:{root}"


@pytest.mark.parametrize("flags, source, num_val, rule", [
    ([], None, 0, "final_epoch"),  # no val split: the paper's train split whole, model_best the final epoch
    (["--validation"], "0.1 of train", 2, "best_val_epoch"),  # at least one image per class held out
    (["--val_fraction", "0.5"], "0.5 of train", 4, "best_val_epoch"),
    (["--model_best_on_test"], None, 0, "best_test_epoch")])  # the authors' train.py, by name only
def test_without_a_val_split_model_best_is_the_final_epoch_unless_asked(tmp_path, flags, source, num_val, rule):
    dataset = _imagefolder(tmp_path / "photos")
    argv = [dataset, "smallcnn", "0.1", "False", "0", "--image_size", "16", "--output_root", str(tmp_path / "ck"),
            "--epochs", "3", "--batch_size", "4", "--num_workers", "0", *flags]
    results = train_original.main(train_original.parse_args(argv))
    assert (results["val_source"], results["num_val"], results["model_best"]) == (source, num_val, rule)
    assert results["num_train"] == 8 - num_val
    if rule == "final_epoch":
        assert results["model_best_epoch"] == 3 and "val_selected_accuracy" not in results


def _png(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((48, 48, 3), 200, dtype=np.uint8)).save(path)


def test_train_expand_adds_synthetic_images_but_not_those_of_held_out_images(tmp_path):
    train = load_dataset("digits", "train")
    _, val = holdout(train, 0.2, seed=0)
    kept_stem = next(s.stem for s in train.samples if s.label == 1 and s.stem not in {v.stem for v in val.samples})
    held_stem = next(s.stem for s in val.samples if s.label == 1)
    expanded = tmp_path / "synthetic"
    for i in range(3):
        _png(expanded / "1" / f"{kept_stem}_expand_{i}.png")
        _png(expanded / "1" / f"{held_stem}_expand_{i}.png")
    _png(expanded / "7" / "digit_9999_expand_0.png")
    argv = ["digits", "smallcnn", "0.1", "x5", "False", "0", "--expanded_dir", str(expanded), "--validation",
            "--val_fraction", "0.2", "--augment", "cutmix", "--output_root", str(tmp_path / "ckpt")] + FAST
    results = train_expand.main(train_expand.parse_args(argv))
    assert (results["num_train"], results["num_val"]) == (80, 20)
    assert results["num_synthetic"] == 4 and results["num_synthetic_dropped"] == 3
    run = tmp_path / "ckpt" / "digits" / "x5" / "smallcnn_unpretrained_lr0.1_cutmix" / "seed1"
    assert (run / "results.yaml").is_file()
    assert "train 84 val 20 test 600" in (run / "log.txt").read_text()  # original + synthetic are trained on

    _png(expanded / "cat" / "digit_0001_expand_0.png")
    with pytest.raises(SystemExit, match=r"class folders \['cat'\] that the dataset does not have"):
        train_expand.main(train_expand.parse_args(argv + ["--overwrite"]))


def test_each_replicate_trains_on_its_own_expansion(tmp_path):
    # --expanded_dir with {seed}: seed N reads expansion N (2 and 3 images here), never another seed's
    train = load_dataset("digits", "train")
    stem = next(s.stem for s in train.samples if s.label == 4)
    for seed, copies in ((1, 2), (2, 3)):
        for i in range(copies):
            _png(tmp_path / "x5" / f"seed{seed}" / "4" / f"{stem}_expand_{i}.png")
    for seed, copies in ((1, 2), (2, 3)):
        argv = ["digits", "smallcnn", "0.1", "x5", "False", "0", "--expanded_dir", str(tmp_path / "x5" / "seed{seed}"),
                "--seed", str(seed), "--output_root", str(tmp_path / "ckpt")] + FAST
        results = train_expand.main(train_expand.parse_args(argv))
        assert results["num_synthetic"] == copies and results["expanded_dir"] == str(tmp_path / "x5" / f"seed{seed}")


def test_synthetic_probability_trains_on_real_images_or_their_copies_and_is_recorded(tmp_path):
    train = load_dataset("digits", "train")
    expanded = tmp_path / "dafusion"
    for sample in train.samples[:30]:
        for i in range(2):
            _png(expanded / train.classes[sample.label] / f"{sample.stem}_expand_{i}.png")
    argv = ["digits", "smallcnn", "0.1", "dafusion", "False", "0", "--expanded_dir", str(expanded),
            "--output_root", str(tmp_path / "ckpt"), "--synthetic_probability", "0.5"] + FAST
    results = train_expand.main(train_expand.parse_args(argv))
    assert results["synthetic_probability"] == 0.5 and results["expanded_dir"] == str(expanded)
    assert (results["num_train"], results["num_synthetic"]) == (100, 60)
    run = tmp_path / "ckpt" / "digits" / "dafusion" / "smallcnn_unpretrained_lr0.1" / "seed1"
    log = (run / "log.txt").read_text()
    assert "train 100 val 100 test 600" in log and "'synthetic_probability': 0.5" in log  # an epoch: the real images
    assert load_classifier(run / "model_best.pth.tar")[1]["args"]["synthetic_probability"] == 0.5

    # An unfinished run resumes only with the sampling it started with.
    (run / "results.yaml").unlink()
    with pytest.raises(SystemExit, match=r"other settings \{'synthetic_probability': \(0.5, None\)\}"):
        train_expand.main(train_expand.parse_args(argv[:-len(FAST) - 2] + FAST))
    with pytest.raises(SystemExit, match=r"--synthetic_probability must be in \[0, 1\], got 1.5"):
        train_expand.main(train_expand.parse_args(argv + ["--synthetic_probability", "1.5"]))


def test_train_expand_default_folder_is_named_after_the_experiment(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match=r"expanded/digits/nope does not exist"):
        train_expand.main(train_expand.parse_args(["digits", "smallcnn", "0.1", "nope", "False", "0"]))


@pytest.mark.parametrize("script, positional", [
    ("train_original.sh", ["digits", "smallcnn", "0.1", "False", "0"]),
    ("train_expand.sh", ["digits", "smallcnn", "0.1", "x5", "False", "0"])])
def test_seed_scripts_run_seeds_1_2_3_with_the_arguments_passed_on(tmp_path, script, positional):
    # A stand-in `python` records each call; skipping finished seeds is train_*.py's job (tested above).
    (tmp_path / "python").write_text('#!/usr/bin/env bash\necho "$@" >> "$CALLS"\n')
    (tmp_path / "python").chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}", "CALLS": str(tmp_path / "calls.txt")}
    path = Path(__file__).resolve().parents[1] / "scripts" / "exps" / script
    usage = subprocess.run(["bash", str(path), "digits"], capture_output=True, text=True, env=env)
    assert usage.returncode == 2 and "usage:" in usage.stderr
    done = subprocess.run(["bash", str(path), *positional, "--epochs", "3"], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    calls = (tmp_path / "calls.txt").read_text().splitlines()
    target = str(path.parents[2] / script.replace(".sh", ".py"))
    assert calls == [" ".join([target, *positional, "--seed", str(seed), "--epochs", "3"]) for seed in (1, 2, 3)]


def test_pretrained_efficientnet_lite0_trains_from_the_packaged_imagenet_weights_offline(tmp_path, no_network):
    from distdiff import cli
    from distdiff.training.experiment import RunConfig, image_settings
    from distdiff.models.packaged_weights import efficientnet_lite0_state_dict

    argv = ["digits", "efficientnet_lite0", "1e-9", "True", "0", "--output_root", str(tmp_path)] + FAST
    assert image_settings(cli.config_from_flags(RunConfig, vars(train_original.parse_args(argv))))[0] == 224  # the weights' resolution, not digits' 32
    train_original.main(train_original.parse_args(argv + ["--image_size", "32"]))  # 32 px keeps the test fast
    model, info = load_classifier(tmp_path / "digits" / "efficientnet_lite0_pretrained_lr1e-09" / "seed1")
    assert info["mean"] == [0.5] * 3 and info["std"] == [0.5] * 3 and info["image_size"] == 32
    imagenet = efficientnet_lite0_state_dict()
    # At lr 1e-9 one epoch leaves the ImageNet backbone as loaded: random weights would differ everywhere.
    torch.testing.assert_close(model.model.conv_stem.weight, imagenet["conv_stem.weight"], atol=1e-6, rtol=0)
    torch.testing.assert_close(model.model.blocks[6][0].conv_pwl.weight, imagenet["blocks.6.0.conv_pwl.weight"],
                               atol=1e-6, rtol=0)


def test_single_exp_runs_whole_pipeline_replicates(tmp_path):
    # A stand-in `python` records each call: replicate r trains guide r, expands with guide r and seed r into its
    # own folder, and trains the classifier r on that folder; the table pairs by replicate against the original.
    (tmp_path / "python").write_text('#!/usr/bin/env bash\necho "$@" >> "$CALLS"\n'
                                     'case "$*" in *--print_checkpoint*) echo "guide-seed${@: -2:1}";; '
                                     '-c*dataset_slug*) echo digits;; -c*run_name*) echo base_run;; esac\n')
    (tmp_path / "python").chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}", "CALLS": str(tmp_path / "calls.txt"),
           "REPLICATES": "1 2"}
    script = Path(__file__).resolve().parents[1] / "single_exp.sh"
    done = subprocess.run(["sh", str(script)], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    calls = [c for c in (tmp_path / "calls.txt").read_text().splitlines() if not c.startswith("-c")]
    head = "digits smallcnn 0.1 False 0 --seed"
    expand_args = "-d digits -a smallcnn --guide_checkpoint guide-seed{r} --seed {r} --num_images_per_prompt 5 " \
                  "--output_dir expanded/digits/distdiff_5x/seed{r} --split 0 --total_split 1 --batch_size 20"
    assert calls == [f"train_original.py {head} 1", f"train_original.py {head} 2",
                     f"train_original.py {head} 1 --print_checkpoint", "expand.py " + expand_args.format(r=1),
                     f"train_original.py {head} 2 --print_checkpoint", "expand.py " + expand_args.format(r=2),
                     "train_expand.py digits smallcnn 0.1 distdiff_5x False 0 --seed 1 "
                     "--expanded_dir expanded/digits/distdiff_5x/seed{seed}",
                     "train_expand.py digits smallcnn 0.1 distdiff_5x False 0 --seed 2 "
                     "--expanded_dir expanded/digits/distdiff_5x/seed{seed}",
                     "parse_logs.py checkpoint/digits --multi --baseline base_run"]
    bad = subprocess.run(["sh", str(script)], capture_output=True, text=True, env={**env, "REPLICATES": "1 x"})
    assert bad.returncode == 2 and "REPLICATES must be seed numbers" in bad.stderr
    # a rival in the same harness: its own folder, its expand.py flags and (DA-Fusion) its train_expand.py flag
    (tmp_path / "calls.txt").unlink()
    done = subprocess.run(["sh", str(script)], capture_output=True, text=True, env={**env, "METHOD": "dafusion"})
    assert done.returncode == 0, done.stderr
    calls = (tmp_path / "calls.txt").read_text().splitlines()
    assert ("expand.py " + expand_args.format(r=1).replace("distdiff_5x", "dafusion_5x") + " --guidance none "
            "--class_tokens learned --strength_choices 1.0 0.75 0.5 0.25") in calls
    assert ("train_expand.py digits smallcnn 0.1 dafusion_5x False 0 --seed 2 --expanded_dir "
            "expanded/digits/dafusion_5x/seed{seed} --synthetic_probability 0.5") in calls
    bad = subprocess.run(["sh", str(script)], capture_output=True, text=True, env={**env, "METHOD": "nope"})
    assert bad.returncode == 2 and "METHOD must be distdiff, sd, gif_sd or dafusion" in bad.stderr
