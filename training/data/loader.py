"""From the platform's dataset folder to padded training batches.

Reads the table through `training.data.dataset_format.read_dataset`, checks that every row has
what the task needs and that its clip exists, splits train/held-out
(the table's `split` column, else a seeded, per-label stratified split), and turns examples into
model inputs: uniformly sampled frames (decoded and scaled in bounded memory by
`training.data.frames`), normalised in torch, the architecture's
visual tokens, the prompt and (captioning) the caption tokens, whose positions alone carry loss.

No pass over the clips before training: a clip is decoded when a batch first needs it (then
kept in memory up to a budget, and in the on-disk `training.data.frame_store` for the next
epochs and jobs). A clip that fails to decode then is skipped, reported and counted by
`BadClips`, which fails the run only past `QLORA_MAX_BAD_CLIP_FRACTION` of the clips.
"""

from __future__ import annotations

import logging
import math
import random
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from training.errors import InputError
from training.data.dataset_format import TASK_COLUMNS, DatasetFormatError, read_dataset
from training.data.frames import ClipError, sampled_times
from training.models.base import Family, Preprocessing
from training.models.preprocess import clip_prefix, decode_clip, dynamic, normalise

log = logging.getLogger("training")

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


class TooManyBadClips(InputError):
    """More clips failed to decode than `QLORA_MAX_BAD_CLIP_FRACTION` allows."""


class BadClips:
    """Clips that failed to decode during a run (shared by its train and held-out sets): each is
    skipped, logged and passed to `on_skip(file_name, reason, count)` (MLflow, the result
    manifest) once; past `max_fraction` of `total` clips, `TooManyBadClips` names them."""

    def __init__(self, total: int, max_fraction: float,
                 on_skip: Callable[[str, str, int], None] | None = None) -> None:
        self.total, self.max_fraction, self.on_skip = total, max_fraction, on_skip
        self.failed: dict[str, str] = {}

    @property
    def allowed(self) -> int:
        return math.floor(self.total * self.max_fraction + 1e-9)

    def add(self, file_name: str, reason: str) -> None:
        if file_name in self.failed:
            return
        self.failed[file_name] = reason
        count = len(self.failed)
        log.warning("skipped clip %s (%d of %d clips skipped, at most %d allowed): %s", file_name, count,
                    self.total, self.allowed, reason)
        if self.on_skip is not None:
            try:
                self.on_skip(file_name, reason, count)
            except Exception as exc:  # reporting never stops a training
                log.warning("could not report the skipped clip %s: %s", file_name, exc)
        if count > self.allowed:
            names = "; ".join(f"{n} ({r})" for n, r in list(self.failed.items())[:5])
            raise TooManyBadClips(
                f"{count} of {self.total} clips could not be decoded, more than the "
                f"{self.max_fraction:.1%} allowed (QLORA_MAX_BAD_CLIP_FRACTION): {names}"
                f"{' ...' if count > 5 else ''}; fix or remove them and validate the dataset again")


def trusted_clips(report_location: str | None, examples: list[Example], bad_clips: BadClips) -> str:
    """What the run knows of its clips before reading them, as a log phrase. With the dataset's
    validation report (`--clip-report`, path or s3:// URI) the clips it decoded are trusted, not
    decoded again before training; a report of an invalid dataset is refused. Either way every
    clip is checked as it is read (`ClipDataset.items`)."""
    allowed = f"a clip that fails to decode is skipped, at most {bad_clips.allowed} of {bad_clips.total}"
    if not report_location:
        return f"no validation report: clips are checked as they are read ({allowed})"
    import json

    try:
        if report_location.startswith("s3://"):
            from training import s3

            bucket, key = s3.split_s3_uri(report_location)
            raw = s3.client().get_object(Bucket=bucket, Key=key)["Body"].read()
        else:
            raw = Path(report_location).read_bytes()
        report = json.loads(raw)
    except Exception as exc:
        raise InputError(f"cannot read the validation report {report_location}: {exc}", field="clip_report") \
            from None
    if not isinstance(report, dict) or not report.get("valid"):
        raise InputError(f"{report_location} is not the report of a valid dataset", field="clip_report")
    validated = {c.get("file_name") for c in report.get("clips") or [] if isinstance(c, dict)}
    unverified = sum(1 for e in examples if e.file_name not in validated)
    return (f"{len(examples) - unverified} of {len(examples)} clips decoded by the dataset's validation "
            f"(trusted, not decoded before training), {unverified} not in its report ({allowed})")


