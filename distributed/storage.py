"""Where a run goes: a local (or NFS) folder, or `s3://bucket/prefix` through pyarrow's S3
filesystem, which Ray Train persists checkpoints to itself (storage_filesystem).

The S3 endpoint, region and credentials come from the usual AWS variables and files
(AWS_ENDPOINT_URL for an S3-compatible server, AWS_REGION / AWS_DEFAULT_REGION,
AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or ~/.aws, an instance role). The filesystem object
that travels to Ray's processes carries the endpoint and region only: each node finds its own
credentials, so no secret is pickled into a run or written next to it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

S3_SCHEME = "s3://"
# a wrong or unreachable endpoint must fail in seconds, before Ray starts, not retry for minutes
PROBE_TIMEOUTS = {"connect_timeout": 2.0, "request_timeout": 4.0}
RUN_TIMEOUTS = {"connect_timeout": 5.0, "request_timeout": 60.0}


class StorageError(ValueError):
    pass


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/some/prefix` -> ("bucket", "some/prefix"); the prefix may be empty."""
    if not uri.startswith(S3_SCHEME):
        raise StorageError(f"--storage {uri!r}: not an s3:// address")
    bucket, _, prefix = uri[len(S3_SCHEME):].partition("/")
    prefix = "/".join(part for part in prefix.split("/") if part)
    if not bucket:
        raise StorageError(f"--storage {uri!r}: no bucket (expected s3://BUCKET/PREFIX)")
    if any(part in (".", "..") for part in prefix.split("/")):
        raise StorageError(f"--storage {uri!r}: '.' and '..' are not allowed in an S3 prefix")
    return bucket, prefix


def s3_filesystem(probe: bool = False):
    """pyarrow's S3 filesystem for the endpoint and region in the environment (credentials:
    AWS's default chain, looked up by each process that uses it)."""
    from pyarrow import fs

    options: dict[str, Any] = dict(PROBE_TIMEOUTS if probe else RUN_TIMEOUTS)
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        scheme, _, host = endpoint.partition("://")
        options.update(endpoint_override=host or endpoint, scheme=scheme if host else "https")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        options["region"] = region
    if probe:
        options["retry_strategy"] = fs.AwsStandardS3RetryStrategy(max_attempts=1)
    return fs.S3FileSystem(**options)


@dataclass(frozen=True)
class Storage:
    """A local folder (`local` set) or an S3 bucket and prefix."""

    local: Path | None = None
    bucket: str = ""
    prefix: str = ""

    @property
    def remote(self) -> bool:
        return self.local is None

    def ray_path(self) -> str:
        """Ray's storage_path: the folder, or bucket/prefix inside ray_filesystem()."""
        return str(self.local) if self.local is not None else "/".join(p for p in (self.bucket, self.prefix) if p)

    def ray_filesystem(self):
        return None if self.local is not None else s3_filesystem()

    def show(self, *parts: str) -> str:
        """The address of a run (or a file in it), as a user would type it."""
        if self.local is not None:
            return str(self.local.joinpath(*parts))
        return S3_SCHEME + "/".join([self.ray_path(), *parts])

    def run_folders(self, pattern_prefix: str, marker: str) -> list[tuple[str, float]]:
        """(name, modification time) of the folders `pattern_prefix*` that hold `marker`."""
        if self.local is not None:
            return [(p.name, p.stat().st_mtime) for p in self.local.glob(f"{pattern_prefix}*")
                    if (p / marker).exists()]
        from pyarrow import fs

        s3 = s3_filesystem()
        found = []
        for info in s3.get_file_info(fs.FileSelector(self.ray_path(), allow_not_found=True)):
            name = info.path.rsplit("/", 1)[-1]
            if info.type == fs.FileType.Directory and name.startswith(pattern_prefix):
                marker_info = s3.get_file_info(f"{info.path}/{marker}")
                if marker_info.type == fs.FileType.File:
                    found.append((name, marker_info.mtime.timestamp() if marker_info.mtime else 0.0))
        return found

    def upload(self, local_folder: Path, *parts: str) -> None:
        """Copies a local folder's files to the run's place in the bucket (overwriting)."""
        from pyarrow import fs

        fs.copy_files(str(local_folder), "/".join([self.ray_path(), *parts]),
                      source_filesystem=fs.LocalFileSystem(), destination_filesystem=s3_filesystem())


def resolve(storage: str) -> Storage:
    """--storage as given: a folder (made if missing), or an S3 address checked against its
    endpoint now, in seconds (a missing bucket or an unreachable endpoint is exit 2 here)."""
    if "://" not in storage:
        path = Path(storage).expanduser().resolve()
        path.mkdir(parents=True, exist_ok=True)
        return Storage(local=path)
    if not storage.startswith(S3_SCHEME):
        raise StorageError(f"--storage {storage!r}: a folder or s3://BUCKET/PREFIX "
                           f"(scheme {storage.split('://')[0]!r} is not supported)")
    bucket, prefix = parse_s3_uri(storage)
    from pyarrow import fs

    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "AWS S3"
    try:
        info = s3_filesystem(probe=True).get_file_info(bucket)
    except OSError as error:
        raise StorageError(f"--storage {storage}: cannot reach the S3 endpoint {endpoint} "
                           f"(AWS_ENDPOINT_URL): {str(error).splitlines()[0]}") from None
    if info.type != fs.FileType.Directory:
        raise StorageError(f"--storage {storage}: bucket {bucket!r} does not exist at {endpoint}")
    return Storage(bucket=bucket, prefix=prefix)
