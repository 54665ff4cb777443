"""--storage s3://bucket/prefix through pyarrow's S3 filesystem, against a real S3-compatible
server on loopback (moto's standalone server, started here): checkpoints, TensorBoard and the
summary land in the bucket, and a --resume finds the run there and continues from its S3
checkpoint. Bad addresses fail before Ray starts: no bucket, or an endpoint that is not there."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import run
from distributed.storage import StorageError, parse_s3_uri
from tests.test_faults import steps_per_worker
from trainers.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def test_parse_s3_uri():
    assert parse_s3_uri("s3://bucket/some/prefix") == ("bucket", "some/prefix")
    assert parse_s3_uri("s3://bucket") == ("bucket", "")
    assert parse_s3_uri("s3://bucket//a//b/") == ("bucket", "a/b")
    for bad in ("s3://", "s3:///prefix", "s3://bucket/../x", "gs://bucket/x", "bucket/x"):
        with pytest.raises(StorageError):
            parse_s3_uri(bad)


def test_an_s3_address_without_a_bucket_exits_2(capsys):
    assert run.main(["--algorithm", "gat-simple", "--storage", "s3://"]) == 2
    assert "no bucket" in capsys.readouterr().err


def test_another_scheme_exits_2(capsys):
    assert run.main(["--algorithm", "gat-simple", "--storage", "gs://bucket/runs"]) == 2
    assert "not supported" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_an_unreachable_s3_endpoint_fails_in_seconds(monkeypatch, capsys):
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{_free_port()}")  # nothing listens there
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    started = time.monotonic()
    assert run.main(["--algorithm", "gat-simple", "--storage", "s3://bucket/runs"]) == 2
    assert time.monotonic() - started < 15
    err = capsys.readouterr().err
    assert "cannot reach the S3 endpoint" in err and "127.0.0.1" in err


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory):
    """moto's S3 server on 127.0.0.1 (a real HTTP server speaking the S3 API)."""
    server = shutil.which("moto_server") or str(Path(sys.executable).with_name("moto_server"))
    if not Path(server).exists():
        pytest.fail("moto_server missing: pip install 'moto[server]' (in the test extra)")
    port = _free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    process = subprocess.Popen([server, "-H", "127.0.0.1", "-p", str(port)], stdout=log.open("w"),
                               stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.2)
        else:
            raise AssertionError(f"moto did not start: {log.read_text()[-2000:]}")
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=20)


@pytest.fixture
def s3_env(s3_server, monkeypatch, tmp_path):
    """The AWS variables a user would set: the endpoint, the region, and credentials in a
    shared-credentials file (the key itself never travels in an environment variable to Ray's
    workers; the file's path does)."""
    from pyarrow import fs

    credentials = tmp_path / "aws-credentials"
    credentials.write_text("[default]\naws_access_key_id = testing\naws_secret_access_key = testing\n")
    credentials.chmod(0o600)
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    for key, value in {"AWS_ENDPOINT_URL": s3_server, "AWS_SHARED_CREDENTIALS_FILE": str(credentials),
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(key, value)
    s3 = fs.S3FileSystem(endpoint_override=s3_server.split("://")[1], scheme="http", region="us-east-1",
                         access_key="testing", secret_key="testing", allow_bucket_creation=True)
    s3.create_dir("trainyard-test")
    return s3


def test_a_missing_bucket_exits_2(s3_env, capsys):
    assert run.main(["--algorithm", "gat-simple", "--storage", "s3://no-such-bucket/runs"]) == 2
    assert "does not exist" in capsys.readouterr().err


def _files(s3, prefix: str) -> list[str]:
    from pyarrow import fs

    return sorted(info.path[len(prefix) + 1:] for info in
                  s3.get_file_info(fs.FileSelector(prefix, recursive=True, allow_not_found=True))
                  if info.type == fs.FileType.File)


RUN_TWICE = """
import sys
import run
first, second = sys.argv[1].split("|"), sys.argv[2].split("|")
codes = (run.main(first), run.main(second))
print("EXIT CODES", codes)
sys.exit(0 if codes == (1, 0) else 3)
"""


@pytest.mark.long
@pytest.mark.ray
def test_a_run_on_s3_storage_writes_there_and_resumes_from_its_s3_checkpoint(s3_env, small_sets, tmp_path):
    """As a user runs it: `python run.py` with the AWS variables set, its own local Ray (whose
    processes inherit them; the session's shared Ray was started before this test set them)."""
    storage = "s3://trainyard-test/runs"
    args = ["--algorithm", "gat-simple", "--storage", storage, *[f"--set={s}" for s in small_sets]]
    # the first run dies reporting iteration 3 (no restarts allowed): checkpoints 1 and 2 are in
    # the bucket, the run unfinished; --resume (no --name) finds it there and finishes it
    first = [*args, "--name", "gat-simple_s3", "--set", "max_iterations=3", "--max-failures", "0"]
    second = [*args, "--resume", "--set", "max_iterations=3"]
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    env["TRAINYARD_FAIL_ONCE"] = f"3:{tmp_path / 'failed-once'}"
    result = subprocess.run([sys.executable, "-c", RUN_TWICE, "|".join(first), "|".join(second)], cwd=tmp_path,
                            env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    files = _files(s3_env, "trainyard-test/runs/gat-simple_s3")
    assert "checkpoint_manager_snapshot.json" in files
    assert any(f.startswith("checkpoint_") and f.endswith("/state.pt") for f in files), files
    assert any(f.startswith("tensorboard/events.out.tfevents.") for f in files), files
    assert "summary.json" in files
    assert not list(tmp_path.glob("s3*")), "a local stand-in folder was made"
    from pyarrow import fs

    local = tmp_path / "downloaded"
    fs.copy_files("trainyard-test/runs/gat-simple_s3", str(local), source_filesystem=s3_env,
                  destination_filesystem=fs.LocalFileSystem())
    newest = max((load_checkpoint(p, "gat-simple") for p in local.glob("checkpoint_*/state.pt")),
                 key=lambda state: state["iteration"])
    assert newest["iteration"] == 3, (sorted(p.name for p in local.rglob("*")), steps_per_worker(local),
                                      result.stdout[-4000:], result.stderr[-3000:])
    assert [int(row["iteration"]) for row in newest["trainer"]["history"]] == [1, 2, 3]
    # two worker processes logged: the second ran iteration 3 only (resumed, not from scratch)
    assert steps_per_worker(local) == [[1, 2], [3]]
