"""Security at the edges: checkpoints never unpickle code, the local dashboard listens on
loopback only, and neither a W&B key in the environment nor Ray's cluster token is written
anywhere by a run."""
from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest
import torch

import run
import tune
from trainers.checkpoint import STATE_FILE, CheckpointError, load_checkpoint, save_atomic
from trainers.context import LocalContext

ROOT = Path(__file__).resolve().parents[1]
SOURCE_DIRS = ("trainers", "distributed", "search_spaces", "benchmarks")


def project_sources() -> list[Path]:
    files = [ROOT / name for name in ("run.py", "tune.py", "cli_common.py")]
    for folder in SOURCE_DIRS:
        files += sorted((ROOT / folder).rglob("*.py"))
    return files


def unsafe_loads(path: Path) -> list[str]:
    """Calls in one file that could unpickle code: torch.load without weights_only=True,
    np.load without allow_pickle=False, any pickle/cloudpickle/joblib load."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        owner = node.func.value.id if isinstance(node.func.value, ast.Name) else ""
        name = f"{owner}.{node.func.attr}"
        keywords = {k.arg: getattr(k.value, "value", None) for k in node.keywords}
        if name == "torch.load" and keywords.get("weights_only") is not True:
            found.append(f"{path.relative_to(ROOT)}:{node.lineno} torch.load without weights_only=True")
        elif name == "np.load" and keywords.get("allow_pickle") is not False:
            found.append(f"{path.relative_to(ROOT)}:{node.lineno} np.load without allow_pickle=False")
        elif owner in ("pickle", "cloudpickle", "joblib", "dill") and node.func.attr in ("load", "loads"):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno} {name}")
    return found


def test_every_load_of_a_file_refuses_code():
    sources = project_sources()
    assert len(sources) > 30
    assert sum("torch.load" in f.read_text() for f in sources) >= 1  # the scan sees the real one
    problems = [problem for path in sources for problem in unsafe_loads(path)]
    assert not problems, "\n".join(problems)


class MakesADirectory:
    """A pickle that runs os.mkdir when unpickled: proof of code execution, harmless."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def plant(folder: Path, trainer_state, iteration: int) -> Path:
    path = folder / STATE_FILE
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"algorithm": "mopie", "config": {}, "iteration": iteration, "trainer": trainer_state}, path)
    return path


def test_a_malicious_checkpoint_is_refused_on_every_path(tmp_path, capsys):
    proof = tmp_path / "code-ran"
    evil = plant(tmp_path / "evil", {"iteration": 9, "weights": MakesADirectory(proof)}, 9)
    # the loader itself
    with pytest.raises(CheckpointError, match="cannot be loaded safely"):
        load_checkpoint(evil, "mopie")
    # run.py --from-checkpoint: refused at the edge, exit 2, the file named, before Ray starts
    code = run.main(["--algorithm", "mopie", "--from-checkpoint", str(evil), "--storage", str(tmp_path / "runs")])
    assert code == 2 and str(evil) in capsys.readouterr().err
    # a resume, in-process and through Ray's context: the planted newest checkpoint is passed
    # over for the previous good one
    local = tmp_path / "local" / "checkpoints"
    save_atomic({"algorithm": "mopie", "config": {}, "iteration": 1, "trainer": {"iteration": 1}},
                local / "checkpoint_000001" / STATE_FILE)
    plant(local / "checkpoint_000002", {"iteration": 2, "weights": MakesADirectory(proof)}, 2)
    assert LocalContext("mopie", tmp_path / "local").latest_state()["iteration"] == 1
    from ray.train import Checkpoint

    from distributed.context import _load_ray_checkpoint

    assert _load_ray_checkpoint(Checkpoint(str(local / "checkpoint_000002")), "mopie")["iteration"] == 1
    assert not proof.exists(), "unpickling ran code"


