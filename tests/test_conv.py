"""Small CNN classifier families (l2o/task_distributions/conv.py)."""

import pytest
import torch
import torch.nn.functional as F

from l2o.task_distributions import Choice, ConvClassifierFamily, data
from l2o.task_distributions.checks import adam_curve, check_family
from l2o.task_distributions.conv import cnn_loss


def _module_reference(params, x, shape, layers):
    """The same network built from torch.nn modules, to check the pure function against."""
    conv = torch.nn.Conv1d if len(shape) == 2 else torch.nn.Conv2d
    h = x.reshape(len(x), *shape)
    for i in range(layers):
        w = params[f"conv{i}"]
        m = conv(w.shape[1], w.shape[0], 3, stride=2, padding=1)
        with torch.no_grad():
            m.weight.copy_(w)
            m.bias.copy_(params[f"conv_b{i}"])
        h = torch.relu(m(h))
    pool = torch.nn.AdaptiveAvgPool1d(1) if len(shape) == 2 else torch.nn.AdaptiveAvgPool2d(1)
    pooled = pool(h).flatten(1)
    return pooled @ params["w"] + params["b"]


@pytest.mark.parametrize("dataset,shape", [("digits", (1, 8, 8)), ("mnist1d", (1, 40))])
def test_cnn_matches_torch_nn_modules_in_2d_and_1d(dataset, shape):
    family = ConvClassifierFamily(dataset=data.mnist1d_data(300) if dataset == "mnist1d" else dataset)
    task = family.sample("train", 0)
    params, batch = task.init_params(), task.batch(0)
    expected = F.cross_entropy(_module_reference(params, batch["x"], shape, 2), batch["label"])
    assert torch.allclose(task.loss(params, batch), expected, atol=1e-5)
    assert params["conv0"].dim() == len(shape) + 1  # conv1d kernels for signals, conv2d for images


def test_cnn_contract_with_sampled_channels():
    family = ConvClassifierFamily(width=Choice(4, 8), depth=Choice(1, 2), batch_size=16)
    check_family(family, tasks=2)
    structures = {family.sample_structure("train", i)[0] for i in range(30)}
    assert structures == {(4,), (8,), (4, 4), (8, 8)}


def test_cnn_heldout_tasks_draw_only_heldout_examples():
    family = ConvClassifierFamily()
    drawn = {s: {i for k in range(4) for i in family.sample(s, k).sampler.indices(range(3)).reshape(-1).tolist()}
             for s in ("train", "heldout")}
    assert drawn["train"] and drawn["heldout"] and not drawn["train"] & drawn["heldout"]


def test_cnn_ood_is_wider_and_deeper():
    task = ConvClassifierFamily(channels=(4, 8)).sample("ood", 0)
    shapes = [task.init_params()[f"conv{i}"].shape[0] for i in range(3)]
    assert shapes == [8, 16, 16]


def test_cnn_rejects_inputs_it_cannot_convolve():
    volume = data.ClassificationData("vol", torch.zeros(4, 8), torch.tensor([0, 1, 0, 1]), (1, 2, 2, 2), 2)
    with pytest.raises(ValueError, match="1-D signals or 2-D images"):
        ConvClassifierFamily(dataset=volume).sample("train", 0)


def test_cnn_loss_decreases_under_adam():
    task = ConvClassifierFamily(eval_examples=256).sample("heldout", 0)
    curve = adam_curve(task, steps=100, lr=0.03)
    assert curve[-1] < 0.3 * curve[0], curve[[0, -1]]
    assert cnn_loss("relu", 2, (1, 8, 8)) is task.loss  # one loss object per structure
