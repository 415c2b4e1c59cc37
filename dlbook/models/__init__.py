"""Reusable models the chapters train and dissect.

* :mod:`dlbook.models.cnn` - LeNet-5, a small AlexNet, VGG blocks, the Inception module, the ResNet
  basic block and a CIFAR-style ResNet (their cost formulas are in :mod:`dlbook.perf`)
* :mod:`dlbook.models.captioning`, :mod:`~dlbook.models.crnn`, :mod:`~dlbook.models.video` - the
  fusion chapter's CNN + RNN models; :mod:`~dlbook.models.char_lm`,
  :mod:`~dlbook.models.forecasting`, :mod:`~dlbook.models.multitask`,
  :mod:`~dlbook.models.sequence_classifiers`, :mod:`~dlbook.models.text_classifiers` - the
  recurrent and attention models of the RNN and fusion chapters; :mod:`~dlbook.models.decoder` - the
  decoder-only character Transformer with its key-value cache; :mod:`~dlbook.models.unet` - the
  segmentation network; :mod:`~dlbook.models.autoencoder`, :mod:`~dlbook.models.vae`,
  :mod:`~dlbook.models.gan` and :mod:`~dlbook.models.diffusion` - the generative chapter's models,
  each with a ``train_<model>`` and a ``sample_<model>`` of the same shape. Only the CNN family is
  re-exported here; import the others from their module.
"""

from .cnn import (
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

__all__ = [
    "AlexNetSmall", "BasicBlock", "InceptionModule", "LeNet5", "SmallInception", "SmallResNet", "SmallVGG",
    "check_residual_jacobian", "vgg_block",
]
