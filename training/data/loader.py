"""From the platform's dataset folder to padded training batches.

Reads the table through `training.data.dataset_format.read_dataset`, checks that every row has
what the task needs and that every clip decodes (before any training), splits train/held-out
(the table's `split` column, else a seeded, per-label stratified split), and turns examples into
model inputs: uniformly sampled frames (decoded and scaled in bounded memory by
`training.data.frames`), normalised in torch, the architecture's
visual tokens, the prompt and (captioning) the caption tokens, whose positions alone carry loss.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from training.errors import InputError
from training.data.dataset_format import TASK_COLUMNS, DatasetFormatError, read_dataset
from training.data.frames import ClipError, decode_frames, resize_and_normalise
from training.models.base import Family, Preprocessing

IGNORE_INDEX = -100
MAX_CAPTION_TOKENS = 64


@dataclass(frozen=True)
class Example:
    file_name: str
    path: Path
    label: str | None = None
    caption: str | None = None


@dataclass
class Splits:
    train: list[Example]
    held_out: list[Example]
    #: "table" when the dataset named its validation/test rows, else "seeded"
    source: str


def _missing(value) -> bool:
    try:
        return value is None or bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def read_examples(folder: str | Path, task: str) -> list[tuple[Example, str | None]]:
    """Every row as (example, split or None); raises InputError naming the first bad row."""
    try:
        table = read_dataset(folder)
    except DatasetFormatError as exc:
        raise InputError(f"dataset: {exc}") from None
    column = TASK_COLUMNS[task]
    if not table.supports(task):
        raise InputError(f"the dataset has no '{column}' column, which {task} needs "
                            f"(columns: {', '.join(table.frame.columns)})")
    rows = []
    for i, record in enumerate(table.frame.to_dict("records"), start=1):
        record = {k: (None if _missing(v) else v) for k, v in record.items()}
        file_name, value = record.get("file_name"), record.get(column)
        if not file_name:
            raise InputError(f"dataset row {i}: empty file_name")
        if value is None or not str(value).strip():
            raise InputError(f"dataset row {i} ({file_name}): missing {column}, which {task} needs")
        path = table.clip_path(file_name)
        if not path.is_file():
            raise InputError(f"dataset row {i}: clip {file_name} does not exist")
        value = str(value).strip()
        example = Example(file_name, path, label=value if column == "label" else record.get("label"),
                          caption=value if column == "caption" else record.get("caption"))
        rows.append((example, (record.get("split") or None)))
    if not rows:
        raise InputError("the dataset has no rows")
    return rows


def split_examples(rows: list[tuple[Example, str | None]], task: str, seed: int,
                   fraction: float) -> Splits:
    """The table's own split when it names held-out rows; else a seeded stratified split."""
    named = [(e, s.lower()) for e, s in rows if s]
    held = [e for e, s in named if s == "validation"] or [e for e, s in named if s == "test"]
    if held:
        held_ids = {id(e) for e in held}
        train = [e for e, s in rows if id(e) not in held_ids and (s or "train").lower() == "train"]
        if not train:
            raise InputError("the dataset's split column leaves no training rows")
        return Splits(train, held, "table")
    examples = [e for e, _ in rows]
    if len(examples) < 2:
        raise InputError("the dataset needs at least 2 clips (one to train on, one to hold out)")
    rng = random.Random(seed)
    groups: dict[str, list[Example]] = defaultdict(list)
    for e in examples:
        groups[e.label if task == "video_classification" else ""].append(e)
    train, held = [], []
    for key in sorted(groups):
        members = groups[key][:]
        rng.shuffle(members)
        n_held = int(round(len(members) * fraction))
        if len(members) > 1:
            n_held = min(max(n_held, 1), len(members) - 1)
        else:
            n_held = 0
        held += members[:n_held]
        train += members[n_held:]
    if not held:  # every label has a single clip
        held, train = train[:1], train[1:]
    return Splits(train, held, "seeded")


