"""A local S3 + MLflow stack on loopback: SeaweedFS (``weed mini``) and ``mlflow server`` with its
artifacts in an S3 bucket, for people without AWS and for the integration tests.

The state folder holds everything the stack writes: ``s3/`` (SeaweedFS data), ``mlflow.db``,
``logs/``, ``s3.json`` (the S3 identity, mode 0600), ``ports.json`` and one PID file per process (with
its ports). ``stop`` ends only processes whose PID file still matches the running process (same PID
*and* start time), so a PID reused by the system is never signalled.

One job per module: ``config`` (settings, errors, the state files that say how to reach the stack),
``ports`` (free ports, the retry when another process takes one), ``processes`` (PID files, start,
stop), ``servers`` (SeaweedFS and MLflow: start, wait until ready, status) and ``clients`` (the S3
client, bucket readiness, the DVC remote check). This package re-exports their public names.
"""

from melanoma.stack.clients import buckets_ready, check_remote, s3_client
from melanoma.stack.config import HOST, SERVICES, PortTaken, StackConfig, StackError, StackInfo, info
from melanoma.stack.ports import check_ports, free_port, free_ports, port_free, retry_on_taken_port
from melanoma.stack.processes import ProcessRecord, down, read_record, stop
from melanoma.stack.servers import start_mlflow, start_s3, status, up

# the names tests and benchmarks used when this package was one module
_buckets_ready = buckets_ready
_read_record = read_record
_s3_client = s3_client

__all__ = [
    "HOST",
    "SERVICES",
    "PortTaken",
    "ProcessRecord",
    "StackConfig",
    "StackError",
    "StackInfo",
    "buckets_ready",
    "check_ports",
    "check_remote",
    "down",
    "free_port",
    "free_ports",
    "info",
    "port_free",
    "read_record",
    "retry_on_taken_port",
    "s3_client",
    "start_mlflow",
    "start_s3",
    "status",
    "stop",
    "up",
]
