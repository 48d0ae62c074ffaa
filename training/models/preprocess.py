"""Preprocessing read from a checkpoint's own processor config: the one place where sizes,
resampling, rescale factor, mean/std, VideoLLaMA 3's dynamic resolution (patch and merge sizes,
pixel budget) and its video token layout come from.

A model folder carries the files transformers' processors read: `preprocessor_config.json`
(image processor) and, for VideoLLaMA 3, `video_preprocessor_config.json` (video processor: the
one that processes clips). The published checkpoints' files are kept in `checkpoints/`;
`build-tiny` writes the same files for tiny models (`processor_files`). `read_preprocessing`
turns them into the engine's `Preprocessing`; the engine's own settings (frames, prompts) stay
in `preprocessing_config.json` beside them.

What each architecture does with a clip of T sampled frames (as transformers' processors do):

- IDEFICS (`IdeficsImageProcessor`): every frame resized to `image_size` x `image_size`
  (resample, default bicubic), rescaled, normalised; the prompt holds
  `<fake_token_around_image><image>` per frame and a closing `<fake_token_around_image>`.
- VideoLLaMA 3 (`VideoLlama3VideoProcessor`): every frame of the clip resized to one size that
  keeps the aspect ratio, is a multiple of `patch_size * merge_size` and holds between
  `min_pixels` and `max_pixels // T` pixels (`smart_resize`); patches are flattened in merge
  blocks; with `use_token_compression`, a merged token whose pixels barely change from the
  previous frame is dropped (`compression_mask`); the prompt is
  `Time {t:.1f}s:` + one `<|video_pad|>` per kept token of the frame, frames joined by `,`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
# the PIL module of transformers' VideoLLaMA 3 image processor: imports without torchvision
from transformers.models.video_llama_3.image_processing_pil_video_llama_3 import smart_resize

from training.models.base import Preprocessing

IMAGE_PROCESSOR_FILE = "preprocessor_config.json"
VIDEO_PROCESSOR_FILE = "video_preprocessor_config.json"
#: PIL's resample codes, as processor configs store them
BICUBIC = 3
RESCALE = 1 / 255
#: VideoLLaMA 3's token compression: a token is kept when its mean absolute pixel change from the
#: previous frame, x255, exceeds this (transformers' `_get_compression_mask` defaults)
COMPRESSION_THRESHOLD = 0.1
COMPRESSION_MIN_TOKENS = 1

VIDEO_TOKEN = "<|video_pad|>"
IMAGE_TOKEN = "<|image_pad|>"
IDEFICS_IMAGE_TOKEN = "<image>"
IDEFICS_FAKE_TOKEN = "<fake_token_around_image>"


class ProcessorConfigError(ValueError):
    """A model folder's processor config is missing or does not describe this architecture."""


def read_processor_configs(folder: str | Path) -> dict[str, dict]:
    """The processor config files in `folder` (file name -> content); unreadable files raise."""
    out = {}
    for name in (IMAGE_PROCESSOR_FILE, VIDEO_PROCESSOR_FILE):
        path = Path(folder) / name
        if path.is_file():
            try:
                out[name] = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise ProcessorConfigError(f"{name} cannot be read ({exc})") from None
    return out


def _triple(value, name: str) -> tuple[float, float, float]:
    if isinstance(value, (int, float)):
        value = [value] * 3
    if not isinstance(value, list) or len(value) != 3:
        raise ProcessorConfigError(f"{name} must be 3 numbers, not {value!r}")
    return tuple(float(v) for v in value)


def _common(cfg: dict) -> dict[str, Any]:
    values = {"resample": int(cfg.get("resample", BICUBIC)),
              "rescale_factor": float(cfg.get("rescale_factor", RESCALE)) if cfg.get("do_rescale", True) else 1.0}
    if cfg.get("do_normalize", True):
        values["image_mean"] = _triple(cfg.get("image_mean", [0.5, 0.5, 0.5]), "image_mean")
        values["image_std"] = _triple(cfg.get("image_std", [0.5, 0.5, 0.5]), "image_std")
    else:
        values["image_mean"], values["image_std"] = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    return values


def _pixels(cfg: dict, edge: str, legacy: str) -> int | None:
    size = cfg.get("size") or {}
    value = size.get(edge) if isinstance(size, dict) else None
    value = value if value is not None else cfg.get(legacy)
    return int(value) if value is not None else None