class ClipDataset:
    """Examples -> tensors; decoded (resized, uint8) frames are kept in memory up to a budget,
    and in `store` (on disk, `training.data.frame_store`) when given. With `bad_clips`, a clip
    that fails to decode is skipped by `items()` and counted there; without it, it raises
    `InputError`."""

    def __init__(self, examples: list[Example], *, task: str, family: Family, prep: Preprocessing,
                 tokenizer, frames: int, label2id: dict[str, int] | None = None,
                 cache_bytes: int = 1 << 30, store=None, bad_clips: BadClips | None = None,
                 fps: float | None = None) -> None:
        self.examples, self.task, self.family, self.prep = examples, task, family, prep
        self.tokenizer, self.frames, self.label2id = tokenizer, frames, label2id or {}
        #: None: `frames` frames uniformly; else `fps` frames a second of the clip, at most `frames`
        #: (so clips differ in their number of frames, and in their prompts' visual tokens)
        self.fps = fps
        self.store, self.bad_clips = store, bad_clips
        self.bad: set[int] = set()
        self.decoded = 0  # clips decoded from their video (not from memory or the store)
        self._cache: dict[Path, torch.Tensor] = {}
        self._times: dict[Path, list[float] | None] = {}  # the sampled frames' times (VideoLLaMA 3's prompt)
        self._cache_left = cache_bytes
        prompt = prep.caption_prompt if task == "video_captioning" else prep.classification_prompt
        self._text_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        self._prompts: dict[int, list[int]] = {}
        self.prompt_ids = self.prompt_for(frames)

    def prompt_for(self, num_frames: int) -> list[int]:
        """The prompt of a clip of `num_frames` sampled frames (its visual tokens, then the text)."""
        ids = self._prompts.get(num_frames)
        if ids is None:
            ids = self._prompts[num_frames] = (self._bos()
                                               + self.family.visual_prefix(self.tokenizer, self.prep, num_frames)
                                               + self._text_ids)
        return ids

    def _bos(self) -> list[int]:
        """The BOS token, where the tokenizer has one (Qwen2's, VideoLLaMA 3's, has none)."""
        return [] if self.tokenizer.bos_token_id is None else [self.tokenizer.bos_token_id]

    def prompt_of(self, path: Path, pixels: torch.Tensor) -> list[int]:
        """The prompt of one clip: with dynamic resolution (VideoLLaMA 3) its visual tokens
        depend on its size, content (token compression) and frame times; else `prompt_for`."""
        if not dynamic(self.prep):
            return self.prompt_for(pixels.shape[0])
        if path not in self._times:
            self._times[path] = sampled_times(path, self.frames, self.fps)
        return self._bos() + clip_prefix(self.family, self.tokenizer, self.prep, pixels, self._times[path]) \
            + self._text_ids

    def __len__(self) -> int:
        return len(self.examples)

    def clip_frames(self, path: Path) -> torch.Tensor:
        """uint8 (T, 3, H, W) frames of one clip at the model's size (decoded once while the cache has room)."""
        cached = self._cache.get(path)
        if cached is not None:
            return cached
        raw = self.store.get(path) if self.store is not None else None
        if raw is None:
            # only the sampled frames are converted and resized, as the model's processor config says
            stats: dict = {}
            raw = decode_clip(self.prep, path, self.frames, fps=self.fps, stats=stats)
            self._times[path] = stats.get("times")
            self.decoded += 1
            if self.store is not None:
                self.store.put(path, raw)
        if raw.numel() <= self._cache_left:
            self._cache[path] = raw
            self._cache_left -= raw.numel()
        return raw

    def item(self, index: int) -> dict | None:
        """`self[index]`, or None for a clip that does not decode (recorded in `bad_clips`,
        which raises `TooManyBadClips` past its threshold); without `bad_clips`, InputError."""
        if index in self.bad:
            return None
        try:
            return self[index]
        except ClipError as exc:
            name = self.examples[index].file_name
            if self.bad_clips is None:
                raise InputError(f"unreadable clip {name}: {exc}") from None
            self.bad.add(index)
            self.bad_clips.add(name, str(exc))
            return None

    def items(self, indices: Iterable[int]) -> list[dict]:
        """The items of `indices` whose clips decode (see `item`)."""
        return [item for i in indices if (item := self.item(i)) is not None]

    def check_clips(self) -> None:
        """Decodes every clip once; raises InputError naming the first unreadable one (the
        engine no longer does this before training; `items` checks clips as they are read)."""
        for example in self.examples:
            try:
                self.clip_frames(example.path)
            except ClipError as exc:
                raise InputError(f"unreadable clip {example.file_name}: {exc}") from None

    def pixels(self, path: Path) -> torch.Tensor:
        return normalise(self.prep, self.clip_frames(path))

    def caption_ids(self, caption: str) -> list[int]:
        ids = self.tokenizer(" " + caption.strip(), add_special_tokens=False)["input_ids"]
        return ids[:MAX_CAPTION_TOKENS] + [self.tokenizer.eos_token_id]

    def __getitem__(self, index: int) -> dict:
        example = self.examples[index]
        item = {"frames": self.pixels(example.path), "index": index}
        prompt = self.prompt_of(example.path, item["frames"])
        item["prompt_ids"] = prompt
        if self.task == "video_captioning":
            target = self.caption_ids(example.caption or "")
            item["input_ids"] = prompt + target
            item["labels"] = [IGNORE_INDEX] * len(prompt) + target
        else:
            item["input_ids"] = list(prompt)
            item["class_label"] = self.label2id[example.label]
        return item


