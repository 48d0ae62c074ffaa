"""The local stack as plain processes: used by `make up/down/status` (`python -m devstack`)
and by the test fixtures (tests/conftest.py), which start the same classes on free ports.

    processes.py      pid files (pid + start time), logs, detached start, stop by pid, wait_until
    ports.py          free loopback ports, "is this port taken"
    postgres.py       PostgreSQL 15 (as the `postgres` user when run as root)
    seaweedfs.py      `weed mini` S3 server that verifies signatures; S3Settings (env, boto3 client)
    mlflow_server.py  `mlflow server --workers 1`, SQLite backend, artifacts proxied to S3
    airflow.py        Airflow 3.3 api-server + scheduler + dag-processor, LocalExecutor, `gpu` pool
    api_server.py     `uvicorn api.main:app`
    secrets_file.py   secrets generated once into .stack/secrets.env
    seed.py           the catalog's tiny models built and uploaded to s3://BUCKET/models/{id}/ once
    stack.py          all of it on the fixed ports, state under .stack/ (QLORA_STACK_DIR)
"""
