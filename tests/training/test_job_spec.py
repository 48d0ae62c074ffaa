"""The training job: its request checks (parameters through `training.params`, the model's
rules), the flat DAG run conf, its schema agreeing with the checks, states and stages."""

from __future__ import annotations

import itertools
import subprocess
import sys

import jsonschema
import pytest

from training import job_spec, params
from training.catalog import load_catalog
from training.job_spec import (JobState, Stage, job_stage, job_state, resolve_job_params, validate_job_conf,
                               validate_job_request)

CATALOG = load_catalog()
CAPTIONING = CATALOG.get("flamingo-tiny-captioning")        # ranks 1..16, default alpha 16
CLASSIFICATION = CATALOG.get("videollama-tiny-classification")
BIG = CATALOG.get("videollama3-7b-captioning")               # ranks 4..128
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]  # the default


def good_params(**changes):
    return {"epochs": 2, "learning_rate": 1e-3, "batch_size": 2, "lora_rank": 4, "lora_alpha": 8,
            "lora_dropout": 0.1, "target_modules": ["q_proj", "v_proj"]} | changes


def good_conf(**changes):
    conf = {"job_id": "0f1e2d3c-job", "user": "user-1", "model_id": CAPTIONING.id,
            "dataset_id": "ds-1", "output_name": "my-adapter_v1.0", "max_runtime_minutes": 90, **good_params()}
    conf.update(changes)
    return conf


params_with = good_params


# ---------------------------------------------------------------- every rule, one by one

def test_a_good_request_has_no_problem():
    assert validate_job_request(CAPTIONING, ["video_captioning"], params_with(), "ok") == []
    assert validate_job_conf(good_conf(), ["video_captioning", "video_classification"]) == []


def test_an_empty_request_takes_every_default():
    assert validate_job_request(CAPTIONING, ["video_captioning"], {}) == []
    assert validate_job_request(CAPTIONING, ["video_captioning"], None) == []


@pytest.mark.parametrize("field,value,expected", [
    ("epochs", 0, "epochs: input should be greater than or equal to 1, got 0"),
    ("epochs", 101, "epochs: input should be less than or equal to 100, got 101"),
    ("epochs", 2.5, "epochs: input should be a valid integer, got 2.5"),
    ("epochs", "3", "epochs: input should be a valid integer, got '3'"),
    ("epochs", True, "epochs: input should be a valid integer, got True"),
    ("learning_rate", 0, "learning_rate: input should be greater than 0, got 0"),
    ("learning_rate", -1e-4, "learning_rate: input should be greater than 0"),
    ("learning_rate", 1.5, "learning_rate: input should be less than or equal to 1, got 1.5"),
    ("learning_rate", "fast", "learning_rate: input should be a valid number"),
    ("learning_rate", float("nan"), "learning_rate: input should be a finite number"),
    ("batch_size", 0, "batch_size: input should be greater than or equal to 1, got 0"),
    ("batch_size", 65, "batch_size: input should be less than or equal to 64, got 65"),
    ("gradient_accumulation_steps", 0, "gradient_accumulation_steps: input should be greater than or equal to 1"),
    ("max_steps", 0, "max_steps: input should be greater than or equal to 1, got 0"),
    ("warmup_ratio", 1, "warmup_ratio: input should be less than 1, got 1"),
    ("weight_decay", -0.1, "weight_decay: input should be greater than or equal to 0"),
    ("frames", 257, "frames: input should be less than or equal to 256, got 257"),
    ("eval_every_epochs", 0, "eval_every_epochs: input should be greater than or equal to 1"),
    ("seed", -1, "seed: input should be greater than or equal to 0, got -1"),
    ("lora_alpha", 0, "lora_alpha: input should be greater than or equal to 1"),
    ("lora_alpha", 1.5, "lora_alpha: input should be a valid integer"),
    ("lora_dropout", -0.1, "lora_dropout: input should be greater than or equal to 0, got -0.1"),
    ("lora_dropout", 1, "lora_dropout: input should be less than 1, got 1"),
    ("lora_rank", 0, "lora_rank: input should be greater than or equal to 1, got 0"),
    ("lora_rank", 17, "lora_rank must be between 1 and 16 for model flamingo-tiny-captioning, got 17"),
    ("target_modules", "q_proj", "target_modules: input should be a valid list"),
    ("target_modules", [1], "target_modules: 1 is not a known module"),
    ("target_modules", ["q_proj", "vision_tower"], "target_modules: 'vision_tower' is not a known module"),
    ("target_modules", ["q_proj", "q_proj"], "target_modules: q_proj listed more than once"),
])
def test_each_rule_names_the_field_and_the_value(field, value, expected):
    problems = validate_job_request(CAPTIONING, None, params_with(**{field: value}))
    assert len(problems) == 1, problems
    assert problems[0].startswith(expected), problems


