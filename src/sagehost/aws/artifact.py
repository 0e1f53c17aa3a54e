"""The model.tar.gz a deploy points SageMaker at: packaged from a directory and uploaded once.

The archive is written by `sagehost package` (files at the root, checked as `serve` would look at
it). Its key holds a hash of what the archive contains (names and bytes, not timestamps), so an
unchanged model is not uploaded again. The default bucket is the SageMaker SDK's own,
`sagemaker-<region>-<account>`, created when missing. A bucket must be in the endpoint's region.
"""

from __future__ import annotations

import hashlib
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

from sagehost.aws.errors import AwsNotFound, AwsPermissionDenied, PreflightFailed
from sagehost.aws.session import Aws
from sagehost.aws.spec import TAG_KEY, DeploySpec, S3Uri
from sagehost.config import Settings
from sagehost.package import package

KEY_PREFIX = "sagehost"
"""Uploaded archives go to s3://BUCKET/sagehost/NAME/HASH/model.tar.gz."""


@dataclass(frozen=True)
class Staged:
    url: str
    version: str
    """What identifies the content: the archive's hash, or the given object's ETag."""


def default_bucket(aws: Aws) -> str:
    return f"sagemaker-{aws.region}-{aws.account}"


def stage(aws: Aws, spec: DeploySpec, settings: Settings, echo: Callable[[str], None]) -> Staged:
    if spec.model_data is not None:
        return _existing(aws, spec.model_data)
    assert spec.model_dir is not None
    with tempfile.TemporaryDirectory(prefix="sagehost-deploy-") as scratch:
        archive = Path(scratch) / "model.tar.gz"
        written = package(spec.model_dir, archive, settings)
        echo(f"Packaged {spec.model_dir} {written.removeprefix(str(archive)).strip()}")
        digest = content_hash(archive)
        bucket = spec.bucket or default_bucket(aws)
        ensure_bucket(aws, bucket, spec.name)
        target = S3Uri(bucket, f"{KEY_PREFIX}/{spec.name}/{digest[:16]}/model.tar.gz")
        if aws.find("s3", "head_object", Bucket=target.bucket, Key=target.key):
            echo(f"{target} holds this model already: not uploaded again.")
        else:
            echo(f"Uploading to {target}")
            extra = {"Tagging": urlencode({TAG_KEY: spec.name})}
            aws.write("s3", "upload_file", Filename=str(archive), Bucket=target.bucket, Key=target.key, ExtraArgs=extra)
    return Staged(str(target), digest)


def content_hash(archive: Path) -> str:
    """sha256 over each member's name and bytes, in order: unlike the gzip file's own bytes, it
    does not change when only timestamps do."""
    digest = hashlib.sha256()
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar:
            digest.update(member.name.encode() + b"\0")
            data = tar.extractfile(member) if member.isfile() else None
            while data is not None and (chunk := data.read(1 << 20)):
                digest.update(chunk)
            digest.update(b"\0")
    return digest.hexdigest()


def ensure_bucket(aws: Aws, bucket: str, name: str) -> None:
    """The bucket exists (created when missing) and is in the deploy's region."""
    try:
        found = aws.find("s3", "head_bucket", Bucket=bucket)
    except AwsPermissionDenied:
        raise AwsPermissionDenied(
            f"s3://{bucket} exists, but this identity may not use it (s3:ListBucket was refused): it may "
            "belong to another account. Pass --bucket with a bucket of yours, or grant s3:ListBucket, "
            "s3:GetObject and s3:PutObject on it."
        ) from None
    if found is not None:
        check_region(aws, bucket, "the model bucket")
        return
    aws.echo(f"Creating bucket s3://{bucket}")
    params: dict[str, object] = {"Bucket": bucket}
    if aws.region != "us-east-1":  # us-east-1 refuses its own name as a LocationConstraint
        params["CreateBucketConfiguration"] = {"LocationConstraint": aws.region}
    aws.write("s3", "create_bucket", **params)


def check_region(aws: Aws, bucket: str, what: str) -> None:
    found = aws.read("s3", "get_bucket_location", Bucket=bucket).get("LocationConstraint")
    # S3's legacy answers: None for us-east-1, "EU" for eu-west-1.
    region = {None: "us-east-1", "": "us-east-1", "EU": "eu-west-1"}.get(found, found)
    if region != aws.region:
        raise PreflightFailed(
            f"{what} s3://{bucket} is in {region}, but this deploy goes to {aws.region}: SageMaker reads "
            f"model data from its own region. Use a bucket in {aws.region} (--bucket), or --region {region}."
        )


def _existing(aws: Aws, uri: S3Uri) -> Staged:
    head = aws.find("s3", "head_object", Bucket=uri.bucket, Key=uri.key)
    if head is None:
        raise AwsNotFound(
            f"--model-data {uri} does not exist (or the bucket does not). Upload it first, "
            "or deploy from a directory with --model-dir."
        )
    check_region(aws, uri.bucket, "--model-data's bucket")
    return Staged(str(uri), str(head.get("ETag", "")).strip('"'))
