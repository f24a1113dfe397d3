"""Pretrain the tiny ViT of the built-in digits benchmark (``vit_tiny_shapes``) on procedurally drawn shapes.

``python -m benchmark.models.pretrain_shapes`` trains :func:`benchmark.models.backbones.tiny_vit` (32 px, patch 4,
embed 64,
depth 4, 4 heads) from scratch on synthetic 32 px RGB images of 37 shape classes that share nothing with
digits: lines at four angles, parallel lines, plus and diagonal crosses, asterisks, circles, discs, rings,
squares, diamonds, filled squares, triangles pointing up/down, filled triangles, hexagons, ellipses, arcs and
chevrons opening in four directions, zigzags, waves, dot grids, scattered dots, stripes, checkerboards and
hash grids. Orientation is part of the class where it matters (a "6" is a rotated "9", so features must not
be rotation invariant). Like sklearn's upsampled digits, they are bright strokes on a dark background, at
random position, size and thickness, sent through 8-16 px and upsampled. Images are drawn from signed
distance fields, vectorised over each class's samples; fresh images every step.

Two throw-away linear heads (shape class; 4 x 4 layout, see :func:`pretrain`), AdamW, one CPU thread so the
numbers do not depend on the machine's core count; 1,600 steps of 32 images, about 2-3 minutes. The headless
state dict is saved to ``benchmark/models/weights/vit_tiny_shapes.safetensors`` (loaded by
``build_backbone("vit_tiny_shapes")``), and the digits nearest-class-mean accuracy (SimpleCIL's classifier:
cosine to class-mean features, all 10 classes, test split) is printed for it and for a random-init tiny ViT.
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.models.backbones import DIGITS_WEIGHTS, tiny_vit
from benchmark.models.classifiers import class_means

SIZE = 32
PIXEL = 2.0 / SIZE  # one pixel in the [-1, 1] coordinates the shapes are drawn in
SEED = 0
LAYOUT_SIZE = 4  # the layout head predicts the image's 4 x 4 average-pooled brightness (where the strokes are)
LAYOUT_WEIGHT = 100.0


# -- signed distance fields (points: (B, H, W, 2); per-sample parameters: (B,) or (B, 2)) ----------------------
def _segment(p: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Distance to the segment a-b."""
    a, b = a[:, None, None], b[:, None, None]
    direction = b - a
    t = (((p - a) * direction).sum(-1) / (direction * direction).sum(-1).clamp_min(1e-6)).clamp(0, 1)
    return (p - a - t[..., None] * direction).norm(dim=-1)


def _stroke(distance: torch.Tensor, width: torch.Tensor) -> torch.Tensor:
    """Intensity of a stroke of half-width ``width`` along the zero set of ``distance`` (anti-aliased)."""
    return ((width[:, None, None] - distance.abs()) / PIXEL + 0.5).clamp(0, 1)


def _fill(distance: torch.Tensor) -> torch.Tensor:
    """Intensity of the inside of a signed distance field."""
    return (-distance / PIXEL + 0.5).clamp(0, 1)


