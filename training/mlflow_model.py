"""A job's adapter as an MLflow model: what the registered model version holds, so that

    model = mlflow.pyfunc.load_model("models:/{user}~{output_name}/{version}")
    model.predict(pandas.DataFrame({"clip": ["/path/to/clip.mp4", ...]}))
    # -> DataFrame with a "prediction" column: the label (classification) or the caption

gives the predictions of `python -m training predict` (both run `training.inference.Predictor`).

The model folder (an MLflow pyfunc "python_model" flavor, logged as the run's `model` artifact
by the `register` task) holds the adapter's files as the artifact `adapter`, and in its
`model_config` the base model's location (`s3://BUCKET/models/{model_id}/`: the base weights are
not copied into every version) and the quantization. Loading it therefore needs what the engine
needs: this repository's `training` package importable with the `engine` dependencies (torch,
transformers, peft, bitsandbytes, PyAV), and read access to that S3 bucket (the `AWS_*`
variables, `AWS_ENDPOINT_URL_S3` for a non-AWS endpoint), or `model_config={"base_model": DIR}`
pointing at a local copy of the base model (`mlflow.pyfunc.load_model(uri, model_config=...)`).

Input schema (the signature): one string column `clip`, a path to a video file the loading
process can read. Output: one string column `prediction`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow.pyfunc

INPUT_COLUMN = "clip"
OUTPUT_COLUMN = "prediction"
#: the artifact of the job's MLflow run that holds the model (and the registered version's source)
MODEL_ARTIFACT = "model"
#: the engine packages a loading environment needs (their installed versions are recorded)
REQUIREMENTS = ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "av", "safetensors", "pandas",
                "mlflow-skinny")


class AdapterModel(mlflow.pyfunc.PythonModel):
    """The pyfunc model: loads the adapter onto its base at `load_context`, predicts clips."""

    def load_context(self, context) -> None:
        from training.inference import Predictor

        config = context.model_config or {}
        self.predictor = Predictor.load(config["base_model"], context.artifacts["adapter"],
                                        quantization=config.get("quantization", "nf4"))

    def predict(self, context, model_input, params: dict[str, Any] | None = None):
        import pandas as pd

        clips = list(model_input[INPUT_COLUMN]) if hasattr(model_input, "columns") else list(model_input)
        out = []
        for clip in clips:
            found = self.predictor.predict(clip)
            out.append(found["label"] if "label" in found else found["caption"])
        return pd.DataFrame({OUTPUT_COLUMN: out})


def signature():
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    return ModelSignature(inputs=Schema([ColSpec("string", INPUT_COLUMN)]),
                          outputs=Schema([ColSpec("string", OUTPUT_COLUMN)]))


def _requirements() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for name in REQUIREMENTS:
        try:
            out.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            out.append(name)
    return out


def save(folder: Path, adapter_dir: Path, base_model: str, quantization: str = "nf4") -> Path:
    """Writes the pyfunc model of the adapter in `adapter_dir` to `folder` (which must not exist)."""
    mlflow.pyfunc.save_model(
        str(folder), python_model=AdapterModel(), artifacts={"adapter": str(adapter_dir)},
        model_config={"base_model": base_model, "quantization": quantization}, signature=signature(),
        pip_requirements=_requirements())
    return folder