def test_the_rank_range_is_the_models():
    assert validate_job_request(BIG, None, {"lora_rank": 128}) == []
    assert validate_job_request(BIG, None, {"lora_rank": 3}) == [
        "lora_rank must be between 4 and 128 for model videollama3-7b-captioning, got 3"]
    assert validate_job_request(CAPTIONING, None, {"lora_rank": 16}) == []


def test_an_unknown_parameter_is_named():
    assert validate_job_request(CAPTIONING, None, {"epoch": 3}) == [
        "unknown training parameter 'epoch' (known: epochs, learning_rate, batch_size, "
        "gradient_accumulation_steps, max_steps, warmup_ratio, weight_decay, lora_rank, lora_alpha, "
        "lora_dropout, target_modules, frames, frame_sampling, sampling_fps, eval_every_epochs, checkpoint_every_steps, "
        "seed)"]


def test_training_params_must_be_an_object():
    assert validate_job_request(CAPTIONING, None, [1, 2]) == ["training_params must be an object, got list"]


def test_target_modules_allowed_depend_on_the_architecture(monkeypatch):
    from training import architectures

    narrow = architectures.ARCHITECTURES["flamingo"].__class__(
        name="flamingo", model_class="IdeficsForVisionText2Text",
        allowed_target_modules=("q_proj", "v_proj"), default_target_modules=("q_proj",),
        target_regex="x")
    monkeypatch.setitem(architectures.ARCHITECTURES, "flamingo", narrow)
    assert validate_job_request(CAPTIONING, None, {"target_modules": ["q_proj", "o_proj"]}) == [
        "target_modules: 'o_proj' is not allowed for flamingo models (allowed: q_proj, v_proj)"]


@pytest.mark.parametrize("model,tasks,missing", [
    (CAPTIONING, ["video_classification"], "caption"),
    (CLASSIFICATION, ["video_captioning"], "label"),
    (CLASSIFICATION, [], "label"),
])
def test_the_dataset_must_fit_the_model_type(model, tasks, missing):
    problems = validate_job_request(model, tasks, {})
    assert len(problems) == 1
    assert f"needs a dataset for {model.model_type} (a '{missing}' for every clip)" in problems[0]
    assert validate_job_request(model, [model.model_type], {}) == []


@pytest.mark.parametrize("name", ["", "-lead", ".hidden", "has space", "a/b", "x" * 65, "é", 7, None])
def test_output_name_must_be_safe(name):
    conf = good_conf(output_name=name)
    problems = validate_job_conf(conf)
    assert len(problems) == 1 and problems[0].startswith("output_name must be 1 to 64 characters")


@pytest.mark.parametrize("name", ["a", "A1", "my-adapter_v1.0", "x" * 64])
def test_safe_output_names_pass(name):
    assert validate_job_conf(good_conf(output_name=name)) == []


def test_conf_ids_and_model_are_checked():
    problems = validate_job_conf(good_conf(job_id="../x", user="", model_id="gpt-5"))
    assert problems[0].startswith("job_id must be")
    assert problems[1].startswith("user must be")
    assert problems[2].startswith("model_id 'gpt-5' is not in the catalog (known: idefics-9b-captioning")


def test_every_problem_is_reported_at_once():
    problems = validate_job_request(CAPTIONING, ["video_classification"],
                                    {"epochs": 0, "batch_size": 0, "lora_rank": 99}, "bad name")
    assert len(problems) == 4  # epochs, batch_size, the dataset's fit, the name (rank: once the rest is valid)
    problems = validate_job_request(CAPTIONING, ["video_classification"], {"lora_rank": 99}, "bad name")
    assert len(problems) == 3


