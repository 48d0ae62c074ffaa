"""Video frames: uniform sampling with PyAV, resizing and normalisation in torch (no torchvision)."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F


class ClipError(ValueError):
    """A clip cannot be read or holds no frames; the message names the file."""


def sample_indices(total: int, count: int) -> list[int]:
    """`count` indices spread uniformly over `total` frames (centre of each segment); repeats
    frames when the clip is shorter than `count`."""
    if total <= 0:
        return []
    return [min(total - 1, int((i + 0.5) * total / count)) for i in range(count)]


def decode_frames(path: str | Path, count: int) -> torch.Tensor:
    """Decodes `count` uniformly sampled RGB frames of the clip: uint8 tensor (count, 3, H, W)."""
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ClipError(f"{Path(path).name}: no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    except ClipError:
        raise
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise ClipError(f"{Path(path).name}: cannot be decoded ({exc.__class__.__name__}: {exc})") from None
    if not frames:
        raise ClipError(f"{Path(path).name}: no frames could be decoded")
    picked = np.stack([frames[i] for i in sample_indices(len(frames), count)])
    return torch.from_numpy(picked).permute(0, 3, 1, 2).contiguous()


def resize_and_normalise(frames: torch.Tensor, size: int, mean: tuple[float, ...],
                         std: tuple[float, ...]) -> torch.Tensor:
    """uint8 (T, 3, H, W) -> float32 (T, 3, size, size): bilinear resize, scale to [0, 1],
    then `(x - mean) / std` per channel."""
    x = frames.float().div_(255.0)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    m = torch.tensor(mean, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - m) / s
