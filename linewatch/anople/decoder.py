"""Light decoder: patch tokens of a few blocks -> joint-space patch embeddings -> abnormal-patch map."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class DecoderBranch(nn.Module):
    """LayerNorm -> Linear(d_v -> w) -> one pre-norm transformer block at width w -> Linear(w -> e)."""

    def __init__(self, vision_width: int, width: int, heads: int, mlp_ratio: float, embed_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(vision_width)
        self.reduce = nn.Linear(vision_width, width)
        self.block = nn.TransformerEncoderLayer(
            d_model=width,
            nhead=heads,
            dim_feedforward=round(width * mlp_ratio),
            dropout=0.0,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.expand = nn.Linear(width, embed_dim)

    def forward(self, tokens: Tensor) -> Tensor:
        """tokens (B, N, d_v) -> l2-normalised patch embeddings (B, N, e)."""
        x = self.reduce(self.norm(tokens))  # (B, N, w)
        x = self.block(x)  # (B, N, w)
        return F.normalize(self.expand(x), dim=-1)  # (B, N, e)


class Decoder(nn.Module):
    """One branch per selected block; the map is the abnormal softmax channel averaged over branches."""

    def __init__(
        self, n_branches: int, vision_width: int, width: int, heads: int, mlp_ratio: float, embed_dim: int
    ) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            DecoderBranch(vision_width, width, heads, mlp_ratio, embed_dim) for _ in range(n_branches)
        )

    def forward(self, tokens: list[Tensor], text: Tensor, tau: Tensor) -> tuple[Tensor, Tensor]:
        """tokens: per branch (B, N, d_v); text: (B, 2, e) normalised [normal, abnormal] per image.

        Returns the abnormal-patch probability map (B, N) and the branch-averaged, l2-normalised patch
        embeddings (B, N, e) that the alignment loss needs.
        """
        maps = []
        embeddings = []
        for branch, layer_tokens in zip(self.branches, tokens, strict=True):
            patches = branch(layer_tokens).float()  # (B, N, e)
            with torch.autocast(patches.device.type, enabled=False):  # cosines at temperature tau: fp32
                logits = tau * torch.einsum("bne,bke->bnk", patches, text.float())  # (B, N, 2)
            maps.append(logits.softmax(dim=-1)[..., 1])  # (B, N)
            embeddings.append(patches)
        anomaly_map = torch.stack(maps).mean(dim=0)  # (B, N)
        mean_patches = F.normalize(torch.stack(embeddings).mean(dim=0), dim=-1)  # (B, N, e)
        return anomaly_map, mean_patches
