# SPDX-License-Identifier: Apache-2.0
"""A TorchScript-friendly DINOv2 backbone with the official numerics.

Parameter names follow the official hub checkpoints, so an official state dict loads with
`strict=True`. Everything here is scriptable: no *args, no dicts with optional values, and the
image size is read from the input at run time, so one exported file serves every batch size and
every resolution that is a multiple of the patch size.
"""

from __future__ import annotations

from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .variants import PATCH_SIZE, Variant

LAYER_NORM_EPS = 1e-6


class PatchEmbed(nn.Module):
    def __init__(self, embed_dim: int, patch_size: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        # [B, 3, H, W] -> [B, h*w, D], row-major over the patch grid.
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = float(self.head_dim) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def _qkv(self, x: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        b, n, c = x.shape
        # qkv rows are ordered q | k | v, each split into heads of 64 channels.
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return qkv[0], qkv[1], qkv[2]

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        q, k, v = self._qkv(x)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))

    def cls_attention(self, x: Tensor) -> Tensor:
        """Softmax attention of the CLS query over all keys: [B, heads, N]."""
        q, k, _ = self._qkv(x)
        logits = torch.matmul(q[:, :, :1].float() * self.scale, k.float().transpose(-2, -1))
        return logits.softmax(dim=-1)[:, :, 0]


class LayerScale(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        a, b = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(a) * b)


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, ffn: str, ffn_hidden: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn = Attention(dim, num_heads)
        self.ls1 = LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mlp = SwiGLU(dim, ffn_hidden) if ffn == "swiglu" else Mlp(dim, ffn_hidden)
        self.ls2 = LayerScale(dim)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))

    def cls_attention(self, x: Tensor) -> Tensor:
        return self.attn.cls_attention(self.norm1(x))


