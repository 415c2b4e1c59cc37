"""CNN lessons 5 and 7 (dlbook/models/cnn.py): cost formulas against torch and torchinfo, the
architectures' building blocks, and the training recipe's hand formulas, with planted bugs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchinfo
from torch import nn

from dlbook.data.augment import RandomCropFlip
from dlbook.gradients import compare
from dlbook.models import (
    AlexNetSmall,
    BasicBlock,
    InceptionModule,
    LeNet5,
    SmallInception,
    SmallResNet,
    SmallVGG,
    check_residual_jacobian,
    vgg_block,
)
from dlbook.perf import conv2d_macs, conv2d_params, count_macs, layer_macs, linear_params
from dlbook.scratch.conv import conv_output_size, receptive_field
from dlbook.scratch.init import kaiming_init


def torchinfo_macs(model: nn.Module, input_size: tuple[int, ...]) -> dict[str, int]:
    """torchinfo's mult-adds of every Conv2d/Linear layer, keyed by the layer's module name."""
    names = {id(m): name for name, m in model.named_modules()}
    stats = torchinfo.summary(model, input_size=input_size, verbose=0)
    return {names[id(layer.module)]: layer.macs for layer in stats.summary_list
            if isinstance(layer.module, (nn.Conv2d, nn.Linear))}


# --- parameters and MACs -------------------------------------------------------------------------

CONVS = [  # c_in, c_out, k, stride, padding, groups, bias, input size
    (1, 6, 5, 1, 2, 1, True, 28),
    (16, 32, 3, 2, 1, 1, False, 15),
    (8, 8, 3, 1, 1, 8, True, 9),  # depthwise
    (12, 6, (3, 5), 1, (1, 2), 3, True, 11),  # rectangular kernel, grouped
    (64, 128, 1, 2, 0, 1, False, 16),  # a projection shortcut
]


@pytest.mark.parametrize("c_in,c_out,k,stride,padding,groups,bias,size", CONVS)
def test_conv_params_and_macs_match_torch_and_torchinfo(c_in, c_out, k, stride, padding, groups, bias, size):
    conv = nn.Conv2d(c_in, c_out, k, stride=stride, padding=padding, groups=groups, bias=bias)
    assert conv2d_params(c_in, c_out, k, groups, bias) == sum(p.numel() for p in conv.parameters())
    kh, kw = (k, k) if isinstance(k, int) else k
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    h_out, w_out = conv_output_size(size, kh, ph, stride), conv_output_size(size, kw, pw, stride)
    assert conv(torch.zeros(2, c_in, size, size)).shape == (2, c_out, h_out, w_out)
    # torchinfo counts the bias add of every output as one more mult-add, for the whole batch.
    assert 2 * conv2d_macs(c_in, c_out, k, h_out, w_out, groups, bias=bias) == torchinfo_macs(conv, (2, c_in, size, size))[""]


def test_planted_bug_forgetting_groups_is_caught():
    conv = nn.Conv2d(8, 8, 3, padding=1, groups=8)
    wrong = 8 * 8 * 3 * 3 + 8  # c_out * c_in * k * k + bias: the dense formula
    assert wrong != sum(p.numel() for p in conv.parameters())
    assert conv2d_params(8, 8, 3, groups=8) == sum(p.numel() for p in conv.parameters())
    with pytest.raises(ValueError, match="groups"):
        conv2d_params(6, 8, 3, groups=4)


def test_lenet5_counts_by_hand():
    model = LeNet5()
    by_hand_params = (conv2d_params(1, 6, 5) + conv2d_params(6, 16, 5) + conv2d_params(16, 120, 5)
                      + linear_params(120, 84) + linear_params(84, 10))
    assert by_hand_params == sum(p.numel() for p in model.parameters()) == 61_706
    by_hand_macs = (conv2d_macs(1, 6, 5, 28, 28) + conv2d_macs(6, 16, 5, 10, 10) + conv2d_macs(16, 120, 5, 1, 1)
                    + 120 * 84 + 84 * 10)
    assert count_macs(model, (1, 1, 28, 28)) == by_hand_macs == 416_520


MODELS = {
    "LeNet5": (lambda: LeNet5(), (1, 28)),
    "LeNet5-tanh-avg-32": (lambda: LeNet5(activation="tanh", pool="avg", padding=0), (1, 32)),
    "AlexNetSmall": (lambda: AlexNetSmall(), (1, 28)),
    "AlexNetSmall-rgb": (lambda: AlexNetSmall(in_channels=3), (3, 32)),
    "SmallVGG": (lambda: SmallVGG(), (1, 28)),
    "SmallVGG-rgb": (lambda: SmallVGG(in_channels=3, batch_norm=False), (3, 32)),
    "SmallInception": (lambda: SmallInception(), (1, 28)),
    "SmallInception-rgb": (lambda: SmallInception(in_channels=3), (3, 32)),
    "SmallResNet-mnist": (lambda: SmallResNet(in_channels=1, widths=(8, 16, 32), blocks_per_stage=1), (1, 28)),
    "ResNet-20": (lambda: SmallResNet(), (3, 32)),
}


@pytest.mark.parametrize("name", MODELS)
def test_forward_and_count_macs_match_torchinfo(name):
    factory, (channels, size) = MODELS[name]
    torch.manual_seed(0)
    model = factory()
    out = model.train()(torch.randn(4, channels, size, size))
    assert out.shape == (4, 10) and torch.isfinite(out).all()
    ours = layer_macs(model, (2, channels, size, size), bias=True)
    assert ours == torchinfo_macs(model, (2, channels, size, size)), f"{name}: per-layer MACs differ from torchinfo"
    stats = torchinfo.summary(model, input_size=(1, channels, size, size), verbose=0)
    assert stats.total_params == sum(p.numel() for p in model.parameters())
    # Without bias adds the count is the pure eq-arch-macs sum, a little smaller.
    assert count_macs(model, (1, channels, size, size)) < count_macs(model, (1, channels, size, size), bias=True)


def test_count_macs_runs_on_the_meta_device_and_restores_train_mode():
    with torch.device("meta"):
        model = SmallResNet()
    model.train()
    assert count_macs(model, (1, 3, 32, 32)) == 40_813_184  # ResNet-20: 41 M MACs, as usually quoted
    assert model.training


# --- VGG, Inception, ResNet building blocks ------------------------------------------------------


def test_two_3x3_see_5x5_with_fewer_weights():
    assert receptive_field([(3, 1), (3, 1)]) == receptive_field([(5, 1)]) == 5  # lesson 1's eq-conv-receptive-field
    c = 64
    two_3x3 = sum(p.numel() for p in vgg_block(c, c, 2).parameters() if p.dim() == 4)
    assert two_3x3 == 18 * c * c < conv2d_params(c, c, 5, bias=False) == 25 * c * c


def test_vgg_block_layout():
    block = vgg_block(3, 16, 3)
    assert sum(isinstance(m, nn.Conv2d) for m in block) == 3 and isinstance(block[-1], nn.MaxPool2d)
    assert block(torch.zeros(1, 3, 8, 8)).shape == (1, 16, 4, 4)
    with pytest.raises(ValueError):
        vgg_block(3, 16, 0)


def test_inception_module_channels_and_params():
    module = InceptionModule(192, 64, 96, 128, 16, 32, 32)  # GoogLeNet's inception (3a)
    assert module.out_channels == 256
    assert module(torch.zeros(1, 192, 28, 28)).shape == (1, 256, 28, 28)
    by_hand = (conv2d_params(192, 64, 1) + conv2d_params(192, 96, 1) + conv2d_params(96, 128, 3)
               + conv2d_params(192, 16, 1) + conv2d_params(16, 32, 5) + conv2d_params(192, 32, 1))
    assert by_hand == sum(p.numel() for p in module.parameters())
    # The 1x1 bottleneck: the 5x5 branch costs ~10x fewer MACs than a direct 5x5 from 192 channels.
    direct = conv2d_macs(192, 32, 5, 28, 28)
    bottleneck = conv2d_macs(192, 16, 1, 28, 28) + conv2d_macs(16, 32, 5, 28, 28)
    assert 9 < direct / bottleneck < 10


def test_basic_block_identity_shortcut_when_shape_is_kept():
    block = BasicBlock(16, 16, stride=1)
    assert isinstance(block.shortcut, nn.Identity)
    assert sum(p.numel() for p in block.shortcut.parameters()) == 0
    assert block(torch.randn(2, 16, 8, 8)).shape == (2, 16, 8, 8)


@pytest.mark.parametrize("in_ch,out_ch,stride", [(16, 32, 2), (16, 32, 1), (16, 16, 2)])
def test_basic_block_builds_its_projection_when_shape_changes(in_ch, out_ch, stride):
    block = BasicBlock(in_ch, out_ch, stride=stride)
    conv, bn = block.shortcut
    assert isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1) and conv.stride == (stride, stride)
    assert isinstance(bn, nn.BatchNorm2d) and bn.num_features == out_ch
    x = torch.randn(2, in_ch, 8, 8)
    assert block(x).shape == (2, out_ch, 8 // stride, 8 // stride)
    assert block.shortcut(x).shape == block.residual(x).shape


class SeedResidualBlock(nn.Module):
    """The source article's block as printed: ``downsample`` defaults to None and is never built."""

    def __init__(self, in_channels, out_channels, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample = downsample

    def forward(self, x):
        identity = x
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return F.relu(out)


def test_seed_block_without_projection_fails_where_ours_works():
    x = torch.randn(2, 16, 8, 8)
    with pytest.raises(RuntimeError, match="size of tensor"):
        SeedResidualBlock(16, 32, stride=2)(x)
    assert BasicBlock(16, 32, stride=2)(x).shape == (2, 32, 4, 4)


def test_shortcut_really_is_the_identity():
    torch.manual_seed(0)
    block = BasicBlock(8, 8, zero_init_residual=True)  # residual branch outputs exactly 0 at init
    x = torch.randn(3, 8, 6, 6, dtype=torch.float64, requires_grad=True)
    block = block.double()
    assert torch.equal(block.residual(x), torch.zeros_like(x))
    y = block(x)
    assert torch.equal(y, F.relu(x)), "with F = 0 the block must be relu(x): the shortcut adds x unchanged"
    g = torch.randn_like(y)
    (y * g).sum().backward()
    assert torch.equal(x.grad, g * (x > 0)), "the gradient must reach x through the identity untouched"


def test_residual_jacobian_is_branch_plus_identity():
    torch.manual_seed(0)
    block = BasicBlock(2, 2)
    report = check_residual_jacobian(block, torch.randn(1, 2, 4, 4))
    report.assert_ok()
    assert next(block.parameters()).dtype == torch.float32, "the check must not convert the caller's block"
    with pytest.raises(ValueError, match="identity"):
        check_residual_jacobian(BasicBlock(2, 4), torch.randn(1, 2, 4, 4))


def test_resnet20_layout():
    model = SmallResNet()
    assert model.depth == 20 and sum(p.numel() for p in model.parameters()) == 272_474
    projections = [m for m in model.modules() if isinstance(m, BasicBlock) and not isinstance(m.shortcut, nn.Identity)]
    assert len(projections) == 2, "only the first block of stages 2 and 3 changes shape"
    assert SmallResNet(widths=(8, 16), blocks_per_stage=(1, 2)).depth == 8
    with pytest.raises(ValueError):
        SmallResNet(widths=(8, 16), blocks_per_stage=(1, 2, 3))


# --- training recipe -------------------------------------------------------------------------------


def test_random_crop_flip_is_identity_in_eval_and_crops_in_train():
    torch.manual_seed(0)
    aug = RandomCropFlip(padding=2, flip=False)
    x = torch.randn(64, 3, 8, 8)
    assert aug.eval()(x) is x
    out = aug.train()(x)
    padded = F.pad(x, (2, 2, 2, 2))
    offsets = set()
    for i in range(len(x)):
        found = [(dy, dx) for dy in range(5) for dx in range(5) if torch.equal(out[i], padded[i, :, dy:dy + 8, dx:dx + 8])]
        assert found, f"image {i} is not a crop of its padded input"
        offsets.add(found[0])
    assert len(offsets) > 10, "every image must get its own offset, not one per batch"


def test_random_crop_flip_flips_about_half_and_keeps_channels_last():
    torch.manual_seed(0)
    aug = RandomCropFlip(padding=0, flip=True).train()
    x = torch.randn(400, 3, 4, 4).contiguous(memory_format=torch.channels_last)
    out = aug(x)
    flipped = torch.tensor([torch.equal(out[i], x[i].flip(2)) for i in range(len(x))])
    kept = torch.tensor([torch.equal(out[i], x[i]) for i in range(len(x))])
    assert (flipped | kept).all() and 150 < int(flipped.sum()) < 250
    assert out.is_contiguous(memory_format=torch.channels_last)


def test_planted_bug_in_smoothing_targets_is_caught():
    """Spreading eps over the K - 1 wrong classes only (a common mistake) is a different loss."""
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(6, 4, dtype=torch.float64, generator=gen)
    target = torch.randint(0, 4, (6,), generator=gen)
    k, eps = 4, 0.2
    q = torch.full_like(logits, eps / (k - 1))
    q[torch.arange(6), target] = 1 - eps
    wrong = -(q * logits.log_softmax(1)).sum() / 6
    report = compare({"loss": wrong}, {"loss": F.cross_entropy(logits, target, label_smoothing=eps)})
    assert not report.ok


def test_kaiming_init_draws_what_torch_draws():
    """kaiming_init (eq-init-kaiming through kaiming_std) = nn.init.kaiming_normal_(relu), number for number."""
    ours, theirs = SmallVGG(), SmallVGG()
    torch.manual_seed(3)
    kaiming_init(ours, zero_last=False)
    torch.manual_seed(3)
    for m in theirs.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    for (name, a), b in zip(ours.state_dict().items(), theirs.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    last = [m for m in kaiming_init(SmallVGG()).modules() if isinstance(m, nn.Linear)][-1]
    assert not last.weight.any(), "zero_last must zero the output layer"


def test_models_train_a_step_in_channels_last():
    torch.manual_seed(0)
    model = nn.Sequential(RandomCropFlip(4), SmallResNet(widths=(8, 16, 32), blocks_per_stage=1))
    model = model.to(memory_format=torch.channels_last).train()
    x = torch.randn(8, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    loss = F.cross_entropy(model(x), torch.randint(0, 10, (8,)), label_smoothing=0.1)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
