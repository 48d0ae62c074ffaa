"""`python -m training ...` (see training/cli.py).

Once the command has returned its exit code (its files written and closed, its MLflow run
ended), the process leaves with `os._exit`: tearing down torch, transformers and bitsandbytes
module by module takes ~3 s, and a stopped training must be gone well inside the ~5 s Airflow
leaves between SIGTERM and SIGKILL. An unexpected error still exits the ordinary way (traceback,
exit code 1)."""

import logging
import os
import sys

from training.cli import main

code = main()
logging.shutdown()
sys.stdout.flush()
sys.stderr.flush()
os._exit(code)
