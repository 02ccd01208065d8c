"""One image file outside any split, as a dataset's evaluation reads it: what `predict` feeds a run's model.

The dataset's conventions (`DatasetInfo.per_image_minmax`) decide how: 8- and 16-bit images and `.npy` arrays in
[0, 1] are decoded as the streaming loader decodes them; a dataset whose values have no fixed range reads its `.npy`
arrays as they are and scales each image to [0, 1] on its own, as its builder does.
"""

from __future__ import annotations

from pathlib import Path

import torch

from visionbench.data.base import DatasetInfo
from visionbench.errors import UserError


def read_image_file(path: Path, info: DatasetInfo) -> torch.Tensor:
    """One image file as the dataset's evaluation reads it, before resizing: (C, H, W), decode_image's uint8 grey
    levels or float in [0, 1]. A dataset scaled per image reads `.npy` arrays of any range as they are (float32,
    (1, H, W)), its release files `[image, label]` included.

    Raises:
        UserError: naming the file (missing, not a regular file, undecodable).
    """
    if not path.exists():
        raise UserError(f"{path}: no such image file")
    if info.per_image_minmax and path.suffix == ".npy":
        from visionbench.data.deeplense import load_release_file

        image, _ = load_release_file(path)  # its errors name the file; a FIFO or a device is refused there
        return torch.from_numpy(image)[None]
    from visionbench.data.stream import decode_image

    return decode_image(str(path), grayscale=info.input_size[0] == 1)


def scale_image(x: torch.Tensor, info: DatasetInfo) -> torch.Tensor:
    """A (C, H, W) image at its input size, min-max scaled to [0, 1] when the dataset scales each image on its own
    (so that the model sees exactly the range of its training images); otherwise unchanged."""
    if not info.per_image_minmax:
        return x
    from visionbench.data.deeplense import minmax

    return minmax(x[None].float().numpy())[0]
