"""Validates an extracted dataset folder: the annotation table with Great Expectations, every
clip with PyAV, and the statistics the platform shows (the report of the validation DAG).

Errors name the file and the row: rows are 1-based data rows of the annotation table (the
header of `metadata.csv` is not counted; row 1 is the first record, i.e. line 2 of a csv and
line 1 of a jsonl). For the class sub-folder layout the row is the clip's position in the
sorted listing. At most `max_errors` are reported, first rows first; `error_count` has the total.

`clips` lists every clip that decoded with its stats (file_name, codec, pix_fmt, container,
upright width/height, duration_s, fps, frames, rotation, has_audio); `video` summarises them
(min/max/mean). A clip is checked against the engine's limits (`training.data.limits`).
"""

from __future__ import annotations

import logging
import os
import statistics
from dataclasses import dataclass
from pathlib import Path

from training.data.dataset_format import (SPLITS, TASK_COLUMNS, VIDEO_EXTENSIONS, DatasetFormatError,
                                          DatasetTable, read_dataset)
from training.data.limits import CLIP_LIMITS, ClipLimits
from training.data.video_probe import ClipError, probe_clip

ROW_NUMBERING = "1-based data rows of the annotation table (header not counted)"
IGNORED_NAMES = ("__MACOSX",)


@dataclass(frozen=True)
class ValidationLimits:
    max_caption_length: int = 1000
    max_errors: int = 20
    #: the engine's (training.data.limits): a clip that validates is one the engine can decode
    clip: ClipLimits = CLIP_LIMITS


def dataset_files(root: str | Path) -> list[Path]:
    """The regular files that make up the dataset under `root` (what is uploaded and counted):
    hidden files/folders and `__MACOSX` are left out."""
    root = Path(root)
    files = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).parts
        if any(p.startswith(".") or p in IGNORED_NAMES for p in rel):
            continue
        if path.is_file() and not path.is_symlink():
            files.append(path)
    return files


def empty_report(dataset_id: str, errors: list[str]) -> dict:
    """The report of a dataset that could not be read at all (corrupt archive, no table...)."""
    return {"dataset_id": dataset_id, "valid": False, "errors": errors[:20],
            "error_count": len(errors), "row_numbering": ROW_NUMBERING, "file_count": 0,
            "total_size_bytes": 0, "clip_count": 0, "tasks": [], "labels": None, "captions": None,
            "splits": {}, "video": {}, "clips": [], "expectations": []}


class _Errors:
    """Problems keyed by (row index or -1 for the whole table, order found) for sorting."""

    def __init__(self) -> None:
        self.items: list[tuple[int, int, str]] = []

    def add(self, row: int, message: str) -> None:
        self.items.append((row, len(self.items), message))

    def sorted(self) -> list[str]:
        return [m for _, _, m in sorted(self.items)]


def validate_dataset(folder: str | Path, dataset_id: str = "",
                     limits: ValidationLimits | None = None) -> dict:
    """Validates the extracted dataset in `folder`; returns the report dict (see module doc)."""
    limits = limits or ValidationLimits()
    try:
        table = read_dataset(folder)
    except DatasetFormatError as exc:
        report = empty_report(dataset_id, [str(exc)])
        _add_file_stats(report, Path(folder))
        return report
    files = dataset_files(table.root)
    present = {p.relative_to(table.root).as_posix() for p in files}
    errors = _Errors()
    where = _locator(table)

    expectations = _run_expectations(table, present, limits, errors, where)
    _check_train_split_classes(table, errors)
    clip_stats = _probe_clips(table, present, limits, errors, where)

    messages = errors.sorted()
    frame = table.frame
    report = {
        "dataset_id": dataset_id,
        "valid": not messages,
        "errors": messages[:limits.max_errors],
        "error_count": len(messages),
        "row_numbering": ROW_NUMBERING,
        "source": table.source,
        "clip_count": int(len(frame)),
        "tasks": [task for task, column in TASK_COLUMNS.items() if column in frame.columns],
        "labels": _label_counts(frame),
        "captions": _caption_stats(frame),
        "splits": _split_counts(frame),
        "video": _video_stats(clip_stats),
        "clips": clip_stats,
        "expectations": expectations,
    }
    _add_file_stats(report, table.root)
    return report