class DinoV2(nn.Module):
    """DINOv2 ViT backbone. Input: normalised RGB [B, 3, H, W], H and W multiples of 14."""

    def __init__(self, variant: Variant, depth: int = -1, pos_grid: int = 37) -> None:
        super().__init__()
        depth = variant.depth if depth < 0 else depth
        dim = variant.embed_dim
        self.embed_dim = dim
        self.depth = depth
        self.patch_size = PATCH_SIZE
        self.num_register_tokens = variant.num_register_tokens
        self.interpolate_antialias = variant.interpolate_antialias
        self.interpolate_offset = variant.interpolate_offset
        self.pos_grid = pos_grid

        self.patch_embed = PatchEmbed(dim, PATCH_SIZE)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + pos_grid * pos_grid, dim))
        # Only used by masked training; kept so that official checkpoints load strictly.
        self.mask_token = nn.Parameter(torch.zeros(1, dim))
        if variant.num_register_tokens > 0:
            self.register_tokens = nn.Parameter(torch.zeros(1, variant.num_register_tokens, dim))
        else:
            # Official non-register checkpoints have no such key; an empty, non-persistent
            # buffer keeps the scripted graph uniform without changing the state dict.
            self.register_buffer("register_tokens", torch.zeros(1, 0, dim), persistent=False)
        self.blocks = nn.ModuleList(
            [Block(dim, variant.num_heads, variant.ffn, variant.ffn_hidden) for _ in range(depth)]
        )
        self.norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)

    # -- input checks -----------------------------------------------------------------------

    @torch.jit.export
    def check_input(self, x: Tensor) -> None:
        if x.dim() != 4:
            raise RuntimeError(
                "dinov2: expected a [B, 3, H, W] batch, got a tensor with {} dimensions".format(
                    x.dim()
                )
            )
        if x.size(1) != 3:
            raise RuntimeError(
                "dinov2: expected 3 channels (RGB) in dimension 1, got {}".format(x.size(1))
            )
        h = x.size(2)
        w = x.size(3)
        p = self.patch_size
        if h < p or w < p or h % p != 0 or w % p != 0:
            raise RuntimeError(
                "dinov2: image size {}x{} (HxW) is not a positive multiple of the patch size {}; "
                "resize or crop to e.g. {}x{}".format(
                    h, w, p, max(p, (h + p // 2) // p * p), max(p, (w + p // 2) // p * p)
                )
            )
        if x.size(0) < 1:
            raise RuntimeError("dinov2: the batch is empty")

    # -- embedding --------------------------------------------------------------------------

    def interpolate_pos_encoding(self, h0: int, w0: int, dtype: torch.dtype) -> Tensor:
        """Position embedding for an h0 x w0 patch grid, [1, 1 + h0*w0, D] in `dtype`."""
        m = self.pos_grid
        if h0 == m and w0 == m:
            return self.pos_embed.to(dtype)
        pos = self.pos_embed.float()
        cls_pos = pos[:, :1]
        grid = pos[:, 1:].reshape(1, m, m, self.embed_dim).permute(0, 3, 1, 2)
        if self.interpolate_offset > 0.0:
            # Non-register models: the scale factor itself (with the +0.1) drives the sampling
            # grid, so this differs from size-based interpolation at every size but 518.
            scale = [
                (float(h0) + self.interpolate_offset) / m,
                (float(w0) + self.interpolate_offset) / m,
            ]
            grid = F.interpolate(
                grid,
                scale_factor=scale,
                mode="bicubic",
                align_corners=False,
                antialias=self.interpolate_antialias,
            )
        else:
            grid = F.interpolate(
                grid,
                size=[h0, w0],
                mode="bicubic",
                align_corners=False,
                antialias=self.interpolate_antialias,
            )
        grid = grid.permute(0, 2, 3, 1).reshape(1, h0 * w0, self.embed_dim)
        return torch.cat([cls_pos, grid], dim=1).to(dtype)

    def prepare_tokens(self, x: Tensor) -> Tensor:
        self.check_input(x)
        x = x.to(self.cls_token.dtype)
        b = x.size(0)
        h0 = x.size(2) // self.patch_size
        w0 = x.size(3) // self.patch_size
        tokens = self.patch_embed(x)
        tokens = torch.cat([self.cls_token.expand(b, -1, -1), tokens], dim=1)
        tokens = tokens + self.interpolate_pos_encoding(h0, w0, tokens.dtype)
        if self.num_register_tokens > 0:
            tokens = torch.cat(
                [tokens[:, :1], self.register_tokens.expand(b, -1, -1), tokens[:, 1:]], dim=1
            )
        return tokens

    # -- entry points -----------------------------------------------------------------------

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """Returns (cls [B,D], registers [B,R,D], patches [B,h*w,D], prenorm [B,1+R+h*w,D])."""
        tokens = self.prepare_tokens(x)
        for blk in self.blocks:
            tokens = blk(tokens)
        normed = self.norm(tokens)
        r = self.num_register_tokens
        return normed[:, 0], normed[:, 1 : 1 + r], normed[:, 1 + r :], tokens

    @torch.jit.export
    def intermediate_layers(
        self, x: Tensor, indices: List[int], norm: bool
    ) -> Tuple[List[Tensor], List[Tensor]]:
        """Outputs of the given blocks (0-based, negative from the end), registers dropped.

        Returns (patches: list of [B, h*w, D], cls: list of [B, D]) in the order of `indices`.
        """
        wanted: List[int] = []
        for i in indices:
            j = i + self.depth if i < 0 else i
            if j < 0 or j >= self.depth:
                raise RuntimeError(
                    "dinov2: block index {} is out of range for a model with {} blocks".format(
                        i, self.depth
                    )
                )
            wanted.append(j)
        last = -1
        for j in wanted:
            last = max(last, j)
        tokens = self.prepare_tokens(x)
        taken: Dict[int, Tensor] = {}
        for k, blk in enumerate(self.blocks):
            if k <= last:
                tokens = blk(tokens)
                if k in wanted:
                    taken[k] = tokens
        r = self.num_register_tokens
        patches: List[Tensor] = []
        cls: List[Tensor] = []
        for j in wanted:
            out = taken[j]
            if norm:
                out = self.norm(out)
            patches.append(out[:, 1 + r :])
            cls.append(out[:, 0])
        return patches, cls

    @torch.jit.export
    def cls_attention(self, x: Tensor) -> Tensor:
        """Last block's attention of the CLS token over the patches: [B, heads, h*w], float32."""
        tokens = self.prepare_tokens(x)
        attn = torch.empty(0)
        for k, blk in enumerate(self.blocks):
            if k == self.depth - 1:
                attn = blk.cls_attention(tokens)
            else:
                tokens = blk(tokens)
        return attn[:, :, 1 + self.num_register_tokens :]
