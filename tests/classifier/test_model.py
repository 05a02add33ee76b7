import pytest
import torch
from safetensors.torch import save_file

from leafgen.classifier.model import build_classifier
from leafgen.errors import LeafgenError


@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "efficientnet_b0"])
def test_architectures_get_a_four_class_head(arch):
    model = build_classifier(arch, "none", num_classes=4).eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 64, 96)).shape == (1, 4)


def test_unknown_arch_is_explained():
    with pytest.raises(
        LeafgenError, match="classifier.arch='resnet7' is not a torchvision classification model"
    ):
        build_classifier("resnet7")


def test_imagenet_offline_without_cache_says_where_to_put_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(LeafgenError) as exc:
        build_classifier("resnet18", "imagenet")
    message = str(exc.value)
    assert str(tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in message
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in message


def test_imagenet_weights_load_from_the_torch_cache(tmp_path, monkeypatch):
    # A file in the cache under the official name is what torchvision would have downloaded.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import torchvision

    reference = torchvision.models.resnet18(weights=None)
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(reference.state_dict(), tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth")
    model = build_classifier("resnet18", "imagenet")
    assert torch.equal(model.conv1.weight, reference.conv1.weight)
    assert model.fc.out_features == 4


@pytest.mark.parametrize("fmt", ["safetensors", "pt", "ddp"])
def test_local_weights_round_trip(tmp_path, fmt):
    source = build_classifier("resnet18", "none")
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    if fmt == "safetensors":
        path = tmp_path / "w.safetensors"
        save_file(state, path)
    else:
        path = tmp_path / "w.pt"
        torch.save({f"module.{k}": v for k, v in state.items()} if fmt == "ddp" else state, path)
    loaded = build_classifier("resnet18", str(path))
    for k, v in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)


def test_backbone_file_with_imagenet_head_keeps_a_fresh_head(tmp_path):
    import torchvision

    backbone = torchvision.models.resnet18(weights=None)  # 1000-class head
    torch.save(backbone.state_dict(), tmp_path / "b.pt")
    model = build_classifier("resnet18", str(tmp_path / "b.pt"))
    assert torch.equal(model.layer1[0].conv1.weight, backbone.layer1[0].conv1.weight)
    assert model.fc.out_features == 4


def test_bad_weight_files_are_explained(tmp_path):
    with pytest.raises(LeafgenError, match="no such file"):
        build_classifier("resnet18", str(tmp_path / "missing.pt"))
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(LeafgenError, match="cannot read weights"):
        build_classifier("resnet18", str(tmp_path / "junk.safetensors"))
    torch.save(build_classifier("resnet50").state_dict(), tmp_path / "r50.pt")
    with pytest.raises(LeafgenError, match="weights do not fit this architecture"):
        build_classifier("resnet18", str(tmp_path / "r50.pt"))


def test_pickled_objects_are_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(LeafgenError, match="cannot read weights"):
        build_classifier("resnet18", str(tmp_path / "evil.pt"))
