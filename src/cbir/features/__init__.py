"""Feature extraction: deep backbones, poolings and traditional descriptors."""