def collate(items: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pads token ids (labels with -100) and stacks frames (B, T, 3, S, S). Clips with
    fewer frames than the longest (fps sampling) are padded with zero frames; `frame_counts`
    then says how many of each clip's frames are real (the families mask the rest). Clips of
    different sizes (VideoLLaMA 3's dynamic resolution) stay a list of (T_b, 3, H_b, W_b)."""
    longest = max(len(i["input_ids"]) for i in items)
    counts = [i["frames"].shape[0] for i in items]
    most = max(counts)
    frames = [i["frames"] if i["frames"].shape[0] == most else
              torch.cat([i["frames"], i["frames"].new_zeros((most - i["frames"].shape[0],) + i["frames"].shape[1:])])
              for i in items]
    if len({f.shape[-2:] for f in frames}) > 1:  # dynamic resolution: a list of clips at their own sizes
        stacked, counts = [i["frames"] for i in items], [most] * len(items)  # (unpadded: no frame_counts)
    else:
        stacked = torch.stack(frames)
    batch = {
        "input_ids": torch.tensor([i["input_ids"] + [pad_id] * (longest - len(i["input_ids"])) for i in items]),
        "attention_mask": torch.tensor([[1] * len(i["input_ids"]) + [0] * (longest - len(i["input_ids"]))
                                        for i in items]),
        "frames": stacked,
        "index": torch.tensor([i["index"] for i in items]),
    }
    if len(set(counts)) > 1:
        batch["frame_counts"] = torch.tensor(counts)
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


class _PlannedBatches(torch.utils.data.Dataset):
    """Batch k of the plan, read (decoded) and collated: what a DataLoader worker produces."""

    def __init__(self, dataset: ClipDataset, plan: list[list[int]], pad_id: int) -> None:
        self.dataset, self.plan, self.pad_id = dataset, plan, pad_id

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, k: int) -> tuple[list[int], dict | None, int, list[tuple[int, str]]]:
        items, failed = [], []
        for i in self.plan[k]:
            if i in self.dataset.bad:
                continue
            try:
                items.append(self.dataset[i])
            except ClipError as exc:
                self.dataset.bad.add(i)  # this process's copy: its next epochs skip the clip at once
                failed.append((i, str(exc)))
        for item in items:
            item.pop("prompt_ids", None)
        return self.plan[k], (collate(items, self.pad_id) if items else None), len(items), failed


def _unbatched(sample):
    return sample


def _worker_init(worker_id: int) -> None:
    """A decoding worker leaves SIGTERM/SIGINT to the training process (which finishes its step
    and checkpoints: the workers must still answer until it closes them) and shares the
    in-memory frame budget with the other workers."""
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    info = torch.utils.data.get_worker_info()
    if info is not None:
        info.dataset.dataset._cache_left //= max(1, info.num_workers)


class BatchFeeder:
    """Reads the batches of `plan` (lists of dataset indices, in the order the loop will ask for
    them) ahead of the training loop in `workers` processes (a `torch.utils.data.DataLoader`;
    0: in this process, when asked), so decoding overlaps compute. The order is the plan's, so
    the seeded batch order and an exact resume are unchanged; the DataLoader draws its worker
    seeds from its own generator, never from the global RNG that dropout uses.

    `next_batch(indices)` returns (collated batch or None, number of clips in it); a clip that
    failed to decode is recorded here (`dataset.bad`, `bad_clips`, which raises past its
    threshold), as `ClipDataset.items` does."""

    def __init__(self, dataset: ClipDataset, plan: list[list[int]], pad_id: int, *, workers: int, seed: int,
                 prefetch: int = 2) -> None:
        self.dataset = dataset
        self.workers = workers
        options = dict(prefetch_factor=prefetch, worker_init_fn=_worker_init) if workers else {}
        self._loader = torch.utils.data.DataLoader(
            _PlannedBatches(dataset, plan, pad_id), batch_size=None, shuffle=False, num_workers=workers,
            collate_fn=_unbatched, generator=torch.Generator().manual_seed(seed), **options)
        self._iter = iter(self._loader) if plan else None

    def next_batch(self, indices: list[int]) -> tuple[dict | None, int]:
        if self._iter is None:
            raise RuntimeError("the batch plan is exhausted")
        try:
            planned, batch, count, failed = next(self._iter)
        except StopIteration:
            self._iter = None
            raise RuntimeError("the batch plan is exhausted") from None
        if list(planned) != list(indices):
            raise RuntimeError(f"batch plan out of step: expected {indices}, read {planned}")
        for i, reason in failed:
            self.dataset.bad.add(i)
            name = self.dataset.examples[i].file_name
            if self.dataset.bad_clips is None:
                raise InputError(f"unreadable clip {name}: {reason}")
            self.dataset.bad_clips.add(name, reason)
        return batch, count

    def close(self) -> None:
        """Stops the workers (also done when the feeder is garbage-collected)."""
        it, self._iter = self._iter, None
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()
