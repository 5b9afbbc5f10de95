"""Global poolings of a CNN feature map ``x: [B, C, H, W]`` into one vector per image ``[B, C]``.

GAP, MAC (max), SPoC (sum), GeM (generalised mean, Radenovic et al. 2018) and R-MAC (regional
MAC, Tolias et al. 2016), as tiny functions plus a registry, ``pool(name, x, **params)`` and a
thin ``nn.Module`` wrapper. Outputs are not L2-normalised; extraction does that.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from cbir.errors import CbirError

_FIX = "check the method's pooling params in params.yaml (conf/method/)"


def _check_map(x: object, where: str) -> Tensor:
    if not isinstance(x, Tensor) or x.dim() != 4 or min(x.shape[-2:]) < 1:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise CbirError(f"{where}: expected a feature map tensor [B, C, H, W] with H, W >= 1, got {shape}; "
                        "pool the backbone's convolutional output, not its classifier logits")
    return x


def gap(x: Tensor) -> Tensor:
    """Global average pooling: the mean over the spatial positions."""
    return _check_map(x, "gap").mean(dim=(-2, -1))


def mac(x: Tensor) -> Tensor:
    """Maximum activations of convolutions: the spatial max of each channel."""
    return _check_map(x, "mac").amax(dim=(-2, -1))


def spoc(x: Tensor) -> Tensor:
    """Sum-pooled convolutional features (Babenko & Lempitsky 2015): the spatial sum."""
    return _check_map(x, "spoc").sum(dim=(-2, -1))


def gem(x: Tensor, p: float | Tensor = 3.0, eps: float = 1e-6) -> Tensor:
    """Generalised mean pooling ``(mean(clamp(x, eps) ** p)) ** (1 / p)``.

    ``p = 1`` is GAP (for activations >= ``eps``) and ``p -> inf`` tends to MAC. Computed as
    ``m * mean((x / m) ** p) ** (1 / p)`` with ``m`` the channel max, so large ``p`` cannot
    overflow.
    """
    x = _check_map(x, "gem")
    p_val = float(p.detach().min()) if isinstance(p, Tensor) else p
    if isinstance(p_val, bool) or not isinstance(p_val, (int, float)) or not math.isfinite(p_val) or p_val <= 0:
        raise CbirError(f"gem: parameter 'p' must be a finite number > 0, got {p!r}; {_FIX}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
        raise CbirError(f"gem: parameter 'eps' must be a number > 0, got {eps!r}; {_FIX}")
    x = x.clamp(min=eps)
    m = x.amax(dim=(-2, -1), keepdim=True)
    return m.squeeze(-1).squeeze(-1) * (x / m).pow(p).mean(dim=(-2, -1)).pow(1.0 / p)


def rmac_regions(height: int, width: int, levels: int = 3, overlap: float = 0.4) -> list[tuple[int, int, int]]:
    """Square R-MAC regions ``(top, left, side)`` of a ``height x width`` map (Tolias et al. 2016).

    At level ``l = 1..levels`` the side is ``floor(2 * min(H, W) / (l + 1))``; regions are laid
    uniformly, ``l`` per short side and ``l + m - 1`` per long side, where the number ``m + 1`` of
    largest-scale regions along the long side (2..7) makes consecutive ones overlap as close to
    ``overlap`` as possible. This follows the authors' reference code, without the extra
    whole-map region that some ports add. Levels whose side would be 0 are skipped; on maps
    with a short side of 2 or 3, side-1 regions can repeat after flooring, as in the reference.
    """
    w = min(height, width)
    steps = torch.arange(2, 8, dtype=torch.float64)
    b = (max(height, width) - w) / (steps - 1)
    idx = int(torch.argmin(torch.abs((w ** 2 - w * b) / w ** 2 - overlap)))
    extra_w = idx + 1 if height < width else 0
    extra_h = idx + 1 if height > width else 0
    regions = []
    for level in range(1, levels + 1):
        side = math.floor(2 * w / (level + 1))
        if side < 1:
            continue
        half = math.floor(side / 2 - 1)
        tops = _starts(height, side, level + extra_h, half)
        lefts = _starts(width, side, level + extra_w, half)
        regions += [(top, left, side) for top in tops for left in lefts]
    return regions


def _starts(length: int, side: int, count: int, half: int) -> list[int]:
    step = (length - side) / (count - 1) if count > 1 else 0.0
    return [math.floor(half + k * step) - half for k in range(count)]


def rmac(x: Tensor, levels: int = 3, eps: float = 1e-6) -> Tensor:
    """Regional MAC: the sum of the L2-normalised MAC vectors of the ``rmac_regions``."""
    x = _check_map(x, "rmac")
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 1:
        raise CbirError(f"rmac: parameter 'levels' must be an integer >= 1, got {levels!r}; {_FIX}")
    out = torch.zeros(x.shape[:2], dtype=x.dtype, device=x.device)
    for top, left, side in rmac_regions(x.shape[-2], x.shape[-1], levels):
        v = x[..., top:top + side, left:left + side].amax(dim=(-2, -1))
        out = out + v / (torch.linalg.vector_norm(v, dim=1, keepdim=True) + eps)
    return out


POOLINGS: dict[str, Callable[..., Tensor]] = {"gap": gap, "mac": mac, "spoc": spoc, "gem": gem, "rmac": rmac}


def _lookup(name: str) -> Callable[..., Tensor]:
    if name not in POOLINGS:
        raise CbirError(f"unknown pooling {name!r}; choose one of {sorted(POOLINGS)} "
                        "for methods.<name>.pooling in params.yaml")
    return POOLINGS[name]


def pool(name: str, x: Tensor, **params: object) -> Tensor:
    """Apply pooling ``name`` with ``params`` to ``x: [B, C, H, W]`` -> ``[B, C]``."""
    fn = _lookup(name)
    accepted = list(inspect.signature(fn).parameters)[1:]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise CbirError(f"pooling {name}: unknown parameter(s) {unknown}; accepted: {accepted}; {_FIX}")
    return fn(x, **params)


class Pool(nn.Module):
    """``nn.Module`` wrapper: ``Pool("gem", p=3.0)(x)`` == ``pool("gem", x, p=3.0)``."""

    def __init__(self, name: str, **params: object) -> None:
        super().__init__()
        _lookup(name)
        self.name = name
        self.params = dict(params)

    def forward(self, x: Tensor) -> Tensor:
        return pool(self.name, x, **self.params)

    def extra_repr(self) -> str:
        return ", ".join([repr(self.name)] + [f"{k}={v!r}" for k, v in self.params.items()])
