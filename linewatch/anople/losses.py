"""The three AnoPLe losses (equal weights): pixel (focal + Dice), image cross-entropy, alignment."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

_EPS = 1e-6


def focal_loss(prob: Tensor, target: Tensor, gamma: float) -> Tensor:
    """prob, target: (V, 1, S, S); prob is the abnormal probability, target in {0, 1}."""
    prob = prob.clamp(_EPS, 1 - _EPS)
    p_true = torch.where(target > 0.5, prob, 1 - prob)
    return (-((1 - p_true) ** gamma) * p_true.log()).mean()


def dice_loss(prob: Tensor, target: Tensor) -> Tensor:
    """Soft Dice over the whole batch, so views without any anomaly do not divide by zero."""
    intersection = (prob * target).sum()
    return 1 - (2 * intersection + 1) / (prob.sum() + target.sum() + 1)


def image_loss(global_embeddings: Tensor, text: Tensor, labels: Tensor, tau: Tensor) -> Tensor:
    """global_embeddings (V, e) normalised; text (V, 2, e); labels (V,) 0 normal / 1 abnormal."""
    logits = tau * torch.einsum("ve,vke->vk", global_embeddings, text)  # (V, 2)
    return F.cross_entropy(logits, labels)


def alignment_loss(global_embeddings: Tensor, patches: Tensor, anomaly_map: Tensor) -> Tensor:
    """1 - cos(z0, s), s the patch embeddings (V, N, e) pooled with the normalised map (V, N) as weights."""
    weights = anomaly_map / anomaly_map.sum(dim=1, keepdim=True).clamp_min(_EPS)  # (V, N)
    pooled = F.normalize(torch.einsum("vn,vne->ve", weights, patches), dim=-1)  # (V, e)
    return (1 - (global_embeddings * pooled).sum(dim=-1)).mean()
