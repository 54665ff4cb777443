"""Faults survived, with real processes and real signals: a TorchTrainer worker SIGKILLed, a
process SIGKILLed while it writes checkpoints, the Tune driver interrupted, the local Ray killed
under run.py, a corrupted checkpoint on resume.

Every child process is started in its own session and killed by its process group and by the
pids of its descendants (recorded while it ran): nothing is left running.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
import ray.tune
import torch

import run
import tune
from trainers.checkpoint import STATE_FILE, CheckpointError, WrongAlgorithmError, load_checkpoint, save_atomic
from trainers.context import LocalContext

ROOT = Path(__file__).resolve().parents[1]


# ----- helpers ----------------------------------------------------------------------------------
@contextlib.contextmanager
def child_process(command: list[str], log: Path, env: dict[str, str] | None = None):
    """A child in its own session (its own process group); on the way out its group and every
    descendant seen while it ran are SIGKILLed, so that no Ray or worker process outlives the test."""
    with open(log, "wb") as out:
        process = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                   env=env or dict(os.environ), start_new_session=True)
    process.descendants = set()  # pids, filled by watch()
    try:
        yield process
    finally:
        kill_tree(process)


def watch(process) -> None:
    """Remember the child's descendants now (a killed parent orphans them)."""
    with contextlib.suppress(psutil.Error):
        process.descendants |= {p.pid for p in psutil.Process(process.pid).children(recursive=True)}


def kill_tree(process) -> None:
    watch(process)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)  # start_new_session: the group id is its pid
    for pid in process.descendants:
        with contextlib.suppress(psutil.Error):
            psutil.Process(pid).kill()
    process.wait(timeout=30)
    _, alive = psutil.wait_procs([p for p in map(_process_or_none, process.descendants) if p], timeout=30)
    assert not alive, f"left running: {alive}"


def _process_or_none(pid: int):
    try:
        return psutil.Process(pid)
    except psutil.Error:
        return None


