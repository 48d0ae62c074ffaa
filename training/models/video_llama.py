"""VideoLLaMA 3 (`VideoLlama3ForConditionalGeneration`): SigLIP-style encoder over flattened
patches, a projector, a Qwen2 language model. Every frame of a clip is resized to one size that
fits the clip's pixel budget (dynamic resolution), cut into patch x patch patches merged by
`merge_size`^2 into tokens; with token compression, tokens that do not change from the previous
frame are dropped. The sizes, budget and layout come from the model's
`video_preprocessor_config.json` (`training.models.preprocess`)."""

from __future__ import annotations

import torch
from transformers import VideoLlama3Config, VideoLlama3ForConditionalGeneration

from training.models.base import Family, Preprocessing
from training.models.preprocess import IMAGE_TOKEN, VIDEO_TOKEN, compression_mask, patchify, processing_values

#: the tiny model's video processor config: patch 8, merge 2 (16-pixel resize factor), at most
#: 4096 pixels a clip (4 frames of 32x32), at least 16x16 a frame, token compression on
TINY_VIDEO_PROCESSOR = {"patch_size": 8, "merge_size": 2, "temporal_patch_size": 1,
                        "size": {"shortest_edge": 256, "longest_edge": 4096}, "image_mean": [0.5, 0.5, 0.5],
                        "image_std": [0.5, 0.5, 0.5], "resample": 3, "rescale_factor": 1 / 255,
                        "use_token_compression": True}


class VideoLlamaFamily(Family):
    name = "video_llama"
    trainable_modules = ("model.projector",)

    def model_class(self) -> type:
        return VideoLlama3ForConditionalGeneration

    def special_tokens(self) -> list[str]:
        return [VIDEO_TOKEN, IMAGE_TOKEN]

    def tiny_preprocessing(self) -> Preprocessing:
        values = processing_values(self.name, {"video_preprocessor_config.json": TINY_VIDEO_PROCESSOR})
        return Preprocessing(architecture=self.name, frames=4, **values)

    def tiny_config(self, tokenizer, prep: Preprocessing) -> VideoLlama3Config:
        text = {"model_type": "qwen2", "vocab_size": len(tokenizer), "hidden_size": 64,
                "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                "num_key_value_heads": 2, "max_position_embeddings": 1024, "tie_word_embeddings": False,
                "pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.bos_token_id,
                "eos_token_id": tokenizer.eos_token_id}
        vision = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                  "num_attention_heads": 4, "patch_size": prep.extra["patch_size"]}
        return VideoLlama3Config(text_config=text, vision_config=vision,
                                 video_token_id=tokenizer.convert_tokens_to_ids(VIDEO_TOKEN),
                                 image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
                                 pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                                 eos_token_id=tokenizer.eos_token_id)

    def check_tokenizer(self, tokenizer, config) -> None:
        if tokenizer.convert_tokens_to_ids(VIDEO_TOKEN) != config.video_token_id:
            raise ValueError(f"the tokenizer's {VIDEO_TOKEN} id differs from config.video_token_id")

    def _tokens_per_frame(self, prep: Preprocessing) -> int:
        grid = prep.image_size // prep.extra["patch_size"]
        return grid * grid // prep.extra["merge_size"] ** 2

    def visual_prefix(self, tokenizer, prep: Preprocessing, num_frames: int) -> list[int]:
        """A fixed-size model's prefix (a folder from before processor configs); dynamic
        resolution builds the clip's own (`training.models.preprocess.clip_prefix`)."""
        video_id = tokenizer.convert_tokens_to_ids(prep.extra.get("video_token", VIDEO_TOKEN))
        return [video_id] * (num_frames * self._tokens_per_frame(prep))

    def visual_inputs(self, frames, attention_mask: torch.Tensor, prep: Preprocessing,
                      frame_counts: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """`frames`: (B, T, 3, H, W), or a list of (T_b, 3, H_b, W_b) clips of their own sizes
        (dynamic resolution); with `frame_counts`, clip b has only its first frame_counts[b]
        frames. Per clip: its patches, grid (T, H/p, W/p) and, with token compression, the
        tokens kept (`video_compression_mask`, the same the clip's prompt counted)."""
        e = prep.extra
        patch, merge = e["patch_size"], e["merge_size"]
        clips = list(frames)
        if frame_counts is not None:
            clips = [clip[:int(n)] for clip, n in zip(clips, frame_counts)]
        pixels, grids, masks = [], [], []
        for clip in clips:
            t, _, h, w = clip.shape
            flat = patchify(clip, patch, merge)
            pixels.append(flat)
            grids.append([t, h // patch, w // patch])
            if e.get("use_token_compression") and "max_pixels" in e:
                masks.append(compression_mask(flat, t, merge))
        out = {"pixel_values_videos": torch.cat(pixels), "video_grid_thw": torch.tensor(grids, dtype=torch.long),
               "video_merge_sizes": torch.full((len(clips),), merge, dtype=torch.long)}
        if masks:
            out["video_compression_mask"] = torch.cat(masks)
        return out