def _add_file_stats(report: dict, root: Path) -> None:
    files = dataset_files(root) if root.is_dir() else []
    report["file_count"] = len(files)
    report["total_size_bytes"] = sum(p.stat().st_size for p in files)


def _locator(table: DatasetTable):
    """`where(row_index)` -> 'clips/a.mp4 (metadata.csv row 3)'."""
    source = table.source if table.source != "folders" else "class folders"

    def where(index: int) -> str:
        name = table.frame.at[index, "file_name"]
        place = f"{source} row {index + 1}"
        return f"{name} ({place})" if name else place
    return where


# --- Great Expectations on the annotation table -------------------------------------------

def _suite(table: DatasetTable, present: set[str], limits: ValidationLimits):
    """(expectation, per-row message, whole-table message) for the columns the table has."""
    import great_expectations as gx

    E = gx.expectations
    columns = set(table.frame.columns)
    video_regex = r"(?i)\.(?:" + "|".join(e.lstrip(".") for e in VIDEO_EXTENSIONS) + r")$"
    checks = [
        (E.ExpectColumnValuesToNotBeNull(column="file_name"), "file_name is empty", None),
        (E.ExpectColumnValuesToBeUnique(column="file_name"),
         "the clip is listed more than once", None),
        (E.ExpectColumnValuesToMatchRegex(column="file_name", regex=video_regex),
         f"not a video file (expected {', '.join(VIDEO_EXTENSIONS)})", None),
        (E.ExpectColumnValuesToBeInSet(column="file_name", value_set=sorted(present)),
         "no such file in the archive", None),
    ]
    if "label" in columns:
        checks += [
            (E.ExpectColumnValuesToNotBeNull(column="label"), "label is empty", None),
            (E.ExpectColumnUniqueValueCountToBeBetween(column="label", min_value=2),
             None, "column 'label' needs at least two classes with at least one example each"),
        ]
    if "caption" in columns:
        checks += [
            (E.ExpectColumnValuesToNotBeNull(column="caption"), "caption is empty", None),
            (E.ExpectColumnValuesToMatchRegex(column="caption", regex=r"\S"),
             "caption is empty", None),
            (E.ExpectColumnValueLengthsToBeBetween(column="caption",
                                                   max_value=limits.max_caption_length),
             f"caption is longer than {limits.max_caption_length} characters", None),
        ]
    if "split" in columns:
        checks.append((E.ExpectColumnValuesToBeInSet(column="split", value_set=list(SPLITS)),
                       f"split is not one of {', '.join(SPLITS)}", None))
    return checks


def _ephemeral_context():
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    import great_expectations as gx
    from great_expectations.data_context.types.base import (DataContextConfig,
                                                            InMemoryStoreBackendDefaults,
                                                            ProgressBarsConfig)

    config = DataContextConfig(store_backend_defaults=InMemoryStoreBackendDefaults(),
                               progress_bars=ProgressBarsConfig(globally=False))
    return gx.get_context(mode="ephemeral", project_config=config)