class ClipDataset:
    """Examples -> tensors; decoded (resized, uint8) frames are kept in memory up to a budget."""

    def __init__(self, examples: list[Example], *, task: str, family: Family, prep: Preprocessing,
                 tokenizer, frames: int, label2id: dict[str, int] | None = None,
                 cache_bytes: int = 1 << 30) -> None:
        self.examples, self.task, self.family, self.prep = examples, task, family, prep
        self.tokenizer, self.frames, self.label2id = tokenizer, frames, label2id or {}
        self._cache: dict[Path, torch.Tensor] = {}
        self._cache_left = cache_bytes
        prompt = prep.caption_prompt if task == "video_captioning" else prep.classification_prompt
        self.prompt_ids = ([tokenizer.bos_token_id] + family.visual_prefix(tokenizer, prep, frames)
                           + tokenizer(prompt, add_special_tokens=False)["input_ids"])

    def __len__(self) -> int:
        return len(self.examples)

    def clip_frames(self, path: Path) -> torch.Tensor:
        """uint8 (T, 3, S, S) frames of one clip (decoded once while the cache has room)."""
        cached = self._cache.get(path)
        if cached is not None:
            return cached
        size = self.prep.image_size
        # only the sampled frames are converted, scaled to the model's size in the decoder
        raw = decode_frames(path, self.frames, (size, size))
        if raw.numel() <= self._cache_left:
            self._cache[path] = raw
            self._cache_left -= raw.numel()
        return raw

    def check_clips(self) -> None:
        """Decodes every clip once; raises InputError naming the first unreadable one."""
        for example in self.examples:
            try:
                self.clip_frames(example.path)
            except ClipError as exc:
                raise InputError(f"unreadable clip {example.file_name}: {exc}") from None

    def pixels(self, path: Path) -> torch.Tensor:
        return resize_and_normalise(self.clip_frames(path), self.prep.image_size, self.prep.image_mean,
                                    self.prep.image_std)

    def caption_ids(self, caption: str) -> list[int]:
        ids = self.tokenizer(" " + caption.strip(), add_special_tokens=False)["input_ids"]
        return ids[:MAX_CAPTION_TOKENS] + [self.tokenizer.eos_token_id]

    def __getitem__(self, index: int) -> dict:
        example = self.examples[index]
        item = {"frames": self.pixels(example.path), "index": index}
        if self.task == "video_captioning":
            target = self.caption_ids(example.caption or "")
            item["input_ids"] = self.prompt_ids + target
            item["labels"] = [IGNORE_INDEX] * len(self.prompt_ids) + target
        else:
            item["input_ids"] = list(self.prompt_ids)
            item["class_label"] = self.label2id[example.label]
        return item


def collate(items: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pads token ids (labels with -100) and stacks frames (B, T, 3, S, S)."""
    longest = max(len(i["input_ids"]) for i in items)
    batch = {
        "input_ids": torch.tensor([i["input_ids"] + [pad_id] * (longest - len(i["input_ids"])) for i in items]),
        "attention_mask": torch.tensor([[1] * len(i["input_ids"]) + [0] * (longest - len(i["input_ids"]))
                                        for i in items]),
        "frames": torch.stack([i["frames"] for i in items]),
        "index": torch.tensor([i["index"] for i in items]),
    }
    if "labels" in items[0]:
        batch["labels"] = torch.tensor([i["labels"] + [IGNORE_INDEX] * (longest - len(i["labels"]))
                                        for i in items])
    if "class_label" in items[0]:
        batch["class_labels"] = torch.tensor([i["class_label"] for i in items])
    return batch


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, shuffle: bool = True) -> list[list[int]]:
    """The batches of one epoch: a permutation fixed by (seed, epoch), so a resumed run sees
    exactly the batches an uninterrupted one would."""
    order = list(range(n))
    if shuffle:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000 + epoch)).tolist()
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]