def test_start_ray_binds_the_dashboard_to_loopback(monkeypatch):
    """What cli_common.start_ray asks of a local Ray (checked without starting one)."""
    import ray

    import cli_common

    calls = []
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: calls.append(kwargs))
    cli_common.start_ray(None)
    assert calls[0]["dashboard_host"] == "127.0.0.1"
    assert os.environ.get("RAY_AUTH_MODE") != "disabled"  # token authentication stays on


@pytest.mark.ray
def test_session_dashboard_listens_on_loopback(ray_session):
    from ray._private.worker import get_dashboard_url

    assert get_dashboard_url().startswith("127.0.0.1:")


SECRET = "fake-wandb-key-7f3a9c1e0b5d4e2f8a6c"


def ray_token() -> str:
    """The token this session's Ray authenticates with (its own file, or RAY_AUTH_TOKEN)."""
    from ray._raylet import AuthenticationTokenLoader

    token = AuthenticationTokenLoader.instance().get_raw_token(ignore_auth_mode=True)
    assert token and len(token) >= 16, "the test session's Ray runs without a token"
    return token


@pytest.mark.long
@pytest.mark.ray
def test_a_wandb_key_and_the_ray_token_are_written_nowhere(ray_session, small_sets, tmp_path, monkeypatch, capfd):
    """A run.py run with W&B on and an API key in the environment (offline mode, no network):
    the key, and the token of the Ray it runs on, are in no file of the run folder (configs, checkpoints, TensorBoard events, figures,
    W&B's own offline files), not in what the run printed, not in Ray's session logs."""
    monkeypatch.setenv("WANDB_API_KEY", SECRET)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    code = run.main(["--algorithm", "gat-simple", "--storage", str(tmp_path), "--name", "secret", "--wandb",
                     *[f"--set={s}" for s in small_sets], "--set", "max_iterations=2"])
    assert code == 0
    run_dir = tmp_path / "secret"
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    kinds = {p.name.split(".")[0] for p in files}
    assert "events" in kinds and "state" in kinds  # TensorBoard and checkpoints were written
    assert list(run_dir.rglob("wandb/offline-run-*")), "W&B wrote no offline run"
    token = ray_token()
    for secret in (SECRET, token):  # in configs, checkpoints, TensorBoard, figures, W&B files
        leaks = [str(p) for p in files if secret.encode() in p.read_bytes()]
        assert not leaks, leaks
    printed = "".join(capfd.readouterr())
    assert SECRET not in printed and token not in printed
    session_logs = Path(ray_session._private.worker._global_node.get_session_dir_path()) / "logs"
    for secret in (SECRET, token):
        leaks = [str(p) for p in session_logs.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
        assert not leaks, leaks


@pytest.mark.long
@pytest.mark.ray
def test_a_wandb_key_is_written_nowhere_by_a_search(ray_session, small_sets, tmp_path, monkeypatch, capfd):
    """The same for tune.py --wandb: each trial logs its own W&B run (no WandbLoggerCallback,
    which would hand the key to an actor through a runtime_env that Ray logs in plain text)."""
    monkeypatch.setenv("WANDB_API_KEY", SECRET)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_RUN_GROUP", "secret-search")
    code = tune.main(["--algorithm", "gat-simple", "--num-samples", "2", "--scheduler", "fifo",
                      "--storage", str(tmp_path), "--name", "secret-search", "--wandb",
                      *[f"--set={s}" for s in small_sets], "--set", "max_iterations=2"])
    assert code == 0
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(list(tmp_path.rglob("wandb/offline-run-*"))) == 2, "each trial writes its own W&B run"
    leaks = [str(p) for p in files if SECRET.encode() in p.read_bytes()]
    assert not leaks, leaks
    assert SECRET not in "".join(capfd.readouterr())
    session_logs = Path(ray_session._private.worker._global_node.get_session_dir_path()) / "logs"
    leaks = [str(p) for p in session_logs.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert not leaks, leaks
