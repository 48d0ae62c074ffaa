"""The architectures the platform fine-tunes, as plain facts (no torch import here).

One entry per `base_architecture` of the catalog. The API validates requests against these
facts and the engine turns them into LoRA configs; adding an architecture means adding one
entry here (plus its builder in the engine).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Architecture:
    name: str
    #: transformers class that loads the checkpoint
    model_class: str
    #: short LoRA target names users may ask for (matched in the language model only)
    allowed_target_modules: tuple[str, ...]
    #: targets used when a request names none
    default_target_modules: tuple[str, ...]
    #: regex template restricting LoRA to the language model; `{targets}` is `q_proj|v_proj`
    target_regex: str


_LM_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
#: the default: every linear layer of the language model's blocks. The QLoRA paper (Dettmers et
#: al. 2023, section 4) finds adapting all of them is what matches 16-bit full fine-tuning;
#: attention-only (q_proj, v_proj) adapters learn much less (here: tiny captioning models stay
#: at BLEU 0 with them and reach ~80 with all layers)
_ALL_LM_LINEAR = _LM_PROJECTIONS

ARCHITECTURES: dict[str, Architecture] = {
    "flamingo": Architecture(
        name="flamingo",
        model_class="IdeficsForVisionText2Text",
        allowed_target_modules=_LM_PROJECTIONS,
        default_target_modules=_ALL_LM_LINEAR,
        target_regex=r"^model\.(layers|gated_cross_attn_layers)\.\d+\..*\.({targets})$",
    ),
    "video_llama": Architecture(
        name="video_llama",
        model_class="VideoLlama3ForConditionalGeneration",
        allowed_target_modules=_LM_PROJECTIONS,
        default_target_modules=_ALL_LM_LINEAR,
        target_regex=r".*language_model\..*\.({targets})$",
    ),
}


def get_architecture(name: str) -> Architecture:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise KeyError(f"unknown architecture {name!r}; known: {', '.join(sorted(ARCHITECTURES))}") from None
