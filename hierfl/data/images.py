"""The image-folder loader: one subfolder per class, each image one example.

`path/<class name>/<any name>.png` (or .jpg, .jpeg, .bmp): every image is converted to the
loader's mode ("L" grey, "RGB"), resized to `size` = (height, width) with a bilinear filter
if it differs, and scaled to [0, 1]; x is float32 `[N, height, width, channels]`, y the
class's index in the task's `class_names`. Examples come class by class in `class_names`
order, each class's files sorted by name. Names starting with "." are skipped; other files
that are not images by their extension are ignored.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from hierfl.data.schema import Examples, Schema, check_shape, classes_hint, reason, require_path
from hierfl.errors import DataError

CHANNELS = {"L": 1, "RGB": 3}


@dataclasses.dataclass(frozen=True)
class ImageFolderLoader:
    """Reads a device's image folder (see `image_folder`)."""

    size: tuple[int, int]
    mode: str = "L"
    extensions: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (*self.size, CHANNELS[self.mode])

    def read(self, path: Path, schema: Schema) -> Examples:
        name = str(path)
        require_path(path, folder=True)
        if not schema.class_names:
            raise DataError(
                f"{name}: an image folder holds classes, but the task predicts targets "
                f"({', '.join(schema.target_names)})"
            )
        check_shape(name, self.input_shape, schema)
        files = self._files(name, path, schema.class_names)
        if not files:
            raise DataError(
                f"{name}: no images (one folder per class: {', '.join(schema.class_names)})"
            )
        x = np.empty((len(files), *self.input_shape), np.float32)
        for i, (file, _) in enumerate(files):
            x[i] = self._pixels(file)
        x /= 255
        return Examples(x, np.array([label for _, label in files], np.int32))

    def _files(self, name: str, path: Path, class_names: tuple[str, ...]) -> list[tuple[Path, int]]:
        """Every image with its class index; DataError for a folder that is not a class, or
        an image outside the class folders."""
        for entry in sorted(path.iterdir()):
            if entry.name.startswith("."):
                continue
            if entry.is_dir() and entry.name not in class_names:
                raise DataError(
                    f"{name}: folder {entry.name!r} is not a class ({classes_hint(class_names)})"
                )
            if entry.is_file() and self._is_image(entry):
                raise DataError(
                    f"{name}: image {entry.name!r} is not in a class folder "
                    f"(one folder per class: {', '.join(class_names)})"
                )
        files = []
        for label, class_name in enumerate(class_names):
            folder = path / class_name
            if folder.is_dir():
                images = sorted(f for f in folder.iterdir() if f.is_file() and self._is_image(f))
                files += [(f, label) for f in images if not f.name.startswith(".")]
        return files

    def _is_image(self, file: Path) -> bool:
        return file.suffix.lower() in self.extensions

    def _pixels(self, file: Path) -> np.ndarray:
        """One image as uint8 `[height, width, channels]`."""
        height, width = self.size
        try:
            with Image.open(file) as image:
                image = image.convert(self.mode)
                if image.size != (width, height):
                    image = image.resize((width, height), Image.Resampling.BILINEAR)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
            raise DataError(f"{file}: not an image: {reason(error)}") from None
        return np.asarray(image).reshape(self.input_shape)


def image_folder(
    *,
    size: tuple[int, int],
    mode: str = "L",
    extensions: Sequence[str] = (".png", ".jpg", ".jpeg", ".bmp"),
) -> ImageFolderLoader:
    """A loader of one folder of images, a subfolder per class (the task's `class_names`).

    `size` is (height, width); `mode` "L" (grey, 1 channel) or "RGB" (3); `extensions` the
    file endings read as images (case does not matter).
    """
    size = tuple(size)
    if len(size) != 2 or not all(isinstance(d, int) and d > 0 for d in size):
        raise ValueError(f"size is (height, width) in pixels, got {size}")
    if mode not in CHANNELS:
        raise ValueError(f'mode is "L" (grey) or "RGB", got {mode!r}')
    if isinstance(extensions, str) or not extensions:
        raise ValueError(
            f'extensions is a list of file endings such as [".png"], got {extensions!r}'
        )
    extensions = tuple(e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions)
    return ImageFolderLoader(size, mode, extensions)
