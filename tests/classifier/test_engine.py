import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from leafgen.classifier.engine import (
    ArrayDataset,
    WeightedCrossEntropy,
    build_loss,
    build_optimizer,
    build_scheduler,
    class_weights,
    eval_transform,
    predict_probs,
    train_epoch,
    train_transform,
)
from leafgen.classifier.model import build_classifier
from leafgen.config import ClassifierConfig, load_config


def test_a_few_steps_lower_the_loss(tiny_arrays):
    torch.manual_seed(0)
    images, labels = tiny_arrays
    cfg = load_config(None, ["classifier.learning_rate=0.003", "classifier.epochs=15"]).classifier
    model = build_classifier("resnet18", "none")
    # 16 fixed images without augmentation: a network that trains at all memorises them.
    loader = DataLoader(ArrayDataset(images[:16], labels[:16], eval_transform()), batch_size=8, shuffle=True)
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, cfg, len(loader))
    loss_fn = build_loss(cfg, labels)
    losses = [
        train_epoch(model, loader, loss_fn, opt, sched, torch.device("cpu"))[0] for _ in range(cfg.epochs)
    ]
    assert losses[-1] < 0.5 * losses[0], losses


def test_augmentation_keeps_shape_and_normalises(tiny_arrays):
    images, labels = tiny_arrays
    x, y = ArrayDataset(images, labels, train_transform((32, 48)))[0]
    assert x.shape == (3, 32, 48) and x.dtype == torch.float32 and y == labels[0]
    assert -3 < float(x.mean()) < 3


def test_class_weights_are_inverse_frequency():
    w = class_weights([0, 0, 0, 1, 2, 2, 3, 3, 3, 3])
    assert torch.allclose(w, torch.tensor([10 / 12, 10 / 4, 10 / 8, 10 / 16]))
    assert build_loss(ClassifierConfig(class_weighted_loss=True), [0, 1, 2, 3]).weight is not None
    assert build_loss(ClassifierConfig(), [0, 1, 2, 3]).weight is None


def test_weighted_loss_is_torch_mean_and_a_sample_weight_scales_only_that_samples_gradient():
    torch.manual_seed(0)
    logits = torch.randn(6, 4, requires_grad=True)
    y = torch.tensor([0, 1, 1, 2, 3, 1])
    weight = class_weights(y.tolist())
    for cw, smoothing in ((None, 0.0), (weight, 0.0), (weight, 0.1)):
        loss = WeightedCrossEntropy(cw, smoothing)
        reference = torch.nn.CrossEntropyLoss(weight=cw, label_smoothing=smoothing)(logits, y)
        assert torch.allclose(loss(logits, y), reference)
        assert torch.allclose(loss(logits, y, torch.ones(6)), reference)
        plain = torch.autograd.grad(loss(logits, y), logits)[0]
        synthetic = torch.tensor([False, True, False, False, False, True])
        weighted = torch.autograd.grad(loss(logits, y, torch.where(synthetic, 0.5, 1.0)), logits)[0]
        assert torch.allclose(weighted[~synthetic], plain[~synthetic])  # real samples: untouched
        assert torch.allclose(weighted[synthetic], 0.5 * plain[synthetic])  # synthetic: scaled by w


def test_schedule_warms_up_then_decays():
    model = torch.nn.Linear(2, 2)
    cfg = ClassifierConfig(learning_rate=1.0, epochs=4)
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, cfg, steps_per_epoch=10)
    lrs = []
    for _ in range(40):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[39] < 0.01 and all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    flat_cfg = ClassifierConfig(learning_rate=1.0, epochs=4, schedule="constant")
    flat_opt = build_optimizer(model, flat_cfg)
    flat = build_scheduler(flat_opt, flat_cfg, steps_per_epoch=10)
    for _ in range(30):
        flat_opt.step()
        flat.step()
    assert flat_opt.param_groups[0]["lr"] == pytest.approx(1.0)


def test_predict_probs_and_flip_tta(tiny_arrays):
    images, labels = tiny_arrays
    model = build_classifier("resnet18", "none")
    loader = DataLoader(ArrayDataset(images[:10], labels[:10], eval_transform()), batch_size=4)
    probs = predict_probs(model, loader, torch.device("cpu"))
    tta = predict_probs(model, loader, torch.device("cpu"), flip_tta=True)
    assert probs.shape == tta.shape == (10, 4)
    assert np.allclose(probs.sum(1), 1, atol=1e-5) and not np.allclose(probs, tta)
