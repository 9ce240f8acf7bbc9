"""Nenya's training augmentations, batched on the device: flips, rotation, jitter crop, noise, demean.

The chain of the formats doc (§5), in order: random left-right and up-down flips (p = 0.5 each);
rotation by a uniform angle in [0, 360) degrees (bilinear, constant 0 fill); a crop of side ``c``
whose centre is shifted by a random integer in [-j, j] on each axis, resized back to the input size
(bilinear); optional Gaussian noise (sigma ``gauss_noise``); demean; repeat to ``nchannels``.

Flips, rotation and crop-and-resize compose into one affine map per image, so the whole geometric
part is a single ``grid_sample`` over the batch (on the GPU when training there) instead of three
per-image scikit-image calls in the loader workers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    """Which augmentations to apply (Nenya opts keys in brackets).

    Attributes:
        flip: random left-right and up-down flips [``flip``].
        rotate: random rotation in [0, 360) degrees [``rotate``].
        crop: side of the jitter crop, None for no crop [``random_cropjitter[0]`` / ``random_jitter[0]``].
        jitter: largest shift of the crop centre, in pixels [``random_cropjitter[1]``].
        gauss_noise: sigma of added Gaussian noise, 0 for none [``gauss_noise``].
        demean: subtract each view's mean [``demean``].
        nchannels: channels the model takes; one-channel images are repeated [``nchannels``].
    """

    flip: bool = True
    rotate: bool = True
    crop: int | None = None
    jitter: int = 0
    gauss_noise: float = 0.0
    demean: bool = True
    nchannels: int = 3

    @classmethod
    def from_opt(cls, opt: Any) -> AugmentConfig:
        """From Nenya options; ``flip``, ``rotate`` and ``demean`` default to on (the production values)."""

        def get(key: str, default: Any) -> Any:
            value = getattr(opt, key, None)
            return default if value is None else value

        cj = get("random_cropjitter", None)
        if cj is None:
            cj = get("random_jitter", None)
        crop, jitter = None, 0
        if cj not in (None, 0, [], ()):
            if isinstance(cj, (int, float)):
                crop = int(cj)
            else:
                crop = int(cj[0]) if len(cj) > 0 and cj[0] else None
                jitter = int(cj[1]) if len(cj) > 1 else 0
        return cls(
            flip=bool(get("flip", True)),
            rotate=bool(get("rotate", True)),
            crop=crop,
            jitter=jitter,
            gauss_noise=float(get("gauss_noise", 0.0) or 0.0),
            demean=bool(get("demean", True)),
            nchannels=int(get("nchannels", 3)),
        )


def affine_params(
    batch: int, height: int, width: int, cfg: AugmentConfig, generator: torch.Generator | None = None
) -> torch.Tensor | None:
    """Random (B, 2, 3) ``affine_grid`` matrices of flips + rotation + jitter crop (None: identity)."""
    if not (cfg.flip or cfg.rotate or cfg.crop):
        return None
    if cfg.crop and cfg.crop > min(height, width):
        raise ValueError(
            f"crop side {cfg.crop} is larger than the {height}x{width} images; "
            "set random_cropjitter to [crop, jitter] with crop <= the image size"
        )
    flips = torch.zeros(batch, 2, dtype=torch.bool)
    if cfg.flip:
        flips = torch.rand(batch, 2, generator=generator) < 0.5
    angles = torch.zeros(batch, dtype=torch.float64)
    if cfg.rotate:
        angles = torch.rand(batch, generator=generator, dtype=torch.float64) * (2 * math.pi)
    shifts = torch.zeros(batch, 2, dtype=torch.float64)
    if cfg.crop and cfg.jitter:
        shifts = torch.randint(-cfg.jitter, cfg.jitter + 1, (batch, 2), generator=generator).to(torch.float64)
    return compose_affine(flips, angles, shifts, height, width, cfg.crop)


def compose_affine(
    flips: torch.Tensor, angles: torch.Tensor, shifts: torch.Tensor, height: int, width: int, crop: int | None
) -> torch.Tensor:
    """The (B, 2, 3) matrices for given flips (B, 2: left-right, up-down), angles (B, radians) and crop
    shifts (B, 2: columns, rows, in pixels).

    Output pixel ``p`` (normalised coordinates, ``align_corners=False``) samples the input at
    ``F R (S p + t)``: ``S``/``t`` pick the crop (side ``crop`` centred at the image centre plus the
    shift), ``R`` rotates about the centre in pixel space, ``F`` flips.
    """
    dt = torch.float64
    batch = angles.shape[0]
    f = torch.where(flips.bool(), -1.0, 1.0).to(dt)
    cos, sin = torch.cos(angles.to(dt)), torch.sin(angles.to(dt))
    # rotation in pixel space, seen in normalised coordinates: D^-1 R D with D = diag(W/2, H/2)
    r = torch.empty(batch, 2, 2, dtype=dt)
    r[:, 0, 0], r[:, 0, 1] = cos, -sin * (height / width)
    r[:, 1, 0], r[:, 1, 1] = sin * (width / height), cos
    s = torch.eye(2, dtype=dt).repeat(batch, 1, 1)
    t = torch.zeros(batch, 2, dtype=dt)
    if crop:
        s[:, 0, 0], s[:, 1, 1] = crop / width, crop / height
        t[:, 0], t[:, 1] = 2 * shifts[:, 0].to(dt) / width, 2 * shifts[:, 1].to(dt) / height
    fr = f[:, :, None] * r
    theta = torch.empty(batch, 2, 3, dtype=dt)
    theta[:, :, :2] = fr @ s
    theta[:, :, 2] = (fr @ t[:, :, None])[:, :, 0]
    return theta


def warp(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Resample a (B, C, H, W) batch with ``affine_grid`` matrices (bilinear, zeros outside)."""
    b, c, h, w = x.shape
    grid = F.affine_grid(theta.to(device=x.device, dtype=x.dtype), [b, c, h, w], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def augment(
    x: torch.Tensor,
    cfg: AugmentConfig,
    generator: torch.Generator | None = None,
    noise_generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One independently augmented view of each image of a (B, C, H, W) batch.

    Random draws come from ``generator`` (a CPU generator) and, for the noise, ``noise_generator``
    (on ``x``'s device), so a seeded run is reproducible on any device.

    Returns:
        (B, nchannels, H, W) float32 on ``x``'s device.
    """
    if x.dim() == 3:
        x = x[:, None]
    x = x.float()
    b, c, h, w = x.shape
    theta = affine_params(b, h, w, cfg, generator)
    if theta is not None:
        x = warp(x, theta)
    if cfg.gauss_noise:
        x = x + cfg.gauss_noise * torch.randn(x.shape, generator=noise_generator, device=x.device, dtype=x.dtype)
    if cfg.demean:
        x = x - x.mean(dim=(1, 2, 3), keepdim=True)
    if c != cfg.nchannels:
        if c != 1:
            raise ValueError(
                f"images have {c} channels but nchannels is {cfg.nchannels}; "
                "set nchannels to the images' channel count (or 3 to repeat one-channel cutouts)"
            )
        x = x.expand(-1, cfg.nchannels, -1, -1)
    return x.contiguous()


def two_views(
    x: torch.Tensor,
    cfg: AugmentConfig,
    generator: torch.Generator | None = None,
    noise_generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Two independent views of each image, stacked as (2B, nchannels, H, W): views 1 then views 2."""
    return torch.cat([augment(x, cfg, generator, noise_generator), augment(x, cfg, generator, noise_generator)])
