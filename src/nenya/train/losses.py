"""The losses of the trainers: SupCon (Khosla et al. 2020; without labels it is SimCLR's NT-Xent), and
the autoencoder's LogCosh."""

from __future__ import annotations

import math

import torch
from torch import nn


class SupConLoss(nn.Module):
    """Supervised contrastive loss; SimCLR when called without ``labels`` or ``mask``.

    Args:
        temperature: softmax temperature (Nenya: 0.07).
        contrast_mode: ``"all"`` (every view is an anchor) or ``"one"``.
        base_temperature: scale reference (Nenya: 0.07).

    ``forward(features)`` takes ``features`` of shape (batch, n_views, dim), L2-normalised.
    """

    def __init__(self, temperature: float = 0.07, contrast_mode: str = "all", base_temperature: float = 0.07) -> None:
        super().__init__()
        if contrast_mode not in ("all", "one"):
            raise ValueError(f"contrast_mode must be 'all' or 'one', got {contrast_mode!r}")
        self.temperature = temperature
        self.contrast_mode = contrast_mode
        self.base_temperature = base_temperature

    def forward(
        self, features: torch.Tensor, labels: torch.Tensor | None = None, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        if features.dim() < 3:
            raise ValueError("features must be (batch, n_views, dim)")
        if features.dim() > 3:
            features = features.view(features.shape[0], features.shape[1], -1)
        device = features.device
        batch_size = features.shape[0]
        if labels is not None and mask is not None:
            raise ValueError("give labels or mask, not both")
        if labels is None and mask is None:
            mask = torch.eye(batch_size, dtype=torch.float32, device=device)
        elif labels is not None:
            labels = labels.contiguous().view(-1, 1)
            if labels.shape[0] != batch_size:
                raise ValueError("number of labels does not match number of features")
            mask = torch.eq(labels, labels.T).float().to(device)
        else:
            assert mask is not None
            mask = mask.float().to(device)

        contrast_count = features.shape[1]
        contrast_feature = torch.cat(torch.unbind(features, dim=1), dim=0)
        if self.contrast_mode == "one":
            anchor_feature, anchor_count = features[:, 0], 1
        else:
            anchor_feature, anchor_count = contrast_feature, contrast_count

        logits = torch.matmul(anchor_feature, contrast_feature.T) / self.temperature
        logits = logits - logits.max(dim=1, keepdim=True).values.detach()
        mask = mask.repeat(anchor_count, contrast_count)
        n = batch_size * anchor_count
        logits_mask = torch.ones_like(mask).scatter_(1, torch.arange(n, device=device).view(-1, 1), 0)
        mask = mask * logits_mask
        exp_logits = torch.exp(logits) * logits_mask
        log_prob = logits - torch.log(exp_logits.sum(1, keepdim=True))
        mean_log_prob_pos = (mask * log_prob).sum(1) / mask.sum(1)
        loss = -(self.temperature / self.base_temperature) * mean_log_prob_pos
        return loss.view(anchor_count, batch_size).mean()


def logcosh(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean log(cosh(pred - target)), computed stably as ``|d| + softplus(-2|d|) - log 2``."""
    d = (pred - target).float().abs()
    return (d + torch.nn.functional.softplus(-2.0 * d) - math.log(2.0)).mean()