# ---------------------------------------------------------------- the Airflow schema equals the checks

VALUES = [None, True, False, -1, 0, 0.5, 1, 1.0, 2.5, 3, 16, 17, 64, 65, 100, 101, 128, 129, 1024,
          1025, 1e-9, 1.5, "3", [], ["q_proj"], ["nope"], ["q_proj", "q_proj"], [3], {}]


@pytest.mark.parametrize("field", list(params.PARAM_NAMES))
def test_the_airflow_param_schema_accepts_exactly_what_the_api_accepts(field):
    """Airflow validates a triggered conf with each Param's JSON schema; the API and the DAG's
    validate_inputs with `TrainingParams`. Both must agree on every value."""
    schema = params.airflow_param_schemas()[field]
    validator = jsonschema.Draft202012Validator({k: v for k, v in schema.items() if k != "default"})
    for value in VALUES:
        schema_ok = validator.is_valid(value)
        check_ok = params.problems_of({field: value}) == []
        assert schema_ok == check_ok, (field, value, params.problems_of({field: value}))


def test_every_param_has_a_title_description_and_a_valid_default():
    schemas = params.airflow_param_schemas()
    assert list(schemas) == list(params.PARAM_NAMES)
    for name, schema in schemas.items():
        assert schema["title"] and schema["description"], name
    assert params.problems_of({name: schema["default"] for name, schema in schemas.items()}) == []


def test_the_conf_schema_covers_the_conf():
    schema = job_spec.job_field_schemas()
    assert set(schema) == set(job_spec.JOB_FIELDS)
    conf = good_conf()
    for field, field_schema in schema.items():
        jsonschema.validate(conf[field], field_schema)
    for bad in ({"output_name": "bad name"}, {"model_id": "gpt-5"}, {"job_id": "../x"}, {"max_runtime_minutes": 0},
                {"max_runtime_minutes": job_spec.MAX_RUNTIME_MINUTES_LIMIT + 1}, {"max_runtime_minutes": 1.5}):
        ((field, value),) = bad.items()
        assert not jsonschema.Draft202012Validator(schema[field]).is_valid(value)
        assert validate_job_conf(good_conf(**bad))


# ---------------------------------------------------------------- defaults

def test_defaults_come_from_the_definition_and_the_model():
    resolved = resolve_job_params(CAPTIONING, {})
    assert resolved.model_dump() == {
        "epochs": 3, "learning_rate": 2e-4, "batch_size": 4, "gradient_accumulation_steps": 1, "max_steps": None,
        "warmup_ratio": 0.0, "weight_decay": 0.0, "lora_rank": 8, "lora_alpha": CAPTIONING.default_alpha,
        "lora_dropout": 0.05, "target_modules": ALL_LINEAR, "frames": CAPTIONING.frames,
        "frame_sampling": "uniform", "sampling_fps": None, "eval_every_epochs": 1,
        "checkpoint_every_steps": None, "seed": 42}
    assert resolve_job_params(BIG, {}).lora_rank == 8 and resolve_job_params(BIG, {}).frames == 8
    assert resolve_job_params(BIG, {"lora_rank": 4}).lora_rank == 4
    assert resolve_job_params(CAPTIONING, {"target_modules": []}).target_modules == ALL_LINEAR
    assert resolve_job_params(CAPTIONING, {"epochs": 2.0}).epochs == 2
    tiny_range = load_catalog().get("flamingo-tiny-classification")
    assert resolve_job_params(tiny_range, {"lora_alpha": 5}).lora_alpha == 5


def test_resolving_a_bad_request_raises():
    with pytest.raises(params.InvalidParams, match="lora_rank must be between 1 and 16"):
        resolve_job_params(CAPTIONING, {"lora_rank": 32})


def test_the_conf_carries_every_resolved_parameter():
    resolved = resolve_job_params(CAPTIONING, {"learning_rate": 1e-3})
    conf = job_spec.job_conf("j1", "u1", CAPTIONING.id, "d1", "out", resolved)
    assert job_spec.conf_params(conf) == resolved.model_dump()
    assert validate_job_conf(conf, [CAPTIONING.model_type]) == []