def processing_values(architecture: str, configs: dict[str, dict]) -> dict[str, Any]:
    """`Preprocessing` fields from the processor configs of an `architecture` model."""
    if architecture == "flamingo":
        cfg = configs.get(IMAGE_PROCESSOR_FILE)
        if cfg is None:
            raise ProcessorConfigError(f"no {IMAGE_PROCESSOR_FILE} (IDEFICS' image processor config)")
        size = cfg.get("image_size") or (cfg.get("size") or {}).get("height")
        if not size:
            raise ProcessorConfigError(f"{IMAGE_PROCESSOR_FILE} names no image_size")
        return {"image_size": int(size), **_common(cfg),
                "extra": {"image_token": IDEFICS_IMAGE_TOKEN, "fake_token": IDEFICS_FAKE_TOKEN}}
    if architecture == "video_llama":
        cfg = configs.get(VIDEO_PROCESSOR_FILE)
        if cfg is None:
            raise ProcessorConfigError(f"no {VIDEO_PROCESSOR_FILE} (VideoLLaMA 3's video processor config)")
        min_pixels, max_pixels = _pixels(cfg, "shortest_edge", "min_pixels"), _pixels(cfg, "longest_edge", "max_pixels")
        if not min_pixels or not max_pixels or min_pixels > max_pixels:
            raise ProcessorConfigError(f"{VIDEO_PROCESSOR_FILE}: size needs 0 < shortest_edge <= longest_edge "
                                       "(the clip's pixel budget)")
        extra = {"patch_size": int(cfg.get("patch_size", 14)), "merge_size": int(cfg.get("merge_size", 2)),
                 "temporal_patch_size": int(cfg.get("temporal_patch_size", 1)),
                 "min_pixels": min_pixels, "max_pixels": max_pixels,
                 "use_token_compression": bool(cfg.get("use_token_compression", True)),
                 "video_token": VIDEO_TOKEN}
        if extra["temporal_patch_size"] != 1:
            raise ProcessorConfigError("temporal_patch_size other than 1 is not supported")
        return {"image_size": 0, **_common(cfg), "extra": extra}  # 0: the size depends on the clip
    raise ProcessorConfigError(f"no processor config reader for architecture {architecture!r}")


def read_preprocessing(folder: str | Path, architecture: str, engine: Preprocessing | None = None) -> Preprocessing:
    """The model's preprocessing: processing values from its processor config files, the engine's
    own settings (frames, prompts) from `engine` (its `preprocessing_config.json`) when given."""
    values = processing_values(architecture, read_processor_configs(folder))
    if engine is None:
        return Preprocessing(architecture=architecture, **values)
    for key, value in values.items():
        setattr(engine, key, value)
    return engine


def processor_files(prep: Preprocessing) -> dict[str, dict]:
    """The processor config files (as transformers' processors read them) of `prep`: what
    `build-tiny` writes beside a tiny model, so tiny and real models are read the same way."""
    common = {"do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "do_resize": True,
              "image_mean": list(prep.image_mean), "image_std": list(prep.image_std), "resample": prep.resample,
              "rescale_factor": prep.rescale_factor}
    if prep.architecture == "flamingo":
        return {IMAGE_PROCESSOR_FILE: {**common, "image_num_channels": 3, "image_processor_type": "IdeficsImageProcessor",
                                       "image_size": prep.image_size, "processor_class": "IdeficsProcessor"}}
    e = prep.extra
    size = {"longest_edge": e["max_pixels"], "shortest_edge": e["min_pixels"]}
    grid = {"patch_size": e["patch_size"], "temporal_patch_size": e.get("temporal_patch_size", 1)}
    return {
        IMAGE_PROCESSOR_FILE: {**common, **grid, "merge_size": 1, "size": size,
                               "image_processor_type": "VideoLlama3ImageProcessor",
                               "processor_class": "VideoLlama3Processor"},
        VIDEO_PROCESSOR_FILE: {**common, **grid, "merge_size": e["merge_size"], "size": size,
                               "use_token_compression": e.get("use_token_compression", True),
                               "do_sample_frames": False, "return_metadata": True,
                               "video_processor_type": "VideoLlama3VideoProcessor",
                               "processor_class": "VideoLlama3Processor"},
    }


def write_processor_files(prep: Preprocessing, folder: str | Path) -> None:
    for name, data in processor_files(prep).items():
        (Path(folder) / name).write_text(json.dumps(data, indent=2) + "\n")


def dynamic(prep: Preprocessing) -> bool:
    """Whether the frame size depends on the clip (VideoLLaMA 3 read from its processor config;
    a folder from before processor configs has a fixed `image_size`)."""
    return prep.architecture == "video_llama" and "max_pixels" in prep.extra


