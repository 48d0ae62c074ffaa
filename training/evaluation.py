"""Held-out metrics. Captioning: eval loss (caption tokens only), BLEU (sacrebleu, 0..100) and
ROUGE-L F1 (rouge-score, 0..1) of greedy generations. Classification: eval loss, accuracy,
macro-F1 (over the labels present in the references or the predictions, as scikit-learn does),
per-class precision/recall/F1/support and the confusion matrix (over every label of the model)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from training.data.loader import ClipDataset, collate
from training.modeling import batch_loss, classification_logits, model_inputs, unwrap
from training.models.base import Family, Preprocessing


def macro_f1(truth: list[int], pred: list[int]) -> float:
    labels = sorted(set(truth) | set(pred))
    scores = []
    for label in labels:
        tp = sum(t == label and p == label for t, p in zip(truth, pred))
        fp = sum(t != label and p == label for t, p in zip(truth, pred))
        fn = sum(t == label and p != label for t, p in zip(truth, pred))
        scores.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return sum(scores) / len(scores) if scores else 0.0


def per_class_report(truth: list[int], pred: list[int], id2label: dict[int, str] | None) -> dict:
    """Per-class precision, recall, F1 and support, and the confusion matrix (rows: the true
    label, columns: the predicted one), over every label of the model in the order of its ids."""
    ids = sorted(id2label) if id2label else sorted(set(truth) | set(pred))
    names = [str((id2label or {}).get(i, i)) for i in ids]
    matrix = [[sum(t == a and p == b for t, p in zip(truth, pred)) for b in ids] for a in ids]
    rows = []
    for k, name in enumerate(names):
        tp = matrix[k][k]
        predicted = sum(matrix[r][k] for r in range(len(ids)))
        support = sum(matrix[k])
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        rows.append({"label": name, "precision": precision, "recall": recall, "f1": f1, "support": support})
    return {"per_class": rows, "confusion_matrix": {"labels": names, "matrix": matrix}}


def caption_scores(predictions: list[str], references: list[str]) -> dict[str, float]:
    import sacrebleu
    from rouge_score import rouge_scorer

    bleu = sacrebleu.corpus_bleu(predictions, [references]).score
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    rouge = [scorer.score(ref, pred)["rougeL"].fmeasure for pred, ref in zip(predictions, references)]
    return {"bleu": float(bleu), "rougeL": float(sum(rouge) / max(len(rouge), 1))}


@torch.no_grad()
def generate_captions(model, family: Family, prep: Preprocessing, dataset: ClipDataset, indices: list[int],
                      dev: torch.device, dtype: torch.dtype) -> list[str]:
    """Greedy captions, one clip at a time (no padding inside the prompt)."""
    tokenizer = dataset.tokenizer
    generator = unwrap(model)
    captions = []
    for index in indices:
        item = dataset[index]
        item = dict(item, input_ids=list(item["prompt_ids"]))
        item.pop("labels", None)
        batch = collate([item], tokenizer.pad_token_id)
        inputs = model_inputs(family, prep, batch, dev, dtype)
        out = generator.generate(**inputs, max_new_tokens=prep.max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        new = out[0, inputs["input_ids"].shape[1]:]
        captions.append(tokenizer.decode(new, skip_special_tokens=True).strip())
    return captions


@torch.no_grad()
def evaluate(model, family: Family, task: str, prep: Preprocessing, dataset: ClipDataset, *,
             dev: torch.device, dtype: torch.dtype, batch_size: int, id2label: dict[int, str] | None = None,
             should_stop: Callable[[], bool] = lambda: False, samples: int = 5) -> dict:
    """Metrics of `model` on every example of `dataset` (empty dict when stopped midway)."""
    was_training = model.training
    model.eval()
    try:
        losses, weights, truth, pred, seen = [], [], [], [], []
        for start in range(0, len(dataset), batch_size):
            if should_stop():
                return {}
            items = dataset.items(range(start, min(start + batch_size, len(dataset))))  # skips bad clips
            if not items:
                continue
            batch = collate(items, dataset.tokenizer.pad_token_id)
            loss, logits = batch_loss(model, family, task, prep, batch, dev, dtype)
            losses.append(float(loss))
            weights.append(len(batch["index"]))
            seen += batch["index"].tolist()
            if logits is not None:
                truth += batch["class_labels"].tolist()
                pred += logits.argmax(-1).cpu().tolist()
        metrics: dict = {"eval_loss": sum(l * w for l, w in zip(losses, weights)) / max(sum(weights), 1),
                         "eval_examples": len(seen)}
        if task == "video_classification":
            metrics["accuracy"] = sum(t == p for t, p in zip(truth, pred)) / max(len(truth), 1)
            metrics["macro_f1"] = macro_f1(truth, pred)
            metrics.update(per_class_report(truth, pred, id2label))
            names = id2label or {}
            metrics["samples"] = [{"file_name": dataset.examples[i].file_name, "label": names.get(t, t),
                                   "predicted": names.get(p, p)} for i, t, p in zip(seen, truth, pred)][:samples]
        else:
            indices = seen
            predictions = []
            for chunk in range(0, len(indices), 8):
                if should_stop():
                    return {}
                predictions += generate_captions(model, family, prep, dataset, indices[chunk:chunk + 8], dev, dtype)
            references = [dataset.examples[i].caption or "" for i in indices]
            metrics.update(caption_scores(predictions, references))
            metrics["samples"] = [{"file_name": dataset.examples[i].file_name, "caption": references[k],
                                   "generated": predictions[k]} for k, i in enumerate(indices[:samples])]
        return metrics
    finally:
        model.train(was_training)


def classify(model, family: Family, prep: Preprocessing, dataset: ClipDataset, index: int,
             dev: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Class probabilities of one example."""
    batch = collate([dataset[index]], dataset.tokenizer.pad_token_id)
    with torch.no_grad():
        logits = classification_logits(model, family, model_inputs(family, prep, batch, dev, dtype))
    return logits.softmax(-1)[0].cpu()
