"""What a stack is: its settings, its errors, and the state-folder files that say how to reach it
(the S3 identity in ``s3.json``, the ports it picked in ``ports.json``)."""

from __future__ import annotations

import contextlib
import json
import secrets
from dataclasses import dataclass
from pathlib import Path

from melanoma.errors import MelanomaError

HOST = "127.0.0.1"  # every port of the stack binds here: nothing is reachable from another machine
SERVICES = ("s3", "mlflow")  # start order; stop runs in reverse


class StackError(MelanomaError):
    """The stack could not start, stop or report (a port taken, a process that died, a timeout)."""


class PortTaken(StackError):
    """A server could not bind a port it was given: another process took it after it was picked."""


@dataclass(frozen=True)
class StackConfig:
    """Where the stack keeps its state, and the two ports a user talks to (0: the stack picks a free
    one, kept in ``ports.json`` and used again by the next start while it is free)."""

    root: Path
    s3_port: int = 8333
    mlflow_port: int = 5050
    dvc_bucket: str = "melanoma-dvc"
    mlflow_bucket: str = "melanoma-mlflow"
    timeout: float = 120.0


@dataclass(frozen=True)
class StackInfo:
    """What clients need: the endpoints, the buckets and the S3 credentials."""

    s3_endpoint: str
    tracking_uri: str
    dvc_bucket: str
    mlflow_bucket: str
    access_key_id: str
    secret_access_key: str

    def exports(self, remote: str = "storage", prefix: str = "dvcstore") -> str:
        """Shell lines that point MLflow and this repository's DVC remote at the stack."""
        return "\n".join(
            [
                f"export MLFLOW_TRACKING_URI={self.tracking_uri}",
                "export AWS_REQUEST_CHECKSUM_CALCULATION=when_required AWS_RESPONSE_CHECKSUM_VALIDATION=when_required",
                f"dvc remote modify --local {remote} url s3://{self.dvc_bucket}/{prefix}",
                f"dvc remote modify --local {remote} endpointurl {self.s3_endpoint}",
                f"dvc remote modify --local {remote} access_key_id {self.access_key_id}",
                f"dvc remote modify --local {remote} secret_access_key {self.secret_access_key}",
            ]
        )


def credentials(cfg: StackConfig) -> tuple[str, str]:
    """The S3 identity in ``s3.json`` (created once with random keys; SeaweedFS reads it at start)."""
    path = cfg.root / "s3.json"
    if not path.exists():
        key, secret = "melanoma" + secrets.token_hex(6), secrets.token_urlsafe(24)
        identity = {
            "name": "melanoma",
            "credentials": [{"accessKey": key, "secretKey": secret}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        path.touch(mode=0o600)
        path.write_text(json.dumps({"identities": [identity]}, indent=2))
    try:
        cred = json.loads(path.read_text())["identities"][0]["credentials"][0]
        return cred["accessKey"], cred["secretKey"]
    except (ValueError, KeyError, IndexError) as exc:
        raise StackError(f"{path}: not a SeaweedFS S3 identity file ({exc})") from exc


def kept_ports(cfg: StackConfig) -> dict[str, int]:
    """``ports.json``: the S3 and MLflow ports the stack picked itself (asked for as 0) when they last started."""
    with contextlib.suppress(FileNotFoundError):
        return json.loads((cfg.root / "ports.json").read_text())
    return {}


def keep_port(cfg: StackConfig, service: str, port: int) -> None:
    """Record in ``ports.json`` the port the stack picked for ``service``, for the next start."""
    (cfg.root / "ports.json").write_text(json.dumps({**kept_ports(cfg), service: port}))


def service_port(cfg: StackConfig, service: str) -> int:
    """The port ``service`` is asked for, or for 0 the one the stack picked (0 before a first start)."""
    asked = cfg.s3_port if service == "s3" else cfg.mlflow_port
    return asked or kept_ports(cfg).get(service, 0)


def info(cfg: StackConfig) -> StackInfo:
    """The stack's endpoints and credentials (whether or not it runs; for a port 0, the one picked)."""
    cfg.root.mkdir(parents=True, exist_ok=True)
    key, secret = credentials(cfg)
    return StackInfo(
        s3_endpoint=f"http://{HOST}:{service_port(cfg, 's3')}",
        tracking_uri=f"http://{HOST}:{service_port(cfg, 'mlflow')}",
        dvc_bucket=cfg.dvc_bucket,
        mlflow_bucket=cfg.mlflow_bucket,
        access_key_id=key,
        secret_access_key=secret,
    )
