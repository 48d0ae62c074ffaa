"""IDEFICS (`IdeficsForVisionText2Text`), the open Flamingo: a CLIP-style vision encoder, a
perceiver resampler, and gated cross-attention layers interleaved with the language model.
Every sampled frame is one image; the prompt holds `<fake_token_around_image><image>` per frame
and every text token attends (through cross-attention) to all frames of its clip."""

from __future__ import annotations

import torch
from transformers import IdeficsConfig, IdeficsForVisionText2Text

from training.models.base import Family, Preprocessing
from training.models.preprocess import IDEFICS_FAKE_TOKEN as FAKE_TOKEN
from training.models.preprocess import IDEFICS_IMAGE_TOKEN as IMAGE_TOKEN
from training.models.preprocess import processing_values

#: the tiny model's image processor config: the published IDEFICS one (CLIP mean/std, bicubic)
#: at 32 pixels (`training/models/checkpoints/HuggingFaceM4__idefics-9b-instruct/`)
TINY_IMAGE_PROCESSOR = {"image_size": 32, "image_mean": [0.48145466, 0.4578275, 0.40821073],
                        "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3}


class FlamingoFamily(Family):
    name = "flamingo"
    trainable_modules = ()

    def model_class(self) -> type:
        return IdeficsForVisionText2Text

    def special_tokens(self) -> list[str]:
        return [FAKE_TOKEN, IMAGE_TOKEN]

    def tiny_preprocessing(self) -> Preprocessing:
        values = processing_values(self.name, {"preprocessor_config.json": TINY_IMAGE_PROCESSOR})
        return Preprocessing(architecture=self.name, frames=4, **values)

    def tiny_config(self, tokenizer, prep: Preprocessing) -> IdeficsConfig:
        vision = {"embed_dim": 64, "image_size": prep.image_size, "intermediate_size": 128,
                  "patch_size": 8, "num_hidden_layers": 2, "num_attention_heads": 4}
        perceiver = {"use_resampler": True, "resampler_n_latents": 8, "resampler_depth": 1,
                     "resampler_n_heads": 2, "resampler_head_dim": 32}
        # The gates of the cross-attention start open ("ones"): with the published "zeros"
        # init a random tiny model would ignore the video entirely and LoRA could not learn it.
        return IdeficsConfig(vocab_size=len(tokenizer), additional_vocab_size=0, hidden_size=64,
                             intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                             cross_layer_interval=1, use_resampler=True, alpha_initializer="ones",
                             freeze_text_layers=False, freeze_vision_layers=False, freeze_lm_head=False,
                             max_position_embeddings=1024, vision_config=vision, perceiver_config=perceiver,
                             pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                             eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False)

    def tiny_init(self, model) -> None:
        # The perceiver's latents start as randn (std 1) and its random attention adds ~0.02,
        # so every frame would resample to nearly the same latents; small latents let the
        # frames through, as in a trained model.
        torch.nn.init.normal_(model.model.perceiver_resampler.latents, mean=0.0, std=0.02)

    def check_tokenizer(self, tokenizer, config) -> None:
        for token in (IMAGE_TOKEN, FAKE_TOKEN):
            if tokenizer.convert_tokens_to_ids(token) in (None, tokenizer.unk_token_id):
                raise ValueError(f"the tokenizer has no {token} token")

    def visual_prefix(self, tokenizer, prep: Preprocessing, num_frames: int) -> list[int]:
        fake = tokenizer.convert_tokens_to_ids(prep.extra.get("fake_token", FAKE_TOKEN))
        image = tokenizer.convert_tokens_to_ids(prep.extra.get("image_token", IMAGE_TOKEN))
        return [fake, image] * num_frames + [fake]

    def visual_inputs(self, frames: torch.Tensor, attention_mask: torch.Tensor,
                      prep: Preprocessing, frame_counts: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        b, t = frames.shape[:2]
        image_mask = attention_mask[:, :, None].expand(b, attention_mask.shape[1], t).long()
        if frame_counts is not None:  # the padding frames of shorter clips are not attended to
            image_mask = image_mask * (torch.arange(t)[None, :] < frame_counts[:, None]).long()[:, None, :]
        return {"pixel_values": frames, "image_attention_mask": image_mask}
