import pytest

from tests.dags.airflow_harness import make_airflow_env


@pytest.fixture(scope="session")
def airflow_env(tmp_path_factory) -> dict[str, str]:
    """Environment of an Airflow with a migrated temp SQLite database, the repo's dags/ and
    plugins/, and none of the caller's AIRFLOW/MLFLOW/AWS/QLORA variables."""
    return make_airflow_env(tmp_path_factory.mktemp("airflow-home"))
