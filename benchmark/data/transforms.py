"""Image transforms of the streams: PILOT's named profiles, the digits profile, and the normalisation switch.

Profiles (data protocol §3), written for ``image_size`` = 224 and scaled for other sizes (the resize side is
``int(image_size * 256 / 224)``, so 224 gives exactly PILOT's numbers):

- ``default``: train RandomResizedCrop(size, scale (0.05, 1), ratio (3/4, 4/3)) -> horizontal flip -> ToTensor;
  test Resize(256, bicubic) -> CenterCrop(224) -> ToTensor.
- ``coda`` (CODA-P on CIFAR-100 and ImageNet-R only): train RandomResizedCrop(size) with torchvision's default
  scale -> flip -> ToTensor; test Resize(224) -> ToTensor on CIFAR-100, Resize(256) -> CenterCrop(224) ->
  ToTensor (bilinear) on ImageNet-R. CODA-P's ``Normalize(0, 1)`` is the identity and is left out.
  Datasets without a CODA variant (ImageNet-A, VTAB) use ``default`` whatever is requested.

Nothing is normalised by default (pixels stay in [0, 1], as in PILOT); ``normalize`` appends
``Normalize`` with mean = std = 0.5 (``half``) or the ImageNet statistics (``imagenet``).

torchvision is imported inside the builders so that importing this module stays cheap.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

from benchmark.errors import ClbenchError

PROFILES = ("default", "coda")
NORMALIZATIONS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]] | None] = {
    "none": None,
    "half": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
CodaTest = Literal["resize", "resize_crop"]


@dataclass(frozen=True)
class TransformPair:
    """The train and test transforms of a stream, and the name of the profile actually applied."""

    train: Callable
    test: Callable
    profile: str


def check_options(profile: str, normalize: str) -> None:
    """A :class:`ClbenchError` for an unknown profile or normalisation, listing the valid ones."""
    if profile not in PROFILES:
        raise ClbenchError(f"unknown transform profile '{profile}'; valid: {', '.join(PROFILES)}")
    if normalize not in NORMALIZATIONS:
        raise ClbenchError(f"unknown normalize '{normalize}'; valid: {', '.join(NORMALIZATIONS)}")


def resize_side(image_size: int) -> int:
    """Shorter side before the centre crop: 256 for 224, scaled proportionally for other sizes."""
    return int(image_size * 256 / 224)


def _finish(steps: list, normalize: str) -> Callable:
    from torchvision import transforms as T

    steps = steps + [T.ToTensor()]
    statistics = NORMALIZATIONS[normalize]
    if statistics is not None:
        steps.append(T.Normalize(*statistics))
    return T.Compose(steps)


def pilot_transforms(profile: str, image_size: int, normalize: str, coda_test: CodaTest | None = None
                     ) -> TransformPair:
    """PILOT's transforms; ``coda_test`` is the dataset's CODA-P test pipeline (None: no CODA variant)."""
    from torchvision import transforms as T
    from torchvision.transforms import InterpolationMode

    check_options(profile, normalize)
    if profile == "coda" and coda_test is not None:
        train = [T.RandomResizedCrop(image_size), T.RandomHorizontalFlip()]
        if coda_test == "resize":
            test = [T.Resize(image_size)]
        else:
            test = [T.Resize(resize_side(image_size)), T.CenterCrop(image_size)]
        return TransformPair(_finish(train, normalize), _finish(test, normalize), "coda")
    train = [T.RandomResizedCrop(image_size, scale=(0.05, 1.0), ratio=(3.0 / 4.0, 4.0 / 3.0)),
             T.RandomHorizontalFlip()]
    test = [T.Resize(resize_side(image_size), interpolation=InterpolationMode.BICUBIC), T.CenterCrop(image_size)]
    return TransformPair(_finish(train, normalize), _finish(test, normalize), "default")


def digits_transforms(profile: str, image_size: int, normalize: str) -> TransformPair:
    """The built-in digits benchmark's own transforms, for every profile (recorded as ``digits``).

    Train: Resize(size) -> RandomAffine(rotation +-10 deg, shift +-10 %, scale 0.9-1.1) -> ToTensor. Test:
    Resize(size) -> ToTensor. No horizontal flip (a mirrored digit is another glyph) and no large crops (an
    8x8 digit has no detail to spare).
    """
    from torchvision import transforms as T

    check_options(profile, normalize)
    train = [T.Resize(image_size), T.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1))]
    test = [T.Resize(image_size)]
    return TransformPair(_finish(train, normalize), _finish(test, normalize), "digits")
