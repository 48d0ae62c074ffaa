"""The engine's preprocessing of a clip against transformers' own processors, for every real
catalog entry, read from the checkpoint's stored processor config: the same pixel values (within
1e-2 after normalisation) and the same visual tokens at the same places in the prompt.

The references run without torchvision: transformers' PIL image processors
(`VideoLlama3ImageProcessorPil`, `IdeficsImageProcessorPil`) on every sampled frame decoded at
full size, `IdeficsProcessor` for the IDEFICS prompt, and for VideoLLaMA 3 the video processor's
own pieces: the clip's pixel budget split over its frames (`max_pixels // T`, as
`VideoLlama3VideoProcessor.resize` does), its token compression
(`VideoLlama3VideoProcessor._get_compression_mask`, a pure torch function; its module is imported
with torchvision stubbed, nothing of torchvision runs) and `VideoLlama3Processor.replace_video_token`
for the prompt."""

from __future__ import annotations

import importlib
import json
import sys
import types
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from training.catalog import load_catalog
from training.data.frames import sample_indices
from training.models import get_family
from training.models.preprocess import clip_prefix, decode_clip, normalise, read_preprocessing
from training.models.published import checkpoint_folder, standin_tokenizer

PROMPT = "describe the video:"


def _real(architecture: str) -> str:
    return next(m.checkpoint for m in load_catalog().models if not m.tiny and m.base_architecture == architecture)


