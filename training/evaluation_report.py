"""The final evaluation as the MLflow run keeps it (`python -m training evaluate --mlflow-run-id`).

Artifacts of the run, under `evaluation/`:

* `evaluation.json`: the whole report (what `GET /v1/trainings/{id}/evaluation` serves): task,
  split, held-out examples, the adapter's and the base model's metrics; classification adds
  per-class precision/recall/F1/support and the confusion matrix (with the label order) on each
  side, captioning the `samples` (up to `SAMPLES` held-out clips: reference, base caption,
  adapter caption);
* classification: `per_class.json` (an MLflow table: one row per label and model) and
  `confusion_matrix.png` (adapter and base side by side);
* captioning: `sample_captions.json` (an MLflow table).

The tables open in the run's Artifacts tab (and the evaluation view); the PNG shows inline.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("training")

FOLDER = "evaluation"
REPORT_FILE = f"{FOLDER}/evaluation.json"
PER_CLASS_TABLE = f"{FOLDER}/per_class.json"
CONFUSION_PNG = f"{FOLDER}/confusion_matrix.png"
SAMPLES_TABLE = f"{FOLDER}/sample_captions.json"
#: held-out clips whose captions the report shows
SAMPLES = 20


def caption_samples(report: dict[str, Any]) -> list[dict[str, str]]:
    """The reference, the base model's and the adapter's caption of the first held-out clips
    (from each side's `samples`, matched by file name)."""
    base = {s["file_name"]: s.get("generated", "") for s in (report.get("base") or {}).get("samples") or []}
    return [{"file_name": s["file_name"], "reference": s.get("caption", ""), "base": base.get(s["file_name"]),
             "adapter": s.get("generated", "")}
            for s in (report.get("adapter") or {}).get("samples") or []][:SAMPLES]


def confusion_figure(report: dict[str, Any]):
    """The confusion matrices of the adapter and the base model side by side (matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sides = [(name, report[name]["confusion_matrix"]) for name in ("adapter", "base")
             if isinstance((report.get(name) or {}).get("confusion_matrix"), dict)]
    fig, axes = plt.subplots(1, len(sides), figsize=(4.2 * len(sides), 4), squeeze=False)
    for ax, (name, cm) in zip(axes[0], sides):
        labels, matrix = cm["labels"], cm["matrix"]
        ax.imshow(matrix, cmap="Blues")
        ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
        ax.set_yticks(range(len(labels)), labels)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{name} (accuracy {report[name].get('accuracy', 0):.3f})")
        top = max((v for row in matrix for v in row), default=0)
        for i, row in enumerate(matrix):
            for j, value in enumerate(row):
                ax.text(j, i, str(value), ha="center", va="center", color="white" if value > top / 2 else "black")
    fig.tight_layout()
    return fig


def log_to_mlflow(tracking_uri: str, run_id: str, report: dict[str, Any]) -> None:
    """The report and its tables and picture as artifacts of the run (see the module)."""
    import pandas as pd
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    client.log_dict(run_id, report, REPORT_FILE)
    if report.get("task") == "video_classification":
        rows = [{"model": name, **row} for name in ("adapter", "base")
                for row in (report.get(name) or {}).get("per_class") or []]
        if rows:
            client.log_table(run_id, data=pd.DataFrame(rows), artifact_file=PER_CLASS_TABLE)
        try:
            figure = confusion_figure(report)
        except ImportError as exc:  # matplotlib missing on this worker: the JSON and table still tell
            log.warning("no confusion matrix picture: %s", exc)
        else:
            import matplotlib.pyplot as plt

            client.log_figure(run_id, figure, CONFUSION_PNG)
            plt.close(figure)
    elif report.get("samples"):
        client.log_table(run_id, data=pd.DataFrame(report["samples"]), artifact_file=SAMPLES_TABLE)
