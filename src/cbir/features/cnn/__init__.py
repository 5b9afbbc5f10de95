"""CNN descriptors: backbones in torchvision layout, poolings, and the batched extraction runtime."""
