"""The images a quantization is calibrated and checked on, read as the model's input tensors.

Two disjoint sets, split by source image: the *calibration* set ONNX Runtime measures activation
ranges on, and the *held-out* set the accuracy report also compares on, so the report says how
the quantized model does on images its ranges were not fitted to. The default sets are natural
photographs shipped inside scikit-image's wheel (nothing is downloaded); a user's folder is
split the same way, a fifth of it held out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgecompile.errors import EdgecompileError, first_line

if TYPE_CHECKING:
    from PIL import Image

#: File endings read from a calibration folder (case-insensitive).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")

#: scikit-image's photographs, split in two by scene. Colour and grey photos, near and far,
#: textures and objects in both, so neither set's activation ranges are narrower than the
#: other's. ``motorcycle_right`` is left out: it is ``motorcycle_left`` shot a few cm aside,
#: and would put one scene in both sets.
DEFAULT_CALIBRATION = (
    "astronaut.png",
    "coffee.png",
    "rocket.jpg",
    "motorcycle_left.png",
    "hubble_deep_field.jpg",
    "camera.png",
    "brick.png",
    "grass.png",
)
DEFAULT_HELD_OUT = (
    "chelsea.png",
    "retina.jpg",
    "ihc.png",
    "moon.png",
    "coins.png",
    "gravel.png",
    "clock_motion.png",
)

#: Where the default images come from, as an accuracy report says (``images_from``).
DEFAULT_SOURCE = "scikit-image's sample photographs"

#: A user's folder holds out every HELD_OUT_EVERY-th image (by sorted name).
HELD_OUT_EVERY = 5

#: (mean, std) per RGB channel, on pixels scaled to [0, 1].
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
INCEPTION = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
#: The zoo families whose reference training normalized otherwise than torchvision's ImageNet
#: models (Keras' Xception scales pixels to [-1, 1]); every other family, and an ONNX file
#: brought by the user, gets ImageNet's mean and std.
FAMILY_NORMALIZATION = {"xception": INCEPTION}
#: torchvision's evaluation crop: resize to size / 0.875, then crop the centre.
CROP_FRACTION = 0.875


@dataclass(frozen=True)
class ImageSets:
    """The calibration and held-out images (never one file in both) and where they came from."""

    calibration: tuple[Path, ...]
    held_out: tuple[Path, ...]
    source: str


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes one NCHW sample: size, and per-channel mean and std."""

    height: int
    width: int
    mean: tuple[float, float, float] = IMAGENET[0]
    std: tuple[float, float, float] = IMAGENET[1]

    @classmethod
    def for_family(cls, family: str | None, height: int, width: int) -> Preprocessing:
        mean, std = FAMILY_NORMALIZATION.get(family or "", IMAGENET)
        return cls(height, width, mean, std)


def default_image_sets() -> ImageSets:
    """scikit-image's photographs: :data:`DEFAULT_CALIBRATION` and :data:`DEFAULT_HELD_OUT`."""
    try:
        import skimage
    except ImportError:
        raise EdgecompileError(
            "the default calibration images come with scikit-image, which is not installed",
            "pip install scikit-image, or pass --calibration DIR with your own JPEG/PNG images",
        ) from None
    folder = Path(skimage.__file__).parent / "data"
    calibration = tuple(folder / name for name in DEFAULT_CALIBRATION)
    held_out = tuple(folder / name for name in DEFAULT_HELD_OUT)
    missing = [path.name for path in (*calibration, *held_out) if not path.is_file()]
    if missing:
        raise EdgecompileError(
            f"scikit-image in {folder.parent} lacks its sample photographs ({', '.join(missing)})",
            "reinstall it (pip install --force-reinstall scikit-image), or pass --calibration DIR",
        )
    return ImageSets(calibration, held_out, DEFAULT_SOURCE)


def folder_image_sets(folder: str | Path) -> ImageSets:
    """The JPEG/PNG files directly in ``folder``, every :data:`HELD_OUT_EVERY`-th (by name)
    held out; with 2–4 images the last one is. A single image calibrates alone and the held-out
    set is the default one."""
    folder = Path(folder)
    if not folder.is_dir():
        raise EdgecompileError(
            f"--calibration {str(folder)!r} is not a folder",
            "give a folder of JPEG/PNG images",
        )
    images = sorted(
        path
        for path in folder.iterdir()
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()
    )
    if not images:
        raise EdgecompileError(
            f"no JPEG or PNG images in --calibration folder {str(folder)!r}",
            "put .jpg/.jpeg/.png files in it, or drop --calibration for the default photographs",
        )
    source = f"{len(images)} images in {folder}"
    if len(images) == 1:
        return ImageSets(tuple(images), default_image_sets().held_out, source)
    if len(images) < HELD_OUT_EVERY:
        return ImageSets(tuple(images[:-1]), (images[-1],), source)
    held = set(images[HELD_OUT_EVERY - 1 :: HELD_OUT_EVERY])
    calibration = tuple(path for path in images if path not in held)
    return ImageSets(calibration, tuple(sorted(held)), source)


def check_images(paths: Sequence[Path]) -> None:
    """Every image decodes: checked before the model is exported and calibrated (seconds to
    minutes), not after; the images are decoded again, one at a time, when they are used."""
    for path in paths:
        _open_rgb(path)


def _open_rgb(path: Path) -> Image.Image:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as opened:
            return opened.convert("RGB")  # grey, palette and RGBA photos alike
    except (
        OSError,
        UnidentifiedImageError,
        ValueError,
        SyntaxError,
        Image.DecompressionBombError,
    ) as exc:
        raise EdgecompileError(
            f"cannot decode calibration image {str(path)!r}: {first_line(exc)}",
            "remove it from the folder or re-save it as JPEG/PNG",
        ) from None


def load_image(path: Path, preprocessing: Preprocessing) -> np.ndarray:
    """One image as a float32 CHW array: RGB, resized so the centre crop keeps
    :data:`CROP_FRACTION` of it (torchvision's evaluation transform), normalized."""
    from PIL import Image

    height, width = preprocessing.height, preprocessing.width
    image = _open_rgb(path)
    scale = max(height / image.height, width / image.width) / CROP_FRACTION
    size = (max(width, round(image.width * scale)), max(height, round(image.height * scale)))
    image = image.resize(size, Image.Resampling.BILINEAR)
    left, top = (size[0] - width) // 2, (size[1] - height) // 2
    image = image.crop((left, top, left + width, top + height))
    pixels = np.asarray(image, dtype=np.float32) / 255.0
    pixels = (pixels - np.float32(preprocessing.mean)) / np.float32(preprocessing.std)
    return np.ascontiguousarray(pixels.transpose(2, 0, 1), dtype=np.float32)


def load_batches(
    paths: Sequence[Path], preprocessing: Preprocessing, batch: int
) -> list[np.ndarray]:
    """The images as NCHW batches of ``batch`` (a model's static batch size); the last batch
    is filled up with the first images again, so every image is in exactly one batch's
    leading samples and no batch is short."""
    samples = [load_image(path, preprocessing) for path in paths]
    count = -(-len(samples) // batch)
    padded = [samples[index % len(samples)] for index in range(count * batch)]
    return [np.stack(padded[start : start + batch]) for start in range(0, len(padded), batch)]