def wait_for(condition, timeout: float, what: str, process=None, log: Path | None = None, every: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if process is not None:
            watch(process)
            if process.poll() is not None:
                break
        time.sleep(every)
    tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
    raise AssertionError(f"timed out waiting for {what}\n{tail}")


class CheckpointsSeen:
    """Every Ray Train checkpoint folder that appeared in a run folder (Ray prunes old ones)."""

    def __init__(self, run_dir: Path):
        self.run_dir, self.names = run_dir, set()

    def count(self) -> int:
        with contextlib.suppress(OSError):
            self.names |= {p.name for p in self.run_dir.glob("checkpoint_*") if p.is_dir()}
        return len(self.names)


def final_history(run_dir: Path) -> tuple[dict, list[dict]]:
    folders = sorted(p for p in run_dir.glob("checkpoint_*") if p.is_dir())
    payload = load_checkpoint(folders[-1])
    return payload, payload["trainer"]["history"]


def steps_per_worker(run_dir: Path) -> list[list[int]]:
    """The iterations each worker process logged: rank 0 of each (re)started worker group writes
    its own TensorBoard file (events.out.tfevents.<time>.<host>.<pid>), in start order."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = sorted((run_dir / "tensorboard").glob("events.out.tfevents.*"),
                   key=lambda f: int(f.name.split(".")[3]))
    # a group that was lost before its first iteration (a restart under load) logged no step
    groups = [EventAccumulator(str(f)).Reload() for f in files]
    return [[event.step for event in group.Scalars("loss")] for group in groups if "loss" in group.Tags()["scalars"]]


def assert_resumed(run_dir: Path, iterations: int, at_least: int = 1) -> int:
    """Two worker processes: the second started after a checkpoint of the first (not from
    scratch) and together they ran every iteration; the final checkpoint counts each once.
    Returns the iteration the second one resumed from."""
    payload, history = final_history(run_dir)
    assert payload["iteration"] == iterations
    assert [int(row["iteration"]) for row in history] == list(range(1, iterations + 1))
    first, second = steps_per_worker(run_dir)
    resumed_from = second[0] - 1
    assert at_least <= resumed_from <= first[-1], (first, second)
    assert first == list(range(1, first[-1] + 1)) and second == list(range(resumed_from + 1, iterations + 1))
    return resumed_from


# ----- 2. no half-written checkpoint --------------------------------------------------------------
WRITER = r"""
import io, os, sys, time, torch
torch.set_num_threads(1)
from trainers.context import LocalContext
from trainers.imaging.mopie import MopieTrainer
from trainers.imaging.mopie_config import MopieConfig

folder, stall_at = sys.argv[1], int(sys.argv[2])
if stall_at:  # write half of checkpoint `stall_at` to its temporary file, then hang there
    real_save = torch.save
    def half_then_stall(obj, stream):
        if int(obj.get("iteration", 0)) < stall_at:
            return real_save(obj, stream)
        buffer = io.BytesIO(); real_save(obj, buffer); data = buffer.getvalue()
        stream.write(data[: len(data) // 2]); stream.flush(); os.fsync(stream.fileno())
        print("stalled", flush=True); time.sleep(600)
    torch.save = half_then_stall
config = MopieConfig(obj_size=64, image_size=128, n_samples=61, sample_diameter=21, patience=0, max_iterations=100000)
context = LocalContext("mopie", folder, keep=1000)
trainer = MopieTrainer(config, context)
report = context.report
def report_and_say(metrics, state):
    report(metrics, state)
    print("saved", int(metrics["iteration"]), flush=True)
context.report = report_and_say
trainer.fit()
"""


def run_writer(folder: Path, log: Path, kill_after_saves: int, stall_at: int = 0) -> None:
    """Start a mopie run that checkpoints every iteration and SIGKILL it: after a few saves (at a
    random point of its loop), or while it is half-way through writing checkpoint `stall_at`."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with child_process([sys.executable, "-c", WRITER, str(folder), str(stall_at)], log, env) as process:
        marker = "stalled" if stall_at else f"saved {kill_after_saves}\n"
        wait_for(lambda: marker in log.read_text(errors="replace"), 120, marker, process, log)
        if not stall_at:
            time.sleep(0.01 * (kill_after_saves % 7))  # somewhere in the next iteration's work or write
        os.killpg(process.pid, signal.SIGKILL)


@pytest.mark.slow
def test_process_killed_while_writing_checkpoints_leaves_only_loadable_ones(tmp_path):
    # two runs killed at different points of their loop, one killed inside a write
    for round_, saves in enumerate((3, 8)):
        run_writer(tmp_path / f"run{round_}", tmp_path / f"run{round_}.log", saves)
    run_writer(tmp_path / "stalled", tmp_path / "stalled.log", 0, stall_at=4)

    files = sorted(tmp_path.glob("*/checkpoints/checkpoint_*/state.pt"))
    assert len(files) >= 3 + 8 + 3
    for path in files:  # every checkpoint file on disk loads, and is the iteration it says
        assert load_checkpoint(path, "mopie")["iteration"] == int(path.parent.name.split("_")[1])
    # the write cut in half is a temporary file beside state.pt: never under the checkpoint name
    stalled = tmp_path / "stalled" / "checkpoints"
    partial = list(stalled.glob("checkpoint_000004/.state.pt.*.tmp"))
    assert len(partial) == 1 and not (stalled / "checkpoint_000004" / STATE_FILE).exists()
    with pytest.raises(CheckpointError):
        load_checkpoint(partial[0])
    # a resume takes the last complete checkpoint
    assert LocalContext("mopie", tmp_path / "stalled").latest_state()["iteration"] == 3


# ----- 5. a damaged checkpoint: the Ray contexts fall back to the previous good one ---------------
def plant_checkpoints(run_dir: Path, iterations: list[int], algorithm: str = "mopie") -> list[Path]:
    folders = []
    for index, iteration in enumerate(iterations):
        folder = run_dir / f"checkpoint_2026-01-01_00-00-0{index}.000000"
        save_atomic({"algorithm": algorithm, "config": {}, "iteration": iteration,
                     "trainer": {"iteration": iteration, "weights": torch.ones(3) * iteration}}, folder / STATE_FILE)
        folders.append(folder)
    return folders


def test_ray_context_falls_back_past_damaged_checkpoints(tmp_path, caplog):
    from ray.train import Checkpoint

    from distributed.context import _load_ray_checkpoint

    folders = plant_checkpoints(tmp_path / "run", [1, 2, 3, 4])
    newest, second = folders[-1] / STATE_FILE, folders[-2] / STATE_FILE
    newest.write_bytes(newest.read_bytes()[:300])               # truncated
    second.write_bytes(b"\x00" * 50 + second.read_bytes()[50:])  # corrupted
    with pytest.raises(CheckpointError, match=str(newest)):
        load_checkpoint(newest)
    with caplog.at_level("WARNING", logger="trainyard"):
        state = _load_ray_checkpoint(Checkpoint(str(folders[-1])), "mopie")
    assert state["iteration"] == 2  # the newest one that loads; the older one is left alone
    assert str(newest) in caplog.text and str(second) in caplog.text
    # Tune's trial checkpoints are checkpoint_000NNN: the same fallback
    tune_folders = [tmp_path / "trial" / f"checkpoint_{i:06d}" for i in range(3)]
    for i, folder in enumerate(tune_folders):
        save_atomic({"algorithm": "mopie", "config": {}, "iteration": i, "trainer": {"iteration": i}},
                    folder / STATE_FILE)
    (tune_folders[-1] / STATE_FILE).write_bytes(b"not a checkpoint")
    assert _load_ray_checkpoint(Checkpoint(str(tune_folders[-1])), "mopie")["iteration"] == 1


def test_ray_context_does_not_route_around_the_wrong_algorithm_or_total_damage(tmp_path):
    from ray.train import Checkpoint

    from distributed.context import _load_ray_checkpoint

    folders = plant_checkpoints(tmp_path / "other", [1, 2], algorithm="gat-simple")
    with pytest.raises(WrongAlgorithmError, match="not 'mopie'"):
        _load_ray_checkpoint(Checkpoint(str(folders[-1])), "mopie")
    folders = plant_checkpoints(tmp_path / "broken", [1, 2])
    for folder in folders:
        (folder / STATE_FILE).write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="no checkpoint of this run can be loaded") as error:
        _load_ray_checkpoint(Checkpoint(str(folders[-1])), "mopie")
    assert all(str(folder / STATE_FILE) in str(error.value) for folder in folders)


@pytest.mark.ray
def test_run_resume_falls_back_past_a_truncated_checkpoint(ray_session, small_sets, tmp_path, capfd):
    sets = [f"--set={s}" for s in small_sets]
    assert run.main(["--algorithm", "gat-simple", "--storage", str(tmp_path), "--name", "gat-simple_damaged",
                     *sets, "--set", "max_iterations=3"]) == 0
    run_dir = tmp_path / "gat-simple_damaged"
    newest = sorted(p for p in run_dir.glob("checkpoint_*") if p.is_dir())[-1] / STATE_FILE
    assert load_checkpoint(newest)["iteration"] == 3
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    capfd.readouterr()
    # --resume finds the run by name; Ray hands the worker the truncated checkpoint
    assert run.main(["--algorithm", "gat-simple", "--storage", str(tmp_path), "--resume", *sets,
                     "--set", "max_iterations=3"]) == 0
    # iteration 3 was run again from the checkpoint of iteration 2
    assert assert_resumed(run_dir, 3) == 2
    time.sleep(1)  # the worker's log lines reach the driver asynchronously
    output = "".join(capfd.readouterr())
    assert str(newest) in output and "trying the previous checkpoint" in output


# ----- 1. a TorchTrainer worker SIGKILLed mid-run ------------------------------------------------
def kill_a_train_worker(address: str, run_dir: Path, after_checkpoints: int, killed: list) -> None:
    """SIGKILL the (only) TorchTrainer worker as soon as `after_checkpoints` checkpoints exist.
    Its pid is looked up first: an iteration takes tens of milliseconds, the State API a second.
    The address is explicit: other Ray instances may run on the same machine."""
    from ray.util.state import list_actors

    deadline, workers = time.monotonic() + 240, []
    while not workers and time.monotonic() < deadline:
        workers = list_actors(address=address, filters=[("class_name", "=", "RayTrainWorker"),
                                                        ("state", "=", "ALIVE")])
        time.sleep(0.2)
    seen = CheckpointsSeen(run_dir)
    while seen.count() < after_checkpoints and time.monotonic() < deadline:
        time.sleep(0.01)
    for worker in workers:
        os.kill(worker.pid, signal.SIGKILL)
    killed.append((seen.count(), [w.pid for w in workers], registered_iteration(run_dir)))


def registered_iteration(run_dir: Path) -> int:
    """The newest iteration among the checkpoints Ray's controller has registered (a folder on
    disk may be one whose report the controller never collected)."""
    with contextlib.suppress(OSError, ValueError):
        snapshot = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
        return max(int(c["metrics"]["iteration"]) for c in snapshot["checkpoint_results"])
    return 0


@pytest.mark.long
@pytest.mark.ray
def test_sigkilled_train_worker_resumes_from_its_last_checkpoint(ray_session, small_sets, tmp_path):
    run_dir, iterations = tmp_path / "killed-worker", 60  # about 40 ms each: the kill lands mid-run
    killed: list = []
    address = ray_session.get_runtime_context().gcs_address
    killer = threading.Thread(target=kill_a_train_worker, args=(address, run_dir, 3, killed), daemon=True)
    killer.start()
    code = run.main(["--algorithm", "gat-simple", "--storage", str(tmp_path), "--name", "killed-worker",
                     *[f"--set={s}" for s in small_sets], "--set", f"max_iterations={iterations}",
                     "--max-failures", "1"])
    killer.join(timeout=5)
    assert killed and len(killed[0][1]) == 1, f"no worker was killed: {killed}"
    assert code == 0
    # the same final iteration count as an unbroken run, every iteration counted once; the new
    # worker started from the last checkpoint Ray had registered when the old one died
    resumed_from = assert_resumed(run_dir, iterations, at_least=max(killed[0][2], 1))
    assert resumed_from < killed[0][0] + 1


# ----- 4. the local Ray killed under a running run.py ---------------------------------------------
@pytest.mark.long
@pytest.mark.ray
def test_run_resumes_after_its_local_ray_was_killed(ray_session, small_sets, tmp_path):
    """run.py starts its own Ray (no RAY_ADDRESS); the driver's process group (driver, GCS,
    raylet, dashboard, workers) is SIGKILLed mid-run; `run.py --resume` on another Ray continues
    from the last checkpoint in the storage path."""
    iterations, log = 60, tmp_path / "run.log"
    run_dir = tmp_path / "gat-simple_lost-ray"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    command = [sys.executable, "run.py", "--algorithm", "gat-simple", "--storage", str(tmp_path),
               "--name", run_dir.name, *[f"--set={s}" for s in small_sets], "--set", f"max_iterations={iterations}",
               "--verbose"]  # Ray's own output: the dashboard's address is read from it
    seen = CheckpointsSeen(run_dir)
    with child_process(command, log, env) as process:
        wait_for(lambda: "worker(s) x" in log.read_text(errors="replace"), 240, "Ray up", process, log)
        assert_dashboard_on_loopback(process, log)
        wait_for(lambda: seen.count() >= 3, 240, "3 checkpoints", process, log, every=0.01)
        kill_tree(process)
    registered = registered_iteration(run_dir)
    code = run.main(["--algorithm", "gat-simple", "--storage", str(tmp_path), "--resume",
                     *[f"--set={s}" for s in small_sets], "--set", f"max_iterations={iterations}"])
    assert code == 0
    # it continued from the newest checkpoint in the storage path; it did not restart at 1
    assert assert_resumed(run_dir, iterations, at_least=max(registered, 1)) == registered


def assert_dashboard_on_loopback(process, log: Path) -> None:
    """The Ray that start_ray() started binds its dashboard to 127.0.0.1 only."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", log.read_text(errors="replace"))  # no colours
    url = re.search(r"View the dashboard at http://([0-9.]+):([0-9]+)", text)
    assert url and url.group(1) == "127.0.0.1", text[-2000:]
    port = int(url.group(2))
    watch(process)
    bound = set()
    for pid in process.descendants | {process.pid}:
        with contextlib.suppress(psutil.Error):
            bound |= {c.laddr.ip for c in psutil.Process(pid).net_connections("inet")
                      if c.status == psutil.CONN_LISTEN and c.laddr.port == port}
    assert bound == {"127.0.0.1"}, bound


# ----- 3. the Tune driver interrupted mid-search ---------------------------------------------------
def trial_results(experiment: Path) -> dict[str, list[dict]]:
    """The rows of each trial's result.json, by trial id."""
    rows = {}
    for result in experiment.glob("*/result.json"):
        with contextlib.suppress(OSError, ValueError):
            lines = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
            if lines:
                rows[lines[-1]["trial_id"]] = lines
    return rows



def terminated_trials(experiment: Path) -> set[str]:
    """Trials the saved experiment state (what Tuner.restore reads) records as TERMINATED."""
    states = sorted(experiment.glob("experiment_state-*.json"))
    if not states:
        return set()
    data = json.loads(states[-1].read_text())
    done = set()
    for trial_json, _ in data["trial_data"]:
        trial = json.loads(trial_json)
        if trial.get("status") == "TERMINATED":
            done.add(trial["trial_id"])
    return done


@pytest.mark.ray
@pytest.mark.long
def test_interrupted_tune_driver_resumes_without_rerunning_finished_trials(ray_session, tmp_path):
    # mopie's default problem, one trial at a time, every trial runs all its iterations; a search's
    # trials checkpoint every 5 iterations (not at each new best) and at the end
    samples, iterations, log = 6, 12, tmp_path / "tune.log"
    experiment = tmp_path / "mopie_interrupted"
    args = ["--algorithm", "mopie", "--num-samples", str(samples), "--scheduler", "fifo", "--max-concurrent", "1",
            "--storage", str(tmp_path), "--set", f"max_iterations={iterations}", "--grid", "patience=[0]"]
    # the driver joins the session's Ray: killing it ends its job, and Ray ends the job's trials;
    # Tune's newer console, whatever an earlier search in this process left in the environment
    # (tune.py without --verbose sets RAY_AIR_NEW_OUTPUT=0 in its own process)
    env = {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address, "PYTHONUNBUFFERED": "1",
           "RAY_AIR_NEW_OUTPUT": "1"}
    # --verbose: that console's per-trial lines tell when to interrupt (result.json files are
    # written in batches): two trials finished and the third past its first checkpoint
    with child_process([sys.executable, "tune.py", *args, "--name", experiment.name, "--verbose"], log, env) as process:
        def cut_here() -> bool:
            text = log.read_text(errors="replace")
            return (text.count(f"completed after {iterations} iterations") >= 2
                    and text.count("saved a checkpoint for iteration 5 ") >= 3)

        wait_for(cut_here, 300, "2 finished trials and a third checkpointed", process, log, every=0.01)
        process.send_signal(signal.SIGINT)
        # Tune saves its state on the first Ctrl-C; then the driver is SIGKILLed where it stands
        wait_for(lambda: "Experiment has been interrupted" in log.read_text(errors="replace"), 60,
                 "Tune's interrupted state", process, log, every=0.01)
        kill_tree(process)
    finished = terminated_trials(experiment)
    before = trial_results(experiment)
    assert 2 <= len(finished) < samples, "the search must be cut in the middle"
    if process.returncode == 130:  # it got as far as its own summary: it says how to resume
        assert "search interrupted" in log.read_text() and "--resume" in log.read_text()

    assert tune.main([*args, "--name", experiment.name, "--resume"]) == 0
    table = pd.read_csv(experiment / "trials.csv")
    assert len(table) == samples and table["trial_id"].is_unique
    assert (table["status"] == "TERMINATED").all() and (table["training_iteration"] == iterations).all()
    after = trial_results(experiment)
    assert set(after) == set(table["trial_id"])
    for trial_id in finished:  # finished trials were not run again: not one more result row
        assert after[trial_id] == before[trial_id], trial_id
    for trial_id in set(before) - finished:  # one cut short went on from its latest checkpoint
        checkpointed = [row["training_iteration"] for row in before[trial_id] if row.get("checkpoint_dir_name")]
        new_rows = after[trial_id][len(before[trial_id]):]
        assert new_rows and new_rows[0]["training_iteration"] == max(checkpointed, default=0) + 1, trial_id


class InterruptAtTheFirstFinalReport(ray.tune.Callback):
    """A user's Tune callback (by its class path) that presses Ctrl-C in the search's own driver
    at the worst moment: just after Tune has processed a trial's final report (its result file
    then says done), before that report's checkpoint has been saved."""

    sent = False

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if result.get("done") and not self.sent:
            self.sent = True
            os.kill(os.getpid(), signal.SIGINT)


@pytest.mark.ray
def test_a_ctrl_c_just_after_a_trials_final_report_does_not_run_that_trial_again(ray_session, tmp_path,
                                                                                monkeypatch):
    experiment = tmp_path / "cut"
    args = ["--algorithm", "mopie", "--num-samples", "3", "--scheduler", "fifo", "--max-concurrent", "1",
            "--storage", str(tmp_path), "--name", experiment.name,
            *[item for setting in ("image_size=64", "obj_size=32", "n_samples=25", "sample_diameter=12",
                                   "max_iterations=3", "patience=0") for item in ("--set", setting)]]
    monkeypatch.setenv("RAY_TUNE_CALLBACKS", f"{__name__}.InterruptAtTheFirstFinalReport")
    assert tune.main(args) == 130
    before = trial_results(experiment)
    finished = {trial for trial, rows in before.items() if rows[-1].get("done")}
    assert len(finished) == 1
    # the search waited for that checkpoint's save: what --resume reads records the trial finished
    assert finished <= terminated_trials(experiment)

    monkeypatch.delenv("RAY_TUNE_CALLBACKS")
    assert tune.main([*args, "--resume"]) == 0
    after = trial_results(experiment)
    assert len(after) == 3
    for trial in finished:
        assert after[trial] == before[trial], "a finished trial ran again"


def test_an_interrupted_search_is_counted_as_unfinished():
    """After Ctrl-C, Tune returns early: tune.py must not call that search done (exit 130 and
    the --resume line come from these counts)."""
    from types import SimpleNamespace as Result

    from distributed.results import grid_combinations, trial_counts, trial_status

    grid = [Result(error=None, metrics={"done": True}), Result(error=RuntimeError("x"), metrics={}),
            Result(error=None, metrics={"done": False, "training_iteration": 3})]
    assert [trial_status(r) for r in grid] == ["TERMINATED", "ERROR", "UNFINISHED"]
    # 6 trials asked for, 3 started: 3 never ran
    assert trial_counts(grid, expected=6) == {"TERMINATED": 1, "ERROR": 1, "UNFINISHED": 4}
    assert trial_counts(grid[:2], expected=2) == {"TERMINATED": 1, "ERROR": 1}
    assert grid_combinations({"lr": {"grid_search": [1, 2]}, "b": {"grid_search": [0, 1, 2]}, "c": 5}) == 6
