"""VideoLLaMA 3 (`VideoLlama3ForConditionalGeneration`): SigLIP-style encoder over flattened
patches, a projector, a Qwen2 language model. Each frame becomes (S/p)^2 patches merged by
`merge_size`^2, so a clip of T frames takes T*(S/p)^2/merge^2 `<|video_pad|>` tokens."""

from __future__ import annotations

import torch
from transformers import VideoLlama3Config, VideoLlama3ForConditionalGeneration

from training.models.base import Family, Preprocessing

VIDEO_TOKEN = "<|video_pad|>"
IMAGE_TOKEN = "<|image_pad|>"


def patchify(frames: torch.Tensor, patch: int, merge: int) -> torch.Tensor:
    """(T, C, H, W) -> (T*gh*gw, C*patch*patch) in the order VideoLLaMA 3 expects
    (merge blocks of merge x merge patches, as its processor lays them out)."""
    t, c, h, w = frames.shape
    gh, gw = h // patch, w // patch
    x = frames.reshape(t, c, gh // merge, merge, patch, gw // merge, merge, patch)
    x = x.permute(0, 2, 5, 3, 6, 1, 4, 7)  # t, gh/m, gw/m, m, m, c, p, p
    return x.reshape(t * gh * gw, c * patch * patch)


class VideoLlamaFamily(Family):
    name = "video_llama"
    trainable_modules = ("model.projector",)

    def model_class(self) -> type:
        return VideoLlama3ForConditionalGeneration

    def special_tokens(self) -> list[str]:
        return [VIDEO_TOKEN, IMAGE_TOKEN]

    def tiny_preprocessing(self) -> Preprocessing:
        return Preprocessing(architecture=self.name, frames=4, image_size=32,
                             extra={"patch_size": 8, "merge_size": 2, "video_token": VIDEO_TOKEN})

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

    def default_preprocessing(self, config) -> Preprocessing:
        patch = int(config.vision_config.patch_size)
        return Preprocessing(architecture=self.name, frames=8, image_size=patch * 2 * 8,
                             extra={"patch_size": patch, "merge_size": 2, "video_token": VIDEO_TOKEN})

    def check_tokenizer(self, tokenizer, config) -> None:
        if tokenizer.convert_tokens_to_ids(VIDEO_TOKEN) != config.video_token_id:
            raise ValueError(f"the tokenizer's {VIDEO_TOKEN} id differs from config.video_token_id")

    def _tokens_per_frame(self, prep: Preprocessing) -> int:
        grid = prep.image_size // prep.extra["patch_size"]
        return grid * grid // prep.extra["merge_size"] ** 2

    def visual_prefix(self, tokenizer, prep: Preprocessing, num_frames: int) -> list[int]:
        video_id = tokenizer.convert_tokens_to_ids(prep.extra.get("video_token", VIDEO_TOKEN))
        return [video_id] * (num_frames * self._tokens_per_frame(prep))

    def visual_inputs(self, frames: torch.Tensor, attention_mask: torch.Tensor,
                      prep: Preprocessing, frame_counts: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        patch, merge = prep.extra["patch_size"], prep.extra["merge_size"]
        b, t, _, h, w = frames.shape
        counts = [t] * b if frame_counts is None else [int(c) for c in frame_counts]
        pixels = torch.cat([patchify(clip[:n], patch, merge) for clip, n in zip(frames, counts)])
        grid = torch.tensor([[n, h // patch, w // patch] for n in counts], dtype=torch.long)
        return {"pixel_values_videos": pixels, "video_grid_thw": grid,
                "video_merge_sizes": torch.full((b,), merge, dtype=torch.long)}