def _run_expectations(table: DatasetTable, present: set[str], limits: ValidationLimits,
                      errors: _Errors, where) -> list[dict]:
    import great_expectations as gx

    source = table.source if table.source != "folders" else "class folders"
    if not any(column in table.frame.columns for column in TASK_COLUMNS.values()):
        errors.add(-1, f"{source}: needs a 'label' (classification) or 'caption' (captioning) "
                       "column")
    if table.frame.empty:
        errors.add(-1, f"{source}: the annotation table has no rows")
        return []
    checks = _suite(table, present, limits)
    context = _ephemeral_context()
    batch_definition = (context.data_sources.add_pandas(name="dataset")
                        .add_dataframe_asset(name="annotations")
                        .add_batch_definition_whole_dataframe("annotations"))
    suite = context.suites.add(gx.ExpectationSuite(name="dataset_annotations"))
    for expectation, _, _ in checks:
        suite.add_expectation(expectation)
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(data=batch_definition, suite=suite, name="dataset_annotations"))
    result = definition.run(batch_parameters={"dataframe": table.frame},
                            result_format="COMPLETE")

    by_id = {r.expectation_config.id: r for r in result.results}
    summary = []
    for expectation, row_message, table_message in checks:
        outcome = by_id[expectation.id]
        details = outcome.result or {}
        summary.append(_summarise(outcome, details))
        if outcome.success:
            continue
        if row_message:
            for index in details.get("unexpected_index_list") or []:
                errors.add(int(index), f"{where(int(index))}: {row_message}")
        elif table_message:
            observed = details.get("observed_value")
            errors.add(-1, f"{source}: {table_message} (found {observed})")
        if outcome.exception_info and outcome.exception_info.get("raised_exception"):
            errors.add(-1, f"{source}: check {summary[-1]['expectation']} could not run "
                           f"({outcome.exception_info.get('exception_message')})")
    return summary


def _summarise(outcome, details: dict) -> dict:
    config = outcome.expectation_config
    kwargs = {k: v for k, v in config.kwargs.items() if k not in ("batch_id", "value_set")}
    item = {"expectation": config.type, **kwargs, "success": bool(outcome.success)}
    for key in ("element_count", "unexpected_count", "observed_value"):
        if key in details:
            item[key] = details[key]
    if "value_set" in config.kwargs:
        item["value_set_size"] = len(config.kwargs["value_set"])
    return item


def _check_train_split_classes(table: DatasetTable, errors: _Errors) -> None:
    """Every class needs a training example when the table assigns splits."""
    frame = table.frame
    if "label" not in frame.columns or "split" not in frame.columns:
        return
    train = frame[frame["split"].isna() | (frame["split"] == "train")]
    missing = sorted(set(frame["label"].dropna()) - set(train["label"].dropna()))
    if missing:
        errors.add(-1, f"{table.source}: class(es) {', '.join(repr(m) for m in missing)} have no "
                       "example in the train split")


# --- PyAV on every clip -----------------------------------------------------------------------

def _probe_clips(table: DatasetTable, present: set[str], limits: ValidationLimits,
                 errors: _Errors, where) -> list[dict]:
    stats = []
    seen: set[str] = set()
    for index, name in table.frame["file_name"].items():
        if not name or name not in present or name in seen:
            continue  # missing or repeated names are reported by the table checks
        seen.add(name)
        if not name.lower().endswith(VIDEO_EXTENSIONS):
            continue
        try:
            stats.append({"file_name": name, **probe_clip(table.clip_path(name), limits.clip).as_dict()})
        except ClipError as exc:
            errors.add(int(index), f"{where(int(index))}: {exc}")
    return stats


# --- statistics ---------------------------------------------------------------------------

def _label_counts(frame) -> dict | None:
    if "label" not in frame.columns:
        return None
    return {str(k): int(v) for k, v in frame["label"].dropna().value_counts().sort_index().items()}


def _caption_stats(frame) -> dict | None:
    if "caption" not in frame.columns:
        return None
    lengths = [len(c) for c in frame["caption"].dropna()]
    if not lengths:
        return {"count": 0, "min_length": None, "max_length": None, "mean_length": None}
    return {"count": len(lengths), "min_length": min(lengths), "max_length": max(lengths),
            "mean_length": round(statistics.fmean(lengths), 2)}


def _split_counts(frame) -> dict:
    if "split" not in frame.columns:
        return {"unassigned": int(len(frame))}
    counts = frame["split"].fillna("unassigned").value_counts()
    return {str(k): int(v) for k, v in counts.sort_index().items()}


def _video_stats(clips: list[dict]) -> dict:
    out = {}
    for key in ("duration_s", "frames", "width", "height", "fps"):
        values = [c[key] for c in clips if c.get(key) is not None]
        if values:
            out[key] = {"min": min(values), "max": max(values),
                        "mean": round(statistics.fmean(values), 4)}
    return out