def write_clip(path: Path, width: int, height: int, frames: int, fps: int = 8) -> Path:
    """A camera-like clip: smooth colour gradients, a red disc crossing a static background (so
    VideoLLaMA 3's token compression drops the background tokens of later frames), H.264 4:2:0."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            image = np.stack([xx / width * 200 + 20, yy / height * 180 + 30, (xx + yy) / (width + height) * 150 + 50], -1)
            cx, cy = width * (0.2 + 0.6 * i / frames), height / 2
            disc = np.clip((min(width, height) / 6 - np.hypot(xx - cx, yy - cy)) / 2, 0, 1)[..., None]
            image = image * (1 - disc) + np.array([230, 40, 40]) * disc
            for packet in stream.encode(av.VideoFrame.from_ndarray(image.astype(np.uint8), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def full_frames(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def _video_processor_module():
    """transformers' VideoLLaMA 3 video processor module, imported with torchvision stubbed for
    the import only (this venv has no torchvision; the functions used here are pure torch)."""
    import transformers.video_processing_utils  # noqa: F401  (imported before the stubs exist)

    names = ["torchvision", "torchvision.transforms", "torchvision.transforms.v2",
             "torchvision.transforms.v2.functional"]
    if "torchvision" in sys.modules:  # a real torchvision: nothing to stub
        return importlib.import_module("transformers.models.video_llama_3.video_processing_video_llama_3")
    stubs = {name: types.ModuleType(name) for name in names}
    stubs["torchvision.transforms.v2"].functional = stubs["torchvision.transforms.v2.functional"]
    sys.modules.update(stubs)
    try:
        return importlib.import_module("transformers.models.video_llama_3.video_processing_video_llama_3")
    finally:
        for name in names:
            sys.modules.pop(name, None)


@pytest.mark.parametrize(("width", "height", "frames"), [(64, 48, 4), (320, 240, 8), (1280, 720, 16)],
                         ids=["small-upscaled", "qvga", "720p-budget-split"])
def test_videollama3_matches_transformers(tmp_path, width, height, frames):
    from transformers.models.video_llama_3.image_processing_pil_video_llama_3 import VideoLlama3ImageProcessorPil
    from transformers.models.video_llama_3.processing_video_llama_3 import VideoLlama3Processor
    from transformers.video_utils import VideoMetadata

    checkpoint = _real("video_llama")
    folder = checkpoint_folder(checkpoint)
    cfg = json.loads((folder / "video_preprocessor_config.json").read_text())
    prep = read_preprocessing(folder, "video_llama")
    family = get_family("video_llama")
    tokenizer = standin_tokenizer(checkpoint)
    clip = write_clip(tmp_path / "clip.mp4", width, height, 24)

    # the engine: sampled frames decoded at the model's size, normalised, its prompt and inputs
    stats: dict = {}
    pixels = normalise(prep, decode_clip(prep, clip, frames, stats=stats))
    ours_ids = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    ours_ids += clip_prefix(family, tokenizer, prep, pixels, stats["times"])
    ours_ids += tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
    ours = family.visual_inputs(pixels[None], torch.ones(1, len(ours_ids), dtype=torch.long), prep)

    # transformers: the same frames decoded at full size, its processors as the checkpoint configures them
    decoded = full_frames(clip)
    picks = sample_indices(len(decoded), frames)
    image_processor = VideoLlama3ImageProcessorPil(
        size={"shortest_edge": cfg["size"]["shortest_edge"], "longest_edge": cfg["size"]["longest_edge"] // frames},
        patch_size=cfg["patch_size"], merge_size=cfg["merge_size"], temporal_patch_size=cfg["temporal_patch_size"],
        image_mean=cfg["image_mean"], image_std=cfg["image_std"], resample=cfg["resample"],
        rescale_factor=cfg["rescale_factor"])
    ref = image_processor([decoded[i] for i in picks], return_tensors="pt")
    grid = torch.tensor([[frames, *ref["image_grid_thw"][0, 1:].tolist()]])
    merge = torch.tensor([cfg["merge_size"]])
    mask = _video_processor_module().VideoLlama3VideoProcessor._get_compression_mask(
        None, pixel_values_videos=ref["pixel_values"], video_grid_thw=grid, video_merge_sizes=merge)
    assert cfg["use_token_compression"] and not bool(mask.all())  # the static background is compressed
    video_inputs = {"video_grid_thw": grid, "video_merge_sizes": merge, "video_compression_mask": mask,
                    "video_metadata": [VideoMetadata(total_num_frames=len(decoded), fps=8, frames_indices=picks)]}
    text = VideoLlama3Processor.replace_video_token(types.SimpleNamespace(video_token="<|video_pad|>"),
                                                    video_inputs, 0)
    ref_ids = tokenizer(text + PROMPT, add_special_tokens=False)["input_ids"]

    assert torch.equal(ours["video_grid_thw"], grid)
    assert ours["pixel_values_videos"].shape == ref["pixel_values"].shape
    assert (ours["pixel_values_videos"] - ref["pixel_values"]).abs().max().item() <= 1e-2
    assert torch.equal(ours["video_compression_mask"], mask)
    video_id = tokenizer.convert_tokens_to_ids("<|video_pad|>")
    assert video_id == 151656
    assert [i for i, t in enumerate(ours_ids) if t == video_id] == [i for i, t in enumerate(ref_ids) if t == video_id]
    assert ours_ids == ref_ids
    assert sum(t == video_id for t in ours_ids) == int(mask.sum())


@pytest.mark.parametrize(("width", "height"), [(320, 240), (96, 200)])
def test_idefics_matches_transformers(tmp_path, width, height):
    from PIL import Image
    from transformers.models.idefics.image_processing_pil_idefics import IdeficsImageProcessorPil
    from transformers.models.idefics.processing_idefics import IdeficsProcessor

    checkpoint = _real("flamingo")
    folder = checkpoint_folder(checkpoint)
    cfg = json.loads((folder / "preprocessor_config.json").read_text())
    prep = read_preprocessing(folder, "flamingo")
    family = get_family("flamingo")
    tokenizer = standin_tokenizer(checkpoint)
    clip = write_clip(tmp_path / "clip.mp4", width, height, 24)
    frames = 8

    pixels = normalise(prep, decode_clip(prep, clip, frames))
    ours_ids = [tokenizer.bos_token_id] + clip_prefix(family, tokenizer, prep, pixels, None)
    ours_ids += tokenizer(PROMPT, add_special_tokens=False)["input_ids"]

    decoded = full_frames(clip)
    picks = sample_indices(len(decoded), frames)
    image_processor = IdeficsImageProcessorPil(**{k: v for k, v in cfg.items() if k.startswith("image_")})
    processor = IdeficsProcessor(image_processor=image_processor, tokenizer=tokenizer)
    ref = processor(text=[[Image.fromarray(decoded[i]) for i in picks] + [PROMPT]], return_tensors="pt")

    assert pixels.shape == (frames, 3, cfg["image_size"], cfg["image_size"])
    assert (pixels - ref["pixel_values"][0]).abs().max().item() <= 1e-2
    assert ours_ids == ref["input_ids"][0].tolist()
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    assert image_id == 32001 and ours_ids.count(image_id) == frames


def test_videollama3_fps_sampling_splits_the_pixel_budget_over_the_frames_sampled(tmp_path):
    """1 frame a second of a 3 s clip, at most 16: 3 frames, each resized within max_pixels // 3
    (what the video processor does with the 3 frames it is given), not max_pixels // 16."""
    from transformers.models.video_llama_3.image_processing_pil_video_llama_3 import VideoLlama3ImageProcessorPil

    folder = checkpoint_folder(_real("video_llama"))
    cfg = json.loads((folder / "video_preprocessor_config.json").read_text())
    prep = read_preprocessing(folder, "video_llama")
    clip = write_clip(tmp_path / "clip.mp4", 1280, 720, 24)  # 8 fps
    stats: dict = {}
    frames = decode_clip(prep, clip, 16, fps=1.0, stats=stats)
    assert stats["times"] == [0.0, 1.0, 2.0]
    decoded = full_frames(clip)
    processor = VideoLlama3ImageProcessorPil(
        size={"shortest_edge": cfg["size"]["shortest_edge"], "longest_edge": cfg["size"]["longest_edge"] // 3},
        patch_size=cfg["patch_size"], merge_size=cfg["merge_size"], image_mean=cfg["image_mean"],
        image_std=cfg["image_std"], resample=cfg["resample"])
    ref = processor([decoded[i] for i in (0, 8, 16)], return_tensors="pt")
    _, gh, gw = ref["image_grid_thw"][0].tolist()
    assert frames.shape == (3, 3, gh * cfg["patch_size"], gw * cfg["patch_size"]) == (3, 3, 728, 1288)
    pixels = normalise(prep, frames)
    ours = get_family("video_llama").visual_inputs(pixels[None], torch.ones(1, 1, dtype=torch.long), prep)
    assert (ours["pixel_values_videos"] - ref["pixel_values"]).abs().max().item() <= 1e-2