def test_cli_args_follow_the_engine_contract():
    args = params.cli_args(resolve_job_params(CAPTIONING, {"learning_rate": 1e-3}))
    assert args == ["--epochs", "3", "--learning-rate", "0.001", "--batch-size", "4",
                    "--gradient-accumulation-steps", "1", "--warmup-ratio", "0.0", "--weight-decay", "0.0",
                    "--lora-rank", "8", "--lora-alpha", "16", "--lora-dropout", "0.05",
                    "--target-modules", ",".join(ALL_LINEAR), "--frames", "4", "--frame-sampling", "uniform",
                    "--eval-every-epochs", "1",
                    "--seed", "42"]


# ---------------------------------------------------------------- states and stages

@pytest.mark.parametrize("run_state,stop,expected", [
    ("queued", False, JobState.QUEUED), ("running", False, JobState.RUNNING),
    ("success", False, JobState.COMPLETED), ("success", True, JobState.COMPLETED),
    ("failed", False, JobState.FAILED), (None, False, JobState.FAILED), (None, True, JobState.STOPPED),
])
def test_dag_run_states_map_to_job_states(run_state, stop, expected):
    assert job_state(run_state, stop_requested=stop) == expected


def test_a_stopped_run_is_stopped_only_once_its_training_process_is_gone():
    train_ran = {"validate_inputs": "success", "prepare": "success", "train": "failed", "evaluate": "skipped"}
    # the run reads failed at once; the train task's process runs until Airflow kills it
    assert job_state("failed", stop_requested=True, task_states=train_ran, training_exited=False) == "running"
    assert job_state("failed", stop_requested=True, task_states=train_ran, training_exited=True) == "stopped"
    # nothing read about the process (the list path): cannot tell
    assert job_state("failed", stop_requested=True) is None
    assert job_state("failed", stop_requested=True, task_states=train_ran) is None
    # stopped before the training ran: nothing to wait for
    before_train = {"validate_inputs": "success", "prepare": "failed", "train": "skipped"}
    assert job_state("failed", stop_requested=True, task_states=before_train, training_exited=False) == "stopped"
    assert job_state("failed", stop_requested=True, task_states={}, training_exited=False) == "stopped"
    # without a stop request the evidence does not matter
    assert job_state("failed", task_states=train_ran, training_exited=False) == "failed"


def test_a_stop_that_loses_the_race_to_the_end_of_training_changes_nothing():
    trained = {"validate_inputs": "success", "prepare": "success", "train": "success", "evaluate": "running"}
    assert job_state("running", stop_requested=True, task_states=trained) == "running"
    assert job_stage(trained, stopping=False) == "evaluating"
    assert job_state("success", stop_requested=True, task_states={**trained, "evaluate": "success"}) == "completed"
    # a later task that fails on its own is a failure, not a stop
    broken = {**trained, "evaluate": "failed", "register": "upstream_failed"}
    assert job_state("failed", stop_requested=True, task_states=broken, training_exited=True) == "failed"


def test_a_running_run_with_no_task_started_is_still_queued():
    assert job_state("running", task_states={"validate_inputs": "scheduled", "train": None}) == "queued"
    assert job_state("running", task_states={"validate_inputs": "running"}) == "running"
    with pytest.raises(ValueError):
        job_state("exploded")


def test_states_and_stages_are_the_documented_names():
    assert job_spec.JOB_STATES == ("queued", "running", "completed", "failed", "stopped")
    assert job_spec.STAGES == ("validating", "downloading", "training", "evaluating", "registering", "stopping",
                              "finished")
    assert {str(s) for s in job_spec.TERMINAL_STATES} == {"completed", "failed", "stopped"}


