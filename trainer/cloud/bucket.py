"""`make create-bucket`: a checkpoint bucket with settings that suit checkpoints.

- uniform bucket-level access (IAM only, no object ACLs) and public access prevention;
- no object versioning: rotated checkpoints must really go away;
- soft delete kept at 7 days, the shortest window Cloud Storage allows short of turning it off
  (0). It guards the final model against a mistaken delete; the price is that rotated checkpoints
  are billed for 7 more days. Pass `soft_delete_days=0` to turn it off;
- a lifecycle rule that aborts multipart uploads left incomplete for a day.
"""

from __future__ import annotations

import os
import sys

from google.api_core import exceptions as api_exceptions
from google.cloud import storage

from trainer.cloud import gcloud as cloud
from trainer.errors import EXIT_USER_ERROR, UserError
from trainer.storage import gcs

SOFT_DELETE_DAYS = 7
ABORT_INCOMPLETE_UPLOADS_AFTER_DAYS = 1
ENV_VARS = ("PROJECT_ID", "BUCKET_NAME", "REGION")
_ABORT = "AbortIncompleteMultipartUpload"


def _configure(bucket: storage.Bucket, soft_delete_days: int) -> None:
    """Set our settings on `bucket` locally (sent by the next create or patch)."""
    iam = bucket.iam_configuration
    iam.uniform_bucket_level_access_enabled = True
    iam.public_access_prevention = "enforced"
    bucket.versioning_enabled = False
    bucket.soft_delete_policy.retention_duration_seconds = soft_delete_days * 24 * 3600
    bucket.lifecycle_rules = [
        rule for rule in bucket.lifecycle_rules
        if rule.get("action", {}).get("type") != _ABORT
    ]
    bucket.add_lifecycle_abort_incomplete_multipart_upload_rule(age=ABORT_INCOMPLETE_UPLOADS_AFTER_DAYS)


def _configured(bucket: storage.Bucket, soft_delete_days: int) -> bool:
    """Whether the server reports our settings on `bucket`."""
    abort_rules = [r for r in bucket.lifecycle_rules if r.get("action", {}).get("type") == _ABORT]
    return (
        bucket.iam_configuration.uniform_bucket_level_access_enabled
        and not bucket.versioning_enabled
        and bucket.soft_delete_policy.retention_duration_seconds == soft_delete_days * 24 * 3600
        and any(r.get("condition", {}).get("age") == ABORT_INCOMPLETE_UPLOADS_AFTER_DAYS for r in abort_rules)
    )


def _validate(project_id: str, bucket_name: str, region: str) -> None:
    cloud.check("PROJECT_ID", project_id, cloud.PROJECT_ID, cloud.PROJECT_ID_RULE)
    gcs.validate_bucket_name(bucket_name)
    cloud.check_bucket_location(region)


def create_bucket(
    project_id: str,
    bucket_name: str,
    region: str,
    client: storage.Client | None = None,
    soft_delete_days: int = SOFT_DELETE_DAYS,
) -> bool:
    """Create `bucket_name` in `region` for `project_id`; True if created, False if it was already ours.

    Raises `UserError` for an invalid name (before any request) and for a name owned elsewhere.
    """
    _validate(project_id, bucket_name, region)
    client = client or gcs.make_client(project_id)
    bucket = client.bucket(bucket_name)
    _configure(bucket, soft_delete_days)
    try:
        bucket = client.create_bucket(bucket, project=project_id, location=region)
    except api_exceptions.Conflict:
        if any(b.name == bucket_name for b in client.list_buckets(project=project_id, prefix=bucket_name)):
            return False
        raise UserError(
            f"bucket name {bucket_name!r} is taken by another project; bucket names are global, choose another "
            "BUCKET_NAME"
        ) from None
    if not _configured(bucket, soft_delete_days):
        # Some servers (the local emulator) ignore settings sent at creation: apply them explicitly.
        _configure(bucket, soft_delete_days)
        bucket.patch()
    return True


def create_bucket_command() -> int:
    """`python -m trainer create-bucket`: PROJECT_ID, BUCKET_NAME and REGION from the environment.

    Prints one line; returns 0 when the bucket was created or already ours, 2 for bad settings, 1
    when Cloud Storage refused.
    """
    env = {name: os.environ.get(name, "").strip() for name in ENV_VARS}
    missing = [name for name, value in env.items() if not value]
    try:
        if missing:
            raise UserError(f"{', '.join(missing)} not set; set it in the environment or in .env (see .env.example)")
        created = create_bucket(env["PROJECT_ID"], env["BUCKET_NAME"], env["REGION"])
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except api_exceptions.GoogleAPICallError as err:
        print(f"error: could not create gs://{env['BUCKET_NAME']}: {err.message}", file=sys.stderr)
        return 1
    where = f"in project {env['PROJECT_ID']}"
    if created:
        print(f"created gs://{env['BUCKET_NAME']} {where}, region {env['REGION']}")
    else:
        print(f"bucket gs://{env['BUCKET_NAME']} already exists {where}; nothing to do")
    return 0