class Sampler:
    """Random per-sample parameters and the local frame (shifted, scaled, rotated) of ``count`` images."""

    def __init__(self, count: int, generator: torch.Generator) -> None:
        self.count, self.generator = count, generator
        axis = torch.linspace(-1 + PIXEL / 2, 1 - PIXEL / 2, SIZE)
        self.grid = torch.stack(torch.meshgrid(axis, axis, indexing="xy"), dim=-1).expand(count, SIZE, SIZE, 2)

    def uniform(self, low: float, high: float, *shape: int) -> torch.Tensor:
        """Uniform draws of shape (count, *shape)."""
        return low + (high - low) * torch.rand(self.count, *shape, generator=self.generator)

    def width(self) -> torch.Tensor:
        """Stroke half-widths (about 1 to 3 pixels)."""
        return self.uniform(0.06, 0.2)

    def frame(self, degrees: float | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Coordinates around a random centre, rotated by ``degrees`` +- 11 (any angle when None); sizes."""
        centre = self.uniform(-0.3, 0.3, 2)
        size = self.uniform(0.4, 0.9)
        angle = (self.uniform(0, 2 * math.pi) if degrees is None
                 else math.radians(degrees) + self.uniform(-0.2, 0.2))
        cos, sin = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
        x, y = (self.grid - centre[:, None, None]).unbind(-1)
        return torch.stack([cos * x + sin * y, cos * y - sin * x], dim=-1), size


Distance = Callable[[Sampler, torch.Tensor, torch.Tensor], torch.Tensor]  # (sampler, local frame, size)
Shape = Callable[[Sampler], torch.Tensor]  # sampler -> intensities (B, H, W)


def stroked(distance: Distance, degrees: float | None, width: float = 1.0) -> Shape:
    """A shape drawn as a stroke along the zero set of ``distance``, at orientation ``degrees``."""
    def draw(s: Sampler) -> torch.Tensor:
        local, size = s.frame(degrees)
        return _stroke(distance(s, local, size), s.width() * width)
    return draw


def filled(distance: Distance, degrees: float | None) -> Shape:
    """A shape drawn as the filled inside of ``distance``."""
    def draw(s: Sampler) -> torch.Tensor:
        local, size = s.frame(degrees)
        return _fill(distance(s, local, size))
    return draw


def polyline(*vertices: tuple[float, float]) -> Distance:
    """Segments through ``vertices`` (unit coordinates of the local frame, scaled by the size)."""
    def distance(s: Sampler, local: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
        points = [torch.tensor(vertex, dtype=torch.float32) * size[:, None] for vertex in vertices]
        return torch.stack([_segment(local, a, b) for a, b in zip(points[:-1], points[1:])]).amin(0)
    return distance


def union(*parts: Distance) -> Distance:
    """The union of several distance fields."""
    return lambda s, local, size: torch.stack([part(s, local, size) for part in parts]).amin(0)


def parallel(s: Sampler, local: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """Two parallel segments (the frame folded about the x axis)."""
    gap = (s.uniform(0.25, 0.5) * size)[:, None, None]
    folded = torch.stack([local[..., 0], local[..., 1].abs() - gap], dim=-1)
    return polyline((-1, 0), (1, 0))(s, folded, size)


def circle(scale: float) -> Distance:
    """A circle of radius ``scale * size``."""
    return lambda s, local, size: local.norm(dim=-1) - scale * size[:, None, None]


def rings(s: Sampler, local: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """Two concentric circles."""
    radius = local.norm(dim=-1)
    return torch.minimum((radius - size[:, None, None]).abs(), (radius - 0.45 * size[:, None, None]).abs())


def box(scale: float) -> Distance:
    """A square of half-side ``scale * size``."""
    def distance(s: Sampler, local: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
        outside = local.abs() - scale * size[:, None, None, None]
        return outside.clamp_min(0).norm(dim=-1) + outside.amax(-1).clamp_max(0)
    return distance


def polygon(sides: int) -> Distance:
    """A regular polygon (signed distance exact inside, approximate outside)."""
    angles = torch.arange(sides, dtype=torch.float32) * (2 * math.pi / sides)
    normals = torch.stack([torch.cos(angles), torch.sin(angles)], dim=-1)
    return lambda s, local, size: ((local @ normals.T).amax(-1)
                                   - (size * math.cos(math.pi / sides))[:, None, None])


def ellipse(s: Sampler, local: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """An ellipse elongated along x (axis ratio 0.35-0.6)."""
    ratio = s.uniform(0.35, 0.6)[:, None, None]
    squashed = torch.stack([local[..., 0], local[..., 1] / ratio], dim=-1)
    return (squashed.norm(dim=-1) - size[:, None, None]) * ratio.sqrt()


def arc(s: Sampler, local: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """An arc of 125-290 degrees of a circle, centred on the +x direction (open towards -x)."""
    span = s.uniform(0.35 * math.pi, 0.8 * math.pi)[:, None, None]
    on_circle = (local.norm(dim=-1) - size[:, None, None]).abs()
    end = torch.stack([torch.cos(span), torch.sin(span)], dim=-1) * size[:, None, None, None]
    to_end = torch.minimum((local - end).norm(dim=-1), (local - end * torch.tensor([1.0, -1.0])).norm(dim=-1))
    return torch.where(torch.atan2(local[..., 1], local[..., 0]).abs() <= span, on_circle, to_end)


def wave(s: Sampler, local: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """A sine curve along x, clipped to the shape's extent."""
    frequency = s.uniform(5.0, 10.0)[:, None, None]
    extent = size[:, None, None]
    curve = (local[..., 1] - 0.25 * extent * torch.sin(frequency * local[..., 0] / extent)).abs()
    return curve.maximum((local[..., 0].abs() - extent).clamp_min(0))


def dot_grid(s: Sampler, local: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """A 3 x 3 grid of dots."""
    spacing = (0.5 * size)[:, None, None]
    cell = local / spacing[..., None]
    return (cell - cell.round().clamp(-1, 1)).norm(dim=-1) * spacing - 0.8 * s.width()[:, None, None]


def stripes(s: Sampler, local: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """Parallel lines across the whole image (a texture)."""
    period = s.uniform(0.3, 0.6)[:, None, None]
    return (torch.remainder(local[..., 1] / period, 1.0) - 0.5) * period


def hash_grid(s: Sampler, local: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """Two pairs of crossing parallel lines."""
    gap = (0.35 * size)[:, None, None]
    limit = (local.abs() - size[:, None, None, None]).clamp_min(0).amax(-1)
    lines = torch.minimum((local[..., 0].abs() - gap).abs(), (local[..., 1].abs() - gap).abs())
    return lines.maximum(limit)


def checkerboard(s: Sampler) -> torch.Tensor:
    """A checkerboard texture of random period and angle."""
    local, _ = s.frame(None)
    period = s.uniform(0.35, 0.7)[:, None, None, None]
    return torch.remainder(torch.floor(local / period).sum(-1), 2.0)


def scattered_dots(s: Sampler) -> torch.Tensor:
    """4 to 7 dots at random places."""
    centres = s.uniform(-0.8, 0.8, 7, 2)
    present = torch.arange(7) < torch.randint(4, 8, (s.count, 1), generator=s.generator)
    dots = _fill((s.grid[:, None] - centres[:, :, None, None]).norm(dim=-1) - 0.9 * s.width()[:, None, None, None])
    return (dots * present[:, :, None, None]).amax(1)


_LINE = polyline((-1, 0), (1, 0))
_CHEVRON = polyline((-0.7, -0.9), (0.7, 0), (-0.7, 0.9))
SHAPES: dict[str, Shape] = {
    **{f"line_{angle}": stroked(_LINE, angle) for angle in (0, 45, 90, 135)},
    **{f"parallel_lines_{angle}": stroked(parallel, angle, 0.8) for angle in (0, 90)},
    "plus": stroked(union(_LINE, polyline((0, -1), (0, 1))), 0),
    "diagonal_cross": stroked(union(_LINE, polyline((0, -1), (0, 1))), 45),
    "asterisk": stroked(union(_LINE, polyline((-0.5, -0.87), (0.5, 0.87)), polyline((-0.5, 0.87), (0.5, -0.87))),
                        None, 0.8),
    "circle": stroked(circle(1.0), None),
    "disc": filled(circle(0.8), None),
    "rings": stroked(rings, None, 0.6),
    "square": stroked(box(0.75), 0),
    "diamond": stroked(box(0.75), 45),
    "filled_square": filled(box(0.6), None),
    **{f"triangle_{angle}": stroked(polygon(3), angle) for angle in (90, 270)},
    "filled_triangle": filled(polygon(3), None),
    "hexagon": stroked(polygon(6), None),
    **{f"ellipse_{angle}": stroked(ellipse, angle) for angle in (0, 90)},
    **{f"arc_{angle}": stroked(arc, angle) for angle in (0, 90, 180, 270)},
    **{f"chevron_{angle}": stroked(_CHEVRON, angle) for angle in (0, 90, 180, 270)},
    "zigzag": stroked(polyline((-1, -0.4), (-0.33, 0.4), (0.33, -0.4), (1, 0.4)), 0),
    "wave": stroked(wave, 0, 0.7),
    "dot_grid": filled(dot_grid, 0),
    "scattered_dots": scattered_dots,
    **{f"stripes_{angle}": stroked(stripes, angle, 0.6) for angle in (0, 90)},
    "checkerboard": checkerboard,
    "hash_grid": stroked(hash_grid, 0, 0.7),
}
_SHAPE_LIST = list(SHAPES.values())


def _appearance(shapes: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """(B, H, W) intensities -> (B, 3, H, W) images like the digits': bright grey-ish strokes on a dark
    background, sent through a low resolution (8 px for most, 12 or 16 px for the others) and upsampled
    bilinearly, as sklearn's 8x8 digits are, plus a little noise."""
    count = len(shapes)
    rand = lambda *shape: torch.rand(count, *shape, generator=generator)  # noqa: E731
    colour = (0.7 + 0.3 * rand(1, 1, 1)) * (0.9 + 0.1 * rand(3, 1, 1))
    background = 0.08 * rand(1, 1, 1)
    images = background + (colour - background) * shapes[:, None]
    resolution = torch.tensor([8, 8, 12, 16])[torch.randint(4, (count,), generator=generator)]
    for low in (8, 12, 16):
        pick = resolution == low
        small = F.interpolate(images[pick], size=(low, low), mode="area")
        images[pick] = F.interpolate(small, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    noise = 0.02 * rand(1, 1, 1) * torch.randn(images.shape, generator=generator)
    return (images + noise).clamp(0, 1)


def draw_batch(labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Images (B, 3, 32, 32) in [0, 1] of the shape classes ``labels``."""
    shapes = torch.empty(len(labels), SIZE, SIZE)
    for label in labels.unique().tolist():  # one vectorised draw per class present
        rows = labels == label
        shapes[rows] = _SHAPE_LIST[label](Sampler(int(rows.sum()), generator))
    return _appearance(shapes, generator)


# -- training and evaluation --------------------------------------------------------------------------------
def pretrain(steps: int, batch_size: int, lr: float, seed: int = SEED, log: Callable[[str], None] = print
             ) -> nn.Module:
    """Train a tiny ViT on freshly drawn shape batches (AdamW, linear warm-up then cosine decay).

    Two throw-away linear heads read the feature (the CLS token after the final LayerNorm): one classifies
    the shape, one regresses the image's 4 x 4 pooled brightness. Shape classes alone teach a from-scratch
    ViT to ignore where strokes are within its short budget; the layout target makes the feature carry the
    coarse spatial layout, which is what tells one stroke figure (a digit) from another.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):  # seeded initialisation without touching the global RNG
        torch.manual_seed(seed)
        backbone = tiny_vit()
        shape_head = nn.Linear(backbone.embed_dim, len(SHAPES))
        layout_head = nn.Linear(backbone.embed_dim, LAYOUT_SIZE * LAYOUT_SIZE)
    parameters = [*backbone.parameters(), *shape_head.parameters(), *layout_head.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=0.05)
    warmup = max(steps // 20, 1)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min((step + 1) / warmup, 0.5 * (1 + math.cos(math.pi * step / steps))))
    backbone.train()
    began = time.perf_counter()
    for step in range(steps):
        labels = torch.randint(len(SHAPES), (batch_size,), generator=generator)
        images = draw_batch(labels, generator)
        layout = F.adaptive_avg_pool2d(images.mean(1, keepdim=True), LAYOUT_SIZE).flatten(1)
        features = backbone(images)
        logits = shape_head(features)
        shape_loss = F.cross_entropy(logits, labels)
        layout_loss = F.mse_loss(layout_head(features), layout)
        optimizer.zero_grad(set_to_none=True)
        (shape_loss + LAYOUT_WEIGHT * layout_loss).backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        schedule.step()
        if (step + 1) % max(steps // 10, 1) == 0:
            accuracy = 100.0 * float((logits.argmax(1) == labels).float().mean())
            log(f"step {step + 1}/{steps}: shape loss {shape_loss.item():.3f} (batch accuracy "
                f"{accuracy:.1f}%), layout loss {layout_loss.item():.4f}, {time.perf_counter() - began:.0f}s")
    return backbone.eval()


@torch.inference_mode()
def digits_ncm_accuracy(backbone: nn.Module) -> float:
    """Top-1 % on the digits test split of cosine nearest-class-mean over all 10 classes (SimpleCIL)."""
    from benchmark.data.datasets.digits import DIGITS

    raw = DIGITS.load(None)
    as_tensor = lambda images: torch.as_tensor(images).permute(0, 3, 1, 2).float() / 255  # noqa: E731
    train_features = backbone(as_tensor(raw.train.images))
    means = class_means(train_features, torch.as_tensor(raw.train.targets), list(range(10)))
    scores = F.normalize(backbone(as_tensor(raw.test.images)), dim=-1) @ F.normalize(means, dim=-1).T
    return 100.0 * float((scores.argmax(1) == torch.as_tensor(raw.test.targets)).float().mean())


def save_backbone(backbone: nn.Module, path: Path) -> None:
    """Save the headless state dict as safetensors."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({key: value.contiguous() for key, value in backbone.state_dict().items()}, str(path))


def main(argv: list[str] | None = None) -> None:
    """Command line: pretrain, save the weights, report digits NCM accuracy (pretrained vs random init)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1600)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--output", type=Path, default=DIGITS_WEIGHTS)
    args = parser.parse_args(argv)
    # One thread: the same numbers on any machine (and the drawing's many small ops run faster).
    torch.set_num_threads(1)
    began = time.perf_counter()
    backbone = pretrain(args.steps, args.batch_size, args.lr)
    save_backbone(backbone, args.output)
    print(f"saved {args.output} after {time.perf_counter() - began:.0f}s")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        random_init = tiny_vit().eval()
    print(f"digits nearest-class-mean accuracy: pretrained {digits_ncm_accuracy(backbone):.2f}%, "
          f"random init {digits_ncm_accuracy(random_init):.2f}%")


if __name__ == "__main__":
    main()