def test_the_stage_is_the_latest_started_task():
    assert job_stage({}) is None
    assert job_stage({"validate_inputs": "running"}) == Stage.VALIDATING
    assert job_stage({"validate_inputs": "success", "prepare": "up_for_retry"}) == Stage.DOWNLOADING
    assert job_stage({"validate_inputs": "success", "prepare": "success", "train": "running",
                      "evaluate": None}) == Stage.TRAINING
    assert job_stage(dict.fromkeys(job_spec.TASK_IDS, "success")) == Stage.FINISHED
    assert job_stage({**dict.fromkeys(job_spec.TASK_IDS, "success"), "finalize": "running"}) == Stage.REGISTERING
    # a failed run skips the tasks after the failed one: they did not run
    assert job_stage({"validate_inputs": "success", "prepare": "success", "train": "failed",
                      "evaluate": "skipped", "register": "skipped", "finalize": "skipped"}) == Stage.TRAINING
    assert job_stage({"train": "failed"}, stopping=True) == Stage.STOPPING
    assert job_stage(None) is None


def test_run_ids_and_links():
    assert job_spec.dag_run_id("abc") == "train-abc"
    assert job_spec.mlflow_run_ui_url("http://m:5000/", "3", "r1") == "http://m:5000/#/experiments/3/runs/r1"
    assert job_spec.mlflow_experiment_name("u1") == "qlora/u1"


def test_the_module_is_light():
    code = ("import sys, training.job_spec; heavy = [m for m in ('torch', 'airflow', 'mlflow', "
            "'pandas', 'transformers') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_combinations_of_good_values_pass():
    for epochs, rank, dropout in itertools.product((1, 100), (1, 16), (0, 0.99)):
        assert validate_job_request(CAPTIONING, None, {"epochs": epochs, "lora_rank": rank,
                                                       "lora_dropout": dropout}) == []


def test_max_runtime_minutes_is_a_job_field_not_a_training_parameter():
    conf = good_conf()
    assert "max_runtime_minutes" not in job_spec.conf_params(conf)
    assert "max_runtime_minutes" not in params.PARAM_NAMES
    without = {k: v for k, v in conf.items() if k != "max_runtime_minutes"}  # a trigger from the UI: the default
    assert validate_job_conf(without, ["video_captioning"]) == []
    assert job_spec.job_field_schemas()["max_runtime_minutes"]["default"] == job_spec.DEFAULT_MAX_RUNTIME_MINUTES
    (problem,) = validate_job_conf(good_conf(max_runtime_minutes=True), ["video_captioning"])
    assert problem.startswith("max_runtime_minutes must be a whole number of minutes from 1 to")


def test_registered_model_names_never_collide_across_users():
    """`{user}~{output_name}`: '~' is in neither alphabet, so one name has one (user, output name)."""
    assert job_spec.registered_model_name("a.b", "c") == "a.b~c"
    assert job_spec.registered_model_name("a", "b.c") == "a~b.c"
    assert job_spec.registered_model_name("bob", "prod.v1") != job_spec.registered_model_name("bob.prod", "v1")
    for user, name in (("a.b", "c"), ("a", "b.c"), ("e2e_1-x", "my-adapter_v1.0")):
        assert job_spec.registered_model_name(user, name).split(job_spec.REGISTERED_MODEL_SEPARATOR) == [user, name]
    with pytest.raises(ValueError, match="output_name must be"):
        job_spec.registered_model_name("bob", "x~y")
    assert job_spec.registered_model_uri("a~b", 3) == "models:/a~b/3"
    assert job_spec.registered_model_ui_url("http://mlflow:5000/", "a~b.c", "2") == \
        "http://mlflow:5000/#/models/a~b.c/versions/2"
    assert job_spec.dag_run_id("j1") == "train-j1" and job_spec.dag_run_id("j1", 2) == "train-j1-resume-2"


def test_a_run_whose_every_task_succeeded_is_completed_before_the_scheduler_marks_it():
    """The API sees `completed` as soon as the last task succeeded (issue 16: the run's own state
    followed seconds later under load); one task short of that, the job still runs."""
    done = dict.fromkeys(job_spec.TASK_IDS, "success")
    assert job_state("running", task_states=done) == "completed"
    assert job_state("running", task_states={**done, "finalize": "running"}) == "running"
    assert job_state("running", task_states={**done, "finalize": None}) == "running"
    assert job_state("running") == "running"  # the list path reads no task states
