"""Network definitions and the registry that builds them by name.

Entry points: `build_model(name, num_classes, in_channels, image_size=..., **kwargs)` (the `_target_` of
every `conf/network/<name>.yaml`), `register_model(name, builder, ...)` (adds one's own network),
`available_models()`, `network_info(name)` and `count_parameters`.

Every network exposes `blocks()`: its ordered units, whose sequential composition equals `forward` (the
head, with any pooling/flatten, is the last unit). The networks defined here (`mlp`, `lenet5`,
`alexnet_small`, VGG, CIFAR ResNet/ResNeXt/WRN, DenseNet-BC, MobileNet v1, `lstm`) use readable state-dict
keys such as `stem.conv.weight`, `layer1.0.conv1.weight`, `features.3.conv.weight`, `head.fc.weight`.
The `*_imagenet` ResNets and `densenet121_imagenet` are torchvision's own modules (built with
`weights=None`) re-tagged as a subclass that only adds `blocks()`, so their state-dict keys are exactly
torchvision's (see `common.models.torchvision_nets`).
"""

from common.models.registry import (
    NetworkInfo,
    available_models,
    build_model,
    builder_kwargs,
    count_parameters,
    network_info,
    register_model,
    registered_name,
)

__all__ = [
    "NetworkInfo",
    "available_models",
    "build_model",
    "builder_kwargs",
    "count_parameters",
    "network_info",
    "register_model",
    "registered_name",
]
