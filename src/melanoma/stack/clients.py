"""Clients of the stack's S3 store and of any DVC remote: a botocore client set up for non-AWS
servers, whether the buckets answer, and a check that names what to fix when a remote does not."""

from __future__ import annotations

from pathlib import Path

from melanoma.stack.config import StackError, StackInfo


def s3_client(info: StackInfo):  # botocore generates the client class at runtime: no annotation
    """A botocore S3 client for the stack's endpoint and identity (one attempt, short timeouts)."""
    import botocore.config
    import botocore.session

    # SeaweedFS, like most non-AWS servers, rejects the CRC checksums botocore >= 1.36 sends by default
    conf = botocore.config.Config(
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        retries={"max_attempts": 1},
        connect_timeout=2,
        read_timeout=5,
    )
    return botocore.session.get_session().create_client(
        "s3",
        endpoint_url=info.s3_endpoint,
        aws_access_key_id=info.access_key_id,
        aws_secret_access_key=info.secret_access_key,
        region_name="us-east-1",
        config=conf,
    )


def buckets_ready(info: StackInfo) -> bool:
    """True when both of the stack's buckets answer."""
    import botocore.exceptions

    client = s3_client(info)
    try:
        for bucket in (info.dvc_bucket, info.mlflow_bucket):
            client.head_bucket(Bucket=bucket)
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError):
        return False
    return True


def check_remote(repo: Path, name: str | None = None) -> str:
    """List the DVC remote ``name`` (default: ``core.remote``) of ``repo``; raise naming it when it fails.

    ``dvc push`` with wrong keys says only "unexpected error - Forbidden (403)"; this says which remote,
    where, and which settings to fix.
    """
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc_repo:
        remote = dvc_repo.cloud.get_remote(name)
        conf = dvc_repo.config["remote"][remote.name]
        where = f"DVC remote '{remote.name}' ({conf.get('url')} at {conf.get('endpointurl', 'AWS')})"
        try:
            remote.fs.ls(remote.path, detail=False)
        except FileNotFoundError:
            pass  # an empty remote: nothing pushed yet, but reachable
        except PermissionError as exc:
            raise StackError(
                f"{where}: access denied ({exc}); check its credentials: `dvc remote modify --local "
                f"{remote.name} access_key_id/secret_access_key`, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
                "or the AWS profile"
            ) from exc
        except OSError as exc:
            raise StackError(f"{where}: unreachable ({exc})") from exc
    return f"{where}: reachable"
