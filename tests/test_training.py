import pytest
import torch

import distdiff.training.loop as training
from distdiff.data.augment import eval_transform, train_transform
from distdiff.models.classifiers import IMAGENET_MEAN, IMAGENET_STD, build_classifier, load_classifier
from distdiff.data.registry import load_dataset
from distdiff.training.loop import TrainConfig, TrainingError, fit, seed_everything, summarize_history


def _digits(test_every=1):
    train = load_dataset("digits", "train", transform=train_transform(32, IMAGENET_MEAN, IMAGENET_STD, flip=False))
    test = load_dataset("digits", "test", transform=eval_transform(32, IMAGENET_MEAN, IMAGENET_STD))
    return train, test.subset(range(0, len(test), test_every))


def _info():
    return {"arch": "smallcnn", "num_classes": 10, "classes": [str(d) for d in range(10)], "image_size": 32,
            "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "dataset": "digits"}


def _model(seed):
    seed_everything(seed)
    return build_classifier("smallcnn", 10)


def test_smallcnn_learns_few_shot_digits(tmp_path):
    train, test = _digits(test_every=3)  # 100 train images (10 per class), 200 test images
    assert len(train) == 100 and len(test) == 200
    config = TrainConfig(epochs=8, batch_size=16, lr=0.05, seed=1, num_workers=0)
    summary = fit(_model(1), train_set=train, test_set=test, val_set=None, config=config,
                  output_dir=tmp_path, info=_info())
    assert summary["best_accuracy"] > 50  # chance is 10%
    assert summary["epochs_done"] == 8 and 1 <= summary["best_epoch"] <= 8
    # no validation set: model_best.pth.tar holds the final epoch's weights, never the best test epoch's
    assert summary["model_best"] == "final_epoch" and summary["model_best_epoch"] == 8
    model, info = load_classifier(tmp_path, "cpu")
    assert 100 * _correct(model, test) / len(test) == pytest.approx(summary["final_accuracy"])
    assert info["classes"] == [str(d) for d in range(10)]


def _correct(model, dataset):
    loader = torch.utils.data.DataLoader(dataset, batch_size=100)
    with torch.no_grad():
        return sum((model(x).argmax(1) == y).sum().item() for x, y in loader)


@pytest.mark.parametrize("on_test", [False, True])
def test_model_best_is_the_best_val_epoch_or_on_request_the_best_test_epoch(tmp_path, on_test):
    train, test = _digits(test_every=6)
    val = test.subset(range(0, 40))  # a val set that differs from test, so the two choices can differ
    config = TrainConfig(epochs=6, batch_size=16, lr=0.05, seed=3, num_workers=0, model_best_on_test=on_test)
    summary = fit(_model(3), train_set=train, test_set=test, val_set=val, config=config,
                  output_dir=tmp_path, info=_info())
    history = torch.load(tmp_path / training.LAST_STATE_NAME, weights_only=True)["history"]
    key = "test_accuracy" if on_test else "val_accuracy"
    scores = [row[key] for row in history]
    epoch = history[scores.index(max(scores))]["epoch"]  # the first epoch reaching the maximum
    assert summary["model_best"] == ("best_test_epoch" if on_test else "best_val_epoch")
    assert summary["model_best_epoch"] == epoch
    model, _ = load_classifier(tmp_path, "cpu")
    assert 100 * _correct(model, test) / len(test) == pytest.approx(history[epoch - 1]["test_accuracy"])


def test_an_interrupted_run_resumes_to_the_same_result(tmp_path, monkeypatch):
    train, test = _digits(test_every=6)
    val = test.subset(range(0, 50))
    config = TrainConfig(epochs=3, batch_size=32, lr=0.05, seed=2, num_workers=0, augment="mixup")
    whole = fit(_model(2), train_set=train, test_set=test, val_set=val, config=config,
                output_dir=tmp_path / "whole", info=_info())

    calls = []
    real_save = training.atomic_torch_save

    def save_then_crash(obj, path):
        real_save(obj, path)
        calls.append(path)
        if len(calls) == 1:
            raise KeyboardInterrupt  # killed right after epoch 1's state was written

    monkeypatch.setattr(training, "atomic_torch_save", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        fit(_model(2), train_set=train, test_set=test, val_set=val, config=config,
            output_dir=tmp_path / "broken", info=_info())
    monkeypatch.setattr(training, "atomic_torch_save", real_save)
    resumed = fit(_model(99), train_set=train, test_set=test, val_set=val, config=config,
                  output_dir=tmp_path / "broken", info=_info())

    a = torch.load(tmp_path / "whole" / training.LAST_STATE_NAME, weights_only=True)
    b = torch.load(tmp_path / "broken" / training.LAST_STATE_NAME, weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert [r["test_accuracy"] for r in a["history"]] == [r["test_accuracy"] for r in b["history"]]
    assert {k: v for k, v in whole.items() if k != "train_time_s"} == \
           {k: v for k, v in resumed.items() if k != "train_time_s"}
    log = (tmp_path / "broken" / training.LOG_NAME).read_text()
    assert "resume after epoch 1" in log and "epoch 3/3" in log

    with pytest.raises(TrainingError, match=r"other settings \{'lr': \(0\.05, 0\.1\)\}.*--overwrite"):
        fit(_model(2), train_set=train, test_set=test, val_set=val, config=TrainConfig(
            epochs=3, batch_size=32, lr=0.1, seed=2, num_workers=0, augment="mixup"),
            output_dir=tmp_path / "broken", info=_info())


def test_summary_reports_best_final_and_validation_selected_accuracy():
    rows = [(1, 30.0, 20.0), (2, 60.0, 55.0), (3, 50.0, 70.0), (4, 60.0, 65.0), (5, 40.0, 66.0)]
    history = [{"epoch": e, "val_accuracy": v, "test_accuracy": t, "time_s": 1.5} for e, v, t in rows]
    summary = summarize_history(history, training.ModelBest.BEST_VAL)
    assert summary["best_accuracy"] == 70.0 and summary["best_epoch"] == 3
    assert summary["final_accuracy"] == 66.0 and summary["epochs_done"] == 5
    # best validation 60.0 first reached at epoch 2 -> the test accuracy of epoch 2
    assert summary["val_selected_accuracy"] == 55.0 and summary["val_selected_epoch"] == 2
    assert summary["model_best"] == "best_val_epoch" and summary["model_best_epoch"] == 2
    assert summary["last10_accuracy"] == pytest.approx((20 + 55 + 70 + 65 + 66) / 5)  # fewer than 10 epochs: all
    assert summary["train_time_s"] == 7.5
    no_val = summarize_history([{**row, "val_accuracy": None} for row in history], training.ModelBest.FINAL)
    assert "val_selected_accuracy" not in no_val
    assert no_val["model_best"] == "final_epoch" and no_val["model_best_epoch"] == 5
    on_test = summarize_history(history, training.ModelBest.BEST_TEST)
    assert on_test["model_best"] == "best_test_epoch" and on_test["model_best_epoch"] == 3


def test_the_last_10_epoch_mean_ignores_earlier_epochs():
    history = [{"epoch": e, "val_accuracy": None, "test_accuracy": 0.0 if e <= 2 else float(e), "time_s": 1.0}
               for e in range(1, 13)]
    assert summarize_history(history, training.ModelBest.FINAL)["last10_accuracy"] == pytest.approx(7.5)


def test_model_best_rule_never_chooses_on_test_unless_asked():
    rule = training.model_best_rule
    assert rule(has_val=True, on_test=False) is training.ModelBest.BEST_VAL
    assert rule(has_val=False, on_test=False) is training.ModelBest.FINAL
    assert rule(has_val=True, on_test=True) is rule(has_val=False, on_test=True) is training.ModelBest.BEST_TEST


def test_a_lone_last_sample_is_dropped_for_batchnorm():
    data = torch.utils.data.TensorDataset(torch.zeros(65, 3), torch.zeros(65))
    assert len(training.make_loader(data, batch_size=64, shuffle=True, num_workers=0)) == 1
    assert len(training.make_loader(data, batch_size=64, shuffle=False, num_workers=0)) == 2


def test_an_evaluation_set_is_transformed_once_into_the_same_tensors():
    _, test = _digits(test_every=10)
    cached = training.cached_eval_set(test)
    assert isinstance(cached, torch.utils.data.TensorDataset) and len(cached) == len(test)
    for i in (0, len(test) // 2, len(test) - 1):
        image, label = test[i]
        assert torch.equal(cached[i][0], image) and cached[i][1].item() == label
    # one byte under the set's size: kept as it is, transformed every epoch
    image_bytes = test[0][0].numel() * test[0][0].element_size()
    assert training.cached_eval_set(test, max_bytes=image_bytes * len(test) - 1) is test
    assert len(training.cached_eval_set(test.subset([]))) == 0
