"""Every training parameter walks the whole path, each layer checked for every field of the one
definition (`training.params.TrainingParams`): the API's request schema (OpenAPI) and body ->
the DAG run conf and its Airflow Param schemas -> the engine's argv -> the engine's parsed
arguments -> the params the engine gives MLflow. Adding a field to the definition without its
use in a layer fails here."""

from __future__ import annotations

import jsonschema

from training import job_spec, params
from training.catalog import load_catalog

MODEL = load_catalog().get("videollama-tiny-classification")
#: a value for every parameter, none of them its default (so a layer that drops one is seen)
CHOSEN = {"epochs": 2, "learning_rate": 0.003, "batch_size": 2, "gradient_accumulation_steps": 2,
          "max_steps": 1, "warmup_ratio": 0.1, "weight_decay": 0.01, "lora_rank": 4, "lora_alpha": 12,
          "lora_dropout": 0.1, "target_modules": ["q_proj", "v_proj"], "frames": 2, "frame_sampling": "fps",
          "sampling_fps": 2.5, "eval_every_epochs": 2,
          "checkpoint_every_steps": 3, "seed": 7}


def test_the_chosen_values_cover_every_parameter_and_none_is_a_default():
    assert set(CHOSEN) == set(params.PARAM_NAMES)
    defaults = params.TrainingParams().model_dump()
    assert all(CHOSEN[name] != defaults[name] for name in CHOSEN)


def test_the_api_request_schema_documents_every_parameter():
    from api.main import create_app

    schema = create_app().openapi()["components"]["schemas"]
    request = schema["TrainingRequest"]["properties"]["training_params"]
    ref = request.get("$ref") or next(o["$ref"] for o in request.get("allOf", request.get("anyOf", [])) if "$ref" in o)
    definition = schema[ref.rsplit("/", 1)[-1]]
    assert definition["additionalProperties"] is False
    assert set(definition["properties"]) == set(params.PARAM_NAMES)
    for name, prop in definition["properties"].items():
        assert prop["description"] and prop["title"], name
        # a default, or nullable with null meaning the model's default (FastAPI omits "default": null)
        assert "default" in prop or ({"type": "null"} in prop["anyOf"] and "null" in prop["description"]), name
    epochs = definition["properties"]["epochs"]
    assert (epochs["minimum"], epochs["maximum"], epochs["default"]) == (1, 100, 3)


def test_every_parameter_reaches_the_engine_and_mlflow(tmp_path, tiny_models, colour_dataset, monkeypatch):
    from api.schemas.trainings import TrainingRequest
    from training import tracking
    from training.cli import main

    # 1. the API's request body
    body = TrainingRequest.model_validate({"model_id": MODEL.id, "dataset_id": "d1", "output_name": "o",
                                           "training_params": CHOSEN})
    assert body.training_params.model_dump() == CHOSEN

    # 2. the DAG run conf, valid for the DAG's Params (Airflow checks each against its schema)
    resolved = job_spec.resolve_job_params(MODEL, body.training_params)
    conf = job_spec.job_conf("job-1", "ada", MODEL.id, "d1", "o", resolved)
    assert job_spec.conf_params(conf) == CHOSEN
    for name, schema in params.airflow_param_schemas().items():
        jsonschema.validate(conf[name], {k: v for k, v in schema.items() if k != "default"})
    assert job_spec.validate_job_conf(conf, [MODEL.model_type]) == []

    # 3. the engine's argv, 4. its parsed arguments, 5. the params it gives MLflow
    argv = params.cli_args(resolved)
    assert {a[2:].replace("-", "_") for a in argv if a.startswith("--")} == set(params.PARAM_NAMES)
    started: dict = {}

    class Recording(tracking.NullTracker):
        def start(self, **kwargs) -> None:
            started.update(kwargs)
            self.run_id, self.experiment_id = "r" * 32, "1"

    parsed: dict = {}
    from training import trainer

    real_run = trainer._run

    def spy(args, output, result):
        parsed["params"] = args.params
        return real_run(args, output, result)

    monkeypatch.setattr(tracking, "make_tracker", lambda uri: Recording())
    monkeypatch.setattr(trainer, "_run", spy)
    model = tiny_models("video_llama", "video_classification", MODEL.id)
    assert main(["run", "--model", str(model), "--data", str(colour_dataset), "--task", MODEL.model_type,
                 "--output", str(tmp_path / "out"), "--mlflow-uri", "", *argv]) == 0
    assert parsed["params"].model_dump() == CHOSEN
    logged = started["params"]
    assert {name: logged[name] for name in params.PARAM_NAMES} == params.mlflow_params(resolved)
    assert logged["target_modules"] == "q_proj,v_proj" and logged["lora_alpha"] == "12"
