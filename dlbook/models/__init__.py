"""Reusable models the chapters train and dissect.

* :mod:`dlbook.models.cnn` - LeNet-5, a small AlexNet, VGG blocks, the Inception module, the ResNet
  basic block and a CIFAR-style ResNet; hand parameter/MAC formulas and a hook-based MAC counter;
  the CNN training recipe's pieces (label smoothing, one-cycle schedule, on-device crop + flip).
"""

from .cnn import (
    AlexNetSmall,
    BasicBlock,
    InceptionModule,
    LeNet5,
    RandomCropFlip,
    SmallInception,
    SmallResNet,
    SmallVGG,
    check_residual_jacobian,
    conv2d_macs,
    conv2d_params,
    count_macs,
    kaiming_init,
    layer_macs,
    linear_macs,
    linear_params,
    one_cycle_lr,
    smoothed_cross_entropy,
    smoothed_cross_entropy_grad,
    vgg_block,
)

__all__ = [
    "AlexNetSmall", "BasicBlock", "InceptionModule", "LeNet5", "RandomCropFlip", "SmallInception",
    "SmallResNet", "SmallVGG", "check_residual_jacobian", "conv2d_macs", "conv2d_params", "count_macs",
    "kaiming_init", "layer_macs", "linear_macs", "linear_params", "one_cycle_lr", "smoothed_cross_entropy",
    "smoothed_cross_entropy_grad", "vgg_block",
]
