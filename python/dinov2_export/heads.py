# SPDX-License-Identifier: Apache-2.0
"""The linear heads of the official DINOv2 evaluations: load, check, script and export.

Three head families exist as official checkpoints (docs/FORMAT.md, "Head files"):

* ImageNet-1k linear classifiers (`{m}[_reg4]_linear_head.pth`, `..._linear4_head.pth`): a plain
  `{weight, bias}` state dict of `Linear((1 + L) * D, 1000)` applied to the CLS token of each of
  the last L blocks (L = 1 or 4, after the final norm) followed by the mean of the last block's
  patch tokens.
* Depth linear heads (`{m}_{nyu,kitti}_linear[4]_head.pth`): a mmcv checkpoint whose
  `state_dict` holds `decode_head.conv_depth.{weight,bias}`, a 1x1 convolution from
  `2 * D * L` channels to 256 depth bins. The input of layer i is its patch map (un-normed in the
  official hub code) with its CLS token broadcast over the grid, `[patches_i, cls_i]`; the maps
  are upsampled 4x (bilinear) and concatenated in block order. The bin scores go through
  `relu + 0.1`, are normalised to sum to one, and the depth is their expectation over
  `linspace(min_depth, max_depth, 256)`, clamped to that range and resized to the input size.
* Segmentation linear heads (`{m}_{ade20k,voc2012}_linear_head.pth`): a mmseg checkpoint with
  `decode_head.bn.*` (BatchNorm, eps 1e-5) and `decode_head.conv_seg.{weight,bias}` (1x1 conv to
  the classes) on the normed patch map of the last block. Logits are resized to the input size
  (bilinear) before the arg-max.

Every checkpoint is checked strictly against the shapes the head needs; then the head is
written as a small TorchScript module whose buffers hold the parameters (the BatchNorm folded
into the convolution, 1x1 convolutions stored as matrices) and whose `forward` computes the head
from backbone outputs, with the description in the extra file `dinov2/head.json`.

The `official_*` functions compute each head literally as the official evaluation code does,
from an official-format state dict; the tests compare the exported modules (and the C++ heads)
with them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import FORMAT_VERSION, __version__
from .variants import PATCH_SIZE, Variant, get_variant
from .weights import sha256_file, sha256_state_dict

HEAD_FILE = "dinov2/head.json"
DATA_DIR = Path(__file__).resolve().parent / "data"

#: BatchNorm epsilon of the official segmentation heads (PyTorch's default).
BN_EPS = 1e-5
#: Number of depth bins, bin-score offset and upsampling factor of the official depth heads.
DEPTH_BINS = 256
DEPTH_SCORE_OFFSET = 0.1
DEPTH_UPSAMPLE = 4

StateDict = Dict[str, Tensor]


class HeadError(ValueError):
    """A head checkpoint or request that cannot be used, with the reason in the message."""


# -- kinds and datasets --------------------------------------------------------------------


@dataclass(frozen=True)
class HeadKind:
    """One `--kind` of the exporter."""

    name: str  # the --kind value
    family: str  # head.json "kind"
    layers: int  # backbone blocks the head reads
    datasets: Tuple[str, ...]  # the first is the default


KINDS: Dict[str, HeadKind] = {
    k.name: k
    for k in (
        HeadKind("linear", "linear_classifier", 1, ("imagenet",)),
        HeadKind("linear4", "linear_classifier", 4, ("imagenet",)),
        HeadKind("depth_linear", "depth_linear", 1, ("nyu", "kitti")),
        HeadKind("depth_linear4", "depth_linear", 4, ("nyu", "kitti")),
        HeadKind("seg_linear", "segmentation_linear", 1, ("ade20k", "voc2012")),
    )
}

#: Depth range of the training configurations (metres). The official hub constructor passes
#: (0.001, 80) to every linear depth head whatever the dataset; the NYU heads were trained with
#: a 10 m range, which is what these defaults follow (override with min_depth / max_depth).
DEPTH_RANGES: Dict[str, Tuple[float, float]] = {"nyu": (0.001, 10.0), "kitti": (0.001, 80.0)}

#: Blocks read by the four-layer depth heads, per backbone size (official hub constructors).
DEPTH4_BLOCKS: Dict[str, List[int]] = {
    "dinov2_vits14": [2, 5, 8, 11],
    "dinov2_vitb14": [2, 5, 8, 11],
    "dinov2_vitl14": [4, 11, 17, 23],
    "dinov2_vitg14": [9, 19, 29, 39],
}


def get_kind(name: str) -> HeadKind:
    try:
        return KINDS[name]
    except KeyError:
        raise HeadError(f"unknown head kind {name!r}; expected one of {', '.join(KINDS)}") from None


def resolve_dataset(kind: HeadKind, dataset: Optional[str]) -> str:
    if dataset is None:
        return kind.datasets[0]
    if dataset not in kind.datasets:
        raise HeadError(
            f"dataset {dataset!r} has no {kind.name} head; "
            f"expected one of {', '.join(kind.datasets)}"
        )
    return dataset


def _base_name(variant: Variant) -> str:
    return variant.name[: -len("_reg")] if variant.has_registers else variant.name


def head_blocks(kind: HeadKind, variant: Variant) -> List[int]:
    """Backbone blocks the head reads, in the order of its input channels.

    Classifiers use the last L blocks (negative indices, as the official `n=L`); depth heads the
    official absolute indices; segmentation heads the last block of the full-depth model.
    """
    if kind.family == "linear_classifier":
        return list(range(-kind.layers, 0))
    if kind.family == "depth_linear":
        return DEPTH4_BLOCKS[_base_name(variant)] if kind.layers == 4 else [variant.depth - 1]
    return [variant.depth - 1]


def _read_tsv(name: str) -> List[List[str]]:
    rows = []
    for line in (DATA_DIR / name).read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            rows.append(line.split("\t"))
    return rows


def class_names(dataset: str) -> List[str]:
    """Class names in label order for imagenet, ade20k or voc2012."""
    if dataset == "imagenet":
        return [r[1] for r in _read_tsv("imagenet1k_classes.tsv")]
    return [r[0] for r in _read_tsv(f"{dataset}_classes.tsv")]


def palette(dataset: str) -> List[List[int]]:
    """RGB colour per class for ade20k or voc2012."""
    return [[int(c) for c in r[1:4]] for r in _read_tsv(f"{dataset}_classes.tsv")]


def num_classes(dataset: str) -> int:
    return len(class_names(dataset))


# -- official checkpoints: expected keys and strict loading -------------------------------


def expected_shapes(kind: HeadKind, variant: Variant, dataset: str) -> Dict[str, Tuple[int, ...]]:
    """Key -> shape of the official checkpoint for this head (required keys only)."""
    d = variant.embed_dim
    if kind.family == "linear_classifier":
        c = num_classes(dataset)
        return {"weight": (c, (1 + kind.layers) * d), "bias": (c,)}
    if kind.family == "depth_linear":
        return {
            "decode_head.conv_depth.weight": (DEPTH_BINS, 2 * d * kind.layers, 1, 1),
            "decode_head.conv_depth.bias": (DEPTH_BINS,),
        }
    c = num_classes(dataset)
    return {
        "decode_head.bn.weight": (d,),
        "decode_head.bn.bias": (d,),
        "decode_head.bn.running_mean": (d,),
        "decode_head.bn.running_var": (d,),
        "decode_head.conv_seg.weight": (c, d, 1, 1),
        "decode_head.conv_seg.bias": (c,),
    }


#: Keys an official checkpoint may hold that play no part at inference.
OPTIONAL_KEYS = {"decode_head.bn.num_batches_tracked"}


def unwrap_checkpoint(raw: Any, path: str = "checkpoint") -> StateDict:
    """The state dict of a head checkpoint: plain, or wrapped by mmcv as {state_dict, meta}."""
    if not isinstance(raw, dict):
        raise HeadError(f"{path}: expected a state dict, found a {type(raw).__name__}")
    if "state_dict" in raw and isinstance(raw["state_dict"], dict):
        raw = raw["state_dict"]
    sd: StateDict = {}
    for key, value in raw.items():
        if not isinstance(value, Tensor):
            raise HeadError(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor")
        sd[key] = value
    return sd


def check_head_state_dict(sd: StateDict, kind: HeadKind, variant: Variant, dataset: str) -> None:
    """Raise HeadError naming the first missing, mis-shaped or unexpected key."""
    expected = expected_shapes(kind, variant, dataset)
    for key, shape in expected.items():
        if key not in sd:
            raise HeadError(
                f"missing key {key!r} (expected shape {shape}) for a {kind.name} head "
                f"of {variant.name} on {dataset}"
            )
        if tuple(sd[key].shape) != shape:
            raise HeadError(
                f"key {key!r} has shape {tuple(sd[key].shape)}, expected {shape} for a "
                f"{kind.name} head of {variant.name} on {dataset}"
            )
        if not sd[key].is_floating_point():
            raise HeadError(f"key {key!r} has dtype {sd[key].dtype}, expected a floating dtype")
    for key in sd:
        if key not in expected and key not in OPTIONAL_KEYS:
            raise HeadError(
                f"unexpected key {key!r} for a {kind.name} head (expected {', '.join(expected)})"
            )


def load_head_checkpoint(path: Path) -> StateDict:
    if not path.exists():
        raise HeadError(f"head weights file {path} does not exist")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - re-raised with the file named
        raise HeadError(f"{path}: not a readable PyTorch checkpoint ({e})") from e
    return unwrap_checkpoint(raw, str(path))


def random_head_state_dict(
    kind: HeadKind, variant: Variant, dataset: str, seed: int = 0
) -> StateDict:
    """Seeded weights in the official layout, scaled so that every part changes the output."""
    g = torch.Generator().manual_seed(seed)
    sd: StateDict = {}
    for key, shape in expected_shapes(kind, variant, dataset).items():
        if key.endswith("running_var"):
            t = 0.5 + torch.rand(shape, generator=g)
        elif key.endswith("running_mean"):
            t = 0.2 * torch.randn(shape, generator=g)
        elif key.endswith("bn.weight"):
            t = 1.0 + 0.2 * torch.randn(shape, generator=g)
        elif key.endswith("bias"):
            t = 0.1 * torch.randn(shape, generator=g)
        else:
            fan_in = shape[1]
            t = torch.randn(shape, generator=g) / fan_in**0.5
        sd[key] = t.contiguous()
    if kind.family == "segmentation_linear":
        sd["decode_head.bn.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    return sd


# -- the official maths, literally ---------------------------------------------------------


def official_classifier(sd: StateDict, cls: Sequence[Tensor], last_patches: Tensor) -> Tensor:
    """cls: per block [B, D] (last L blocks, normed); last_patches [B, N, D] -> logits [B, C]."""
    x = torch.cat(list(cls) + [last_patches.mean(dim=1)], dim=1)
    return F.linear(x, sd["weight"], sd["bias"])


def official_depth(
    sd: StateDict,
    patch_maps: Sequence[Tensor],
    cls: Sequence[Tensor],
    min_depth: float,
    max_depth: float,
    size: Tuple[int, int],
) -> Tensor:
    """patch_maps: per block [B, D, h, w]; cls: per block [B, D] -> depth [B, 1, H, W]."""
    inputs = [
        torch.cat([x, c[:, :, None, None].expand_as(x)], dim=1) for x, c in zip(patch_maps, cls)
    ]
    up = [s * DEPTH_UPSAMPLE for s in inputs[0].shape[2:]]
    inputs = [F.interpolate(x, size=up, mode="bilinear", align_corners=False) for x in inputs]
    logit = F.conv2d(
        torch.cat(inputs, dim=1),
        sd["decode_head.conv_depth.weight"],
        sd["decode_head.conv_depth.bias"],
    )
    logit = torch.relu(logit) + DEPTH_SCORE_OFFSET
    logit = logit / logit.sum(dim=1, keepdim=True)
    bins = torch.linspace(min_depth, max_depth, DEPTH_BINS, device=logit.device)
    depth = torch.einsum("ikmn,k->imn", logit, bins).unsqueeze(1)
    depth = torch.clamp(depth, min=min_depth, max=max_depth)
    return F.interpolate(depth, size=list(size), mode="bilinear", align_corners=False)


def official_segmentation(sd: StateDict, patch_map: Tensor) -> Tensor:
    """patch_map [B, D, h, w] (last block, normed) -> logits [B, C, h, w]."""
    x = F.batch_norm(
        patch_map,
        sd["decode_head.bn.running_mean"],
        sd["decode_head.bn.running_var"],
        sd["decode_head.bn.weight"],
        sd["decode_head.bn.bias"],
        training=False,
        eps=BN_EPS,
    )
    return F.conv2d(x, sd["decode_head.conv_seg.weight"], sd["decode_head.conv_seg.bias"])


# -- scriptable heads ----------------------------------------------------------------------


class LinearClassifierHead(nn.Module):
    """logits = weight @ [cls_1, ..., cls_L, mean(last patches)] + bias."""

    def __init__(self, weight: Tensor, bias: Tensor) -> None:
        super().__init__()
        self.register_buffer("weight", weight.float().contiguous())
        self.register_buffer("bias", bias.float().contiguous())

    def forward(self, cls: List[Tensor], patches: Tensor) -> Tensor:
        """cls: per block [B, D], normed; patches: last block [B, h*w, D] -> [B, classes]."""
        parts: List[Tensor] = []
        for c in cls:
            parts.append(c.float())
        parts.append(patches.float().mean(dim=1))
        return F.linear(torch.cat(parts, dim=1), self.weight, self.bias)


class DepthLinearHead(nn.Module):
    """Depth from [patch map, CLS] of L blocks: 1x1 conv to bins, expectation over the bins.

    The 1x1 convolution is applied before the 4x bilinear upsampling rather than after it: both
    are linear and the bilinear weights sum to one, so the result is the same with
    2*D*L / 256 times less work, and the CLS part reduces to one vector per image.
    """

    def __init__(
        self, weight: Tensor, bias: Tensor, min_depth: float, max_depth: float, layers: int
    ) -> None:
        super().__init__()
        self.register_buffer("weight", weight.float().reshape(weight.shape[0], -1).contiguous())
        self.register_buffer("bias", bias.float().contiguous())
        self.register_buffer("bins", torch.linspace(min_depth, max_depth, weight.shape[0]))
        self.min_depth = float(min_depth)
        self.max_depth = float(max_depth)
        self.layers = layers
        self.embed_dim = weight.shape[1] // (2 * layers)
        self.upsample = DEPTH_UPSAMPLE
        self.score_offset = DEPTH_SCORE_OFFSET
        self.patch_size = PATCH_SIZE

    def forward(self, patches: List[Tensor], cls: List[Tensor], h: int, w: int) -> Tensor:
        """patches: per block [B, h*w, D]; cls: per block [B, D] -> depth [B, 14h, 14w] (m)."""
        d = self.embed_dim
        b = cls[0].size(0)
        logit = self.bias.view(1, 1, -1)
        for i in range(self.layers):
            wp = self.weight[:, 2 * d * i : 2 * d * i + d]
            wc = self.weight[:, 2 * d * i + d : 2 * d * (i + 1)]
            logit = logit + torch.matmul(patches[i].float(), wp.t())
            logit = logit + torch.matmul(cls[i].float(), wc.t()).unsqueeze(1)
        logit = logit.transpose(1, 2).reshape(b, -1, h, w)
        logit = F.interpolate(
            logit, size=[h * self.upsample, w * self.upsample], mode="bilinear", align_corners=False
        )
        p = torch.relu(logit) + self.score_offset
        p = p / p.sum(dim=1, keepdim=True)
        depth = (p * self.bins.view(1, -1, 1, 1)).sum(dim=1, keepdim=True)
        depth = depth.clamp(self.min_depth, self.max_depth)
        depth = F.interpolate(
            depth,
            size=[h * self.patch_size, w * self.patch_size],
            mode="bilinear",
            align_corners=False,
        )
        return depth[:, 0]


class SegmentationLinearHead(nn.Module):
    """Per-patch class logits: (BatchNorm folded into) a 1x1 convolution of the patch map."""

    def __init__(self, weight: Tensor, bias: Tensor) -> None:
        super().__init__()
        self.register_buffer("weight", weight.float().contiguous())
        self.register_buffer("bias", bias.float().contiguous())

    def forward(self, patches: Tensor, h: int, w: int) -> Tensor:
        """patches: last block [B, h*w, D], normed -> logits [B, classes, h, w]."""
        logits = F.linear(patches.float(), self.weight, self.bias)
        return logits.transpose(1, 2).reshape(patches.size(0), -1, h, w)

    @torch.jit.export
    def labels(self, logits: Tensor, height: int, width: int) -> Tensor:
        """Logits resized to height x width (bilinear), then the arg-max: [B, height, width]."""
        up = F.interpolate(logits, size=[height, width], mode="bilinear", align_corners=False)
        return up.argmax(dim=1)


def fold_batch_norm(sd: StateDict) -> Tuple[Tensor, Tensor]:
    """conv_seg(bn(x)) as one affine map: (weight [C, D], bias [C]), computed in float64."""
    g = sd["decode_head.bn.weight"].double()
    beta = sd["decode_head.bn.bias"].double()
    mean = sd["decode_head.bn.running_mean"].double()
    var = sd["decode_head.bn.running_var"].double()
    w = sd["decode_head.conv_seg.weight"].double().flatten(1)
    b = sd["decode_head.conv_seg.bias"].double()
    scale = g / torch.sqrt(var + BN_EPS)
    shift = beta - mean * scale
    return (w * scale).float(), (b + w @ shift).float()


# -- export --------------------------------------------------------------------------------


@dataclass
class HeadWeights:
    """A checked official-format state dict and where it came from."""

    state_dict: StateDict
    kind: HeadKind
    variant: Variant
    dataset: str
    source: str  # "official" | "random"
    sha256: str
    seed: Optional[int] = None


def load_head_weights(
    weights: str, kind: str, backbone: str, dataset: Optional[str] = None, seed: int = 0
) -> HeadWeights:
    """Resolve `--weights` (an official .pth or 'random') into checked head weights."""
    k = get_kind(kind)
    v = get_variant(backbone)
    ds = resolve_dataset(k, dataset)
    if weights == "random":
        sd = random_head_state_dict(k, v, ds, seed)
        return HeadWeights(sd, k, v, ds, "random", sha256_state_dict(sd), seed)
    path = Path(weights)
    sd = load_head_checkpoint(path)
    check_head_state_dict(sd, k, v, ds)
    return HeadWeights(sd, k, v, ds, "official", sha256_file(path))


def build_head(
    hw: HeadWeights, min_depth: Optional[float] = None, max_depth: Optional[float] = None
) -> Tuple[nn.Module, Dict[str, Any]]:
    """The scriptable module and its head.json description."""
    k, v, sd = hw.kind, hw.variant, hw.state_dict
    check_head_state_dict(sd, k, v, hw.dataset)
    weights: Dict[str, Any] = {"source": hw.source, "sha256": hw.sha256}
    if hw.seed is not None and hw.source == "random":
        weights["seed"] = hw.seed
    meta: Dict[str, Any] = {
        "format": "dinov2-head",
        "format_version": FORMAT_VERSION,
        "exporter_version": __version__,
        "torch_version": torch.__version__,
        "kind": k.family,
        "head": k.name,
        "variant": v.name,
        "embed_dim": v.embed_dim,
        "patch_size": PATCH_SIZE,
        "dataset": hw.dataset,
        "blocks": head_blocks(k, v),
        "weights": weights,
    }
    module: nn.Module
    if k.family == "linear_classifier":
        module = LinearClassifierHead(sd["weight"], sd["bias"])
        meta.update(
            norm=True,
            n_last_blocks=k.layers,
            num_classes=int(sd["weight"].shape[0]),
            class_names=class_names(hw.dataset),
        )
    elif k.family == "depth_linear":
        lo, hi = DEPTH_RANGES[hw.dataset]
        lo = lo if min_depth is None else float(min_depth)
        hi = hi if max_depth is None else float(max_depth)
        if not 0.0 <= lo < hi:
            raise HeadError(f"depth range [{lo}, {hi}] is empty; need 0 <= min_depth < max_depth")
        module = DepthLinearHead(
            sd["decode_head.conv_depth.weight"], sd["decode_head.conv_depth.bias"], lo, hi, k.layers
        )
        meta.update(
            norm=False,
            use_cls_token=True,
            upsample=DEPTH_UPSAMPLE,
            bins=DEPTH_BINS,
            bins_strategy="linear",
            score_offset=DEPTH_SCORE_OFFSET,
            min_depth=lo,
            max_depth=hi,
        )
    else:
        w, b = fold_batch_norm(sd)
        module = SegmentationLinearHead(w, b)
        meta.update(
            norm=True,
            num_classes=int(w.shape[0]),
            class_names=class_names(hw.dataset),
            palette=palette(hw.dataset),
            batch_norm_folded=True,
            bn_eps=BN_EPS,
        )
    return module.eval(), meta


def export_head(
    hw: HeadWeights,
    output: Path,
    min_depth: Optional[float] = None,
    max_depth: Optional[float] = None,
) -> Dict[str, Any]:
    """Write the TorchScript head file; returns its head.json."""
    module, meta = build_head(hw, min_depth, max_depth)
    scripted = torch.jit.script(module)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".partial")
    scripted.save(str(tmp), _extra_files={HEAD_FILE: json.dumps(meta, indent=1)})
    tmp.replace(output)
    return meta


def read_head_metadata(path: Path) -> Dict[str, Any]:
    extra = {HEAD_FILE: ""}
    torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    if not extra[HEAD_FILE]:
        raise HeadError(f"{path}: not a dinov2 head file (no {HEAD_FILE} inside)")
    return json.loads(extra[HEAD_FILE])
