"""An offline tokenizer for tiny models: a byte-level BPE trained on a few strings.

Byte-level means any text (any caption or label a user uploads) can be encoded and decoded
back; the few merges learnt from the training strings keep the usual words short.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"

_COLOURS = ("red", "green", "blue", "yellow", "black", "white", "orange", "purple")
_DIRECTIONS = ("left", "right", "up", "down")


def _corpus() -> list[str]:
    lines = [f"a {c} square moves {d}" for c in _COLOURS for d in _DIRECTIONS]
    lines += ["describe the video:", "what is in the video?", "caption:", "label:",
              "a person walks", "the cat jumps", "a car drives on the road", "the ball rolls"]
    return lines * 4


def build_tokenizer(extra_special_tokens: list[str], vocab_size: int = 384) -> PreTrainedTokenizerFast:
    """Returns a `PreTrainedTokenizerFast` with `<pad>`=0, `<s>`=1, `</s>`=2, `<unk>`=3, then
    `extra_special_tokens`, then the byte alphabet and the learnt merges."""
    specials = [PAD, BOS, EOS, UNK, *extra_special_tokens]
    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, bos_token=BOS, eos_token=EOS,
                                   unk_token=UNK)
    fast.add_special_tokens({"additional_special_tokens": list(extra_special_tokens)})
    fast.padding_side = "right"
    return fast