def frame_size(prep: Preprocessing, width: int, height: int, frames: int) -> tuple[int, int]:
    """(width, height) every frame of a `frames`-frame clip of this size is resized to."""
    if not dynamic(prep):
        return prep.image_size, prep.image_size
    e = prep.extra
    h, w = smart_resize(height, width, factor=e["patch_size"] * e["merge_size"], min_pixels=e["min_pixels"],
                        max_pixels=e["max_pixels"] // max(frames, 1))
    return w, h


def patchify(frames: torch.Tensor, patch: int, merge: int) -> torch.Tensor:
    """(T, C, H, W) -> (T*gh*gw, C*patch*patch) in the order VideoLLaMA 3 expects (merge blocks
    of merge x merge patches, as its processors lay them out)."""
    t, c, h, w = frames.shape
    gh, gw = h // patch, w // patch
    x = frames.reshape(t, c, gh // merge, merge, patch, gw // merge, merge, patch)
    x = x.permute(0, 2, 5, 3, 6, 1, 4, 7)  # t, gh/m, gw/m, m, m, c, p, p
    return x.reshape(t * gh * gw, c * patch * patch)


def compression_mask(pixels: torch.Tensor, t: int, merge: int) -> torch.Tensor:
    """Kept tokens (bool, one per merged token) of one clip's patchified pixels (`patchify`):
    every token of the first frame; later, those whose mean absolute pixel change from the same
    token of the previous frame x255 exceeds COMPRESSION_THRESHOLD, at least
    COMPRESSION_MIN_TOKENS a frame (transformers' `VideoLlama3VideoProcessor._get_compression_mask`)."""
    if t == 1:
        return torch.ones(pixels.shape[0] // merge**2, dtype=torch.bool)
    tokens = pixels.reshape(t, pixels.shape[0] // (t * merge**2), -1)
    diff = (tokens[1:] - tokens[:-1]).abs().mean(dim=-1) * 255
    diff = torch.cat([torch.full_like(diff[:1], COMPRESSION_THRESHOLD + 1), diff])
    mask = diff > COMPRESSION_THRESHOLD
    short = torch.nonzero(mask.sum(dim=1) < COMPRESSION_MIN_TOKENS)[:, 0]
    mask[short, :COMPRESSION_MIN_TOKENS] = True
    return mask.flatten()


def size_key(prep: Preprocessing, frames: int) -> tuple[int, int]:
    """What names the frame size of a frame store (`training.data.frame_store`): the square size,
    or for dynamic resolution (resize factor, pixels a frame may have at most)."""
    if not dynamic(prep):
        return prep.image_size, prep.image_size
    e = prep.extra
    return e["patch_size"] * e["merge_size"], e["max_pixels"] // max(frames, 1)


def store_resample(prep: Preprocessing) -> str:
    """The resize filter in a frame store's name."""
    return f"PIL{prep.resample}"


def decode_clip(prep: Preprocessing, path, count: int, *, fps: float | None = None,
                stats: dict | None = None) -> torch.Tensor:
    """The engine's sampled frames of a clip, uint8 (T, 3, H, W) at the model's size (only the
    sampled frames converted; resized with the processor config's resample filter)."""
    from training.data.frames import decode_frames, sampled_times

    frames = count
    if fps and dynamic(prep):  # the clip's pixel budget is split over the frames it really gets
        times = sampled_times(path, count, fps)  # (a demux pass: nothing decoded)
        frames = len(times) if times else count
    size = (lambda w, h: frame_size(prep, w, h, frames)) if dynamic(prep) else (prep.image_size, prep.image_size)
    return decode_frames(path, count, size, fps=fps, stats=stats, resample=prep.resample)


def normalise(prep: Preprocessing, frames: torch.Tensor) -> torch.Tensor:
    """uint8 (T, 3, H, W) -> float32: rescaled, then `(x - mean) / std` (resized first to the
    model's size when the frames are not at it, e.g. a store written at another size)."""
    from training.data.frames import resize_and_normalise

    t, _, h, w = frames.shape
    target = (h, w) if dynamic(prep) else (prep.image_size, prep.image_size)
    return resize_and_normalise(frames, target, prep.image_mean, prep.image_std, rescale=prep.rescale_factor)


def clip_prefix(family, tokenizer, prep: Preprocessing, pixels: torch.Tensor, times: list[float] | None) -> list[int]:
    """The clip's visual tokens in the prompt, from its normalised frames (and their times)."""
    if not dynamic(prep):
        return family.visual_prefix(tokenizer, prep, pixels.shape[0])
    if times is None or len(times) != pixels.shape[0]:
        times = [float(i) for i in range(pixels.shape[0])]  # transformers' fallback: fps 1
    return video_layout(tokenizer, prep, tokens_per_frame(prep, pixels), times)


def tokens_per_frame(prep: Preprocessing, frames: torch.Tensor) -> list[int]:
    """VideoLLaMA 3: the visual tokens each frame of a normalised clip (T, 3, H, W) takes."""
    e = prep.extra
    t, _, h, w = frames.shape
    per_frame = (h // e["patch_size"]) * (w // e["patch_size"]) // e["merge_size"] ** 2
    if not e.get("use_token_compression", True):
        return [per_frame] * t
    mask = compression_mask(patchify(frames, e["patch_size"], e["merge_size"]), t, e["merge_size"])
    return [int(n) for n in mask.reshape(t, per_frame).sum(dim=1)]


def video_layout(tokenizer, prep: Preprocessing, counts: list[int], times: list[float]) -> list[int]:
    """VideoLLaMA 3's clip in the prompt: `Time {t:.1f}s:` + the frame's video tokens, frames
    joined by `,` (transformers' `VideoLlama3Processor.replace_video_token`); the text between two
    runs of video tokens is tokenized as one piece, as it is in the processor's prompt."""
    video_id = tokenizer.convert_tokens_to_ids(prep.extra.get("video_token", VIDEO_TOKEN))
    ids: list[int] = []
    for k, (n, t) in enumerate(zip(counts, times)):
        text = ("," if k else "") + f"Time {t:.1f}s:"
        ids += tokenizer(text, add_special_tokens=False)["input_ids"] + [video_id] * n
    return ids
