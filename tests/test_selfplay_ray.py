"""`ppo-shogi` on Ray: self-play actors, the learner as a TorchTrainer worker, a real SIGKILL of
an actor, resume, the inference server, and bad input. One real Ray (2 CPUs) for the session.

On 2 CPUs the two self-play and two evaluation actors hold 0.25 CPU each (`actor_cpus=0.25`),
which leaves the learner a whole CPU.
"""
from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest
import torch

pytest.importorskip("cshogi")

import run  # noqa: E402
from trainers.checkpoint import load_checkpoint  # noqa: E402
from trainers.selfplay.config import PpoShogiConfig  # noqa: E402
from trainers.selfplay.game import unpack_features, unpack_masks  # noqa: E402
from trainers.selfplay.network import ActorCritic, masked_logits  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("one_thread")]

TINY = dict(blocks=1, channels=8, games_per_batch=4, rollout_plies=48, ply_limit=40, num_minibatches=4,
            update_epochs=2, eval_every=2, eval_games=4, final_eval_games=4, snapshot_every=2, snapshot_prob=0.5,
            pool_size=2, patience=0, checkpoint_every=1, actor_cpus=0.25, eval_actors=2)


def sets(**overrides) -> list[str]:
    return [f"--set={key}={value}" for key, value in {**TINY, **overrides}.items()]


def run_ppo(storage, name, *extra, **overrides) -> int:
    return run.main(["--algorithm", "ppo-shogi", "--actors", "2", "--storage", str(storage), "--name", name,
                     *sets(**overrides), *extra])


def final_state(run_dir) -> dict:
    folders = sorted(p for p in run_dir.glob("checkpoint_*") if p.is_dir())
    assert folders, f"no checkpoint in {run_dir}"
    payloads = [load_checkpoint(folder, "ppo-shogi") for folder in folders]
    return max(payloads, key=lambda payload: payload["iteration"])


def source_of(payload) -> dict:
    return payload["trainer"]["extra"]["source"]


def alive_actor_pids(count: int, timeout: float = 60.0) -> list[int]:
    import ray
    from ray.util.state import list_actors

    # this Ray's address: other Ray instances on the machine would make the default ambiguous
    address = ray.get_runtime_context().gcs_address
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        actors = list_actors(address=address, filters=[("class_name", "=", "SelfPlayActor"), ("state", "=", "ALIVE")])
        pids = [actor.pid for actor in actors if actor.pid]
        if len(pids) >= count:
            return pids
        time.sleep(0.2)
    raise TimeoutError("the self-play actors did not come up")


def kill_an_actor_after_first_checkpoint(run_dir, killed: list) -> None:
    """SIGKILL one self-play actor's process once the run has checkpointed its first iteration."""
    try:
        pid = alive_actor_pids(2)[0]
        deadline = time.monotonic() + 120
        while not list(run_dir.glob("checkpoint_*")) and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)
    except Exception as error:  # the test reports it instead of a silent thread
        killed.append(error)


@pytest.mark.long
def test_a_killed_actor_is_restarted_and_the_run_finishes(ray_session, tmp_path):
    killed: list[int] = []
    killer = threading.Thread(target=kill_an_actor_after_first_checkpoint, args=(tmp_path / "kill", killed))
    killer.start()
    # longer games, so that the kill lands while iterations remain
    code = run_ppo(tmp_path, "kill", max_iterations=5, ply_limit=80, rollout_plies=200)
    killer.join()
    assert code == 0 and len(killed) == 1 and isinstance(killed[0], int), killed
    payload = final_state(tmp_path / "kill")
    counters = source_of(payload)["ranks"][0]
    assert payload["iteration"] == 5 and counters["restarts"] >= 1
    # a lost request was asked for again: still exactly one accepted batch per actor per iteration
    assert counters["duplicates"] == 0 and counters["batches_received"] == 10
    assert source_of(payload)["actor_batches"] == {0: 5, 1: 5}


@pytest.fixture(scope="module")
def two_actor_run(ray_session, tmp_path_factory):
    """`--actors 2`, 1 learner, 5 updates; the learner dies once reporting iteration 3 and Ray
    Train restarts it from the iteration-2 checkpoint (one run serves two tests: Train start-up
    is most of its time)."""
    storage = tmp_path_factory.mktemp("two-actors")
    marker = storage / "failed-once"
    os.environ["TRAINYARD_FAIL_ONCE"] = f"3:{marker}"
    try:
        code = run_ppo(storage, "run", "--max-failures", "1", max_iterations=5)
    finally:
        del os.environ["TRAINYARD_FAIL_ONCE"]
    return code, marker.exists(), final_state(storage / "run")


@pytest.mark.long
def test_two_actors_one_learner(two_actor_run):
    code, _, payload = two_actor_run
    assert code == 0 and payload["iteration"] == 5 and payload["trainer"]["finished"]
    source, last = source_of(payload), payload["trainer"]["history"][-1]
    # one batch per actor per iteration, from both, none twice, none lost; the next batch is
    # already being played when training ends (collection overlaps the update)
    assert source["actor_batches"] == {0: 5, 1: 5} and source["next_sequence"] == {0: 7, 1: 7}
    counters = source["ranks"][0]   # the source's counters, one entry per learner rank
    assert counters == {"batches_received": 10, "plies_received": counters["plies_received"],
                        "duplicates": 0, "lost": 0, "restarts": 0, "replaced": 0}
    assert last["source_batches"] == 10 and last["source_actor_batches_min"] == 5 and last["source_actors"] == 2
    assert last["source_duplicates"] == last["source_lost"] == 0 and last["source_plies"] > 0
    assert sorted(source["games"]) == [0, 1] and len(source["games"][0]) == TINY["games_per_batch"]


@pytest.mark.long
def test_evaluations_on_actors_attach_to_the_iteration_that_played(two_actor_run):
    _, _, payload = two_actor_run
    history, extra = payload["trainer"]["history"], payload["trainer"]["extra"]
    for row in history:   # an evaluation is reported at its own iteration or later, never earlier
        assert row["eval_iteration"] <= row["iteration"]
    assert history[-1]["eval_iteration"] == 5   # the last iteration's evaluation is waited for
    evaluated = {int(row["iteration"]) for row in extra["elo"]["history"]}
    assert {1, 5} <= evaluated and evaluated <= {1, 2, 3, 4, 5}
    assert extra["weights_iteration"] == payload["trainer"]["early_stopping"]["best_iteration"] + 1
    assert extra["weights_iteration"] in evaluated and extra["last"]["iteration"] == 5
    # every batch after a (re)start was played while the learner updated: one update old
    assert [row["source_policy_lag"] for row in history] == [0, 1, 0, 1, 1]


@pytest.mark.long
def test_a_killed_evaluation_actor_is_replaced_and_its_match_replayed(ray_session):
    """SIGKILL an evaluation actor mid-match: the match is played again, whole, on a fresh actor,
    and its result is the one the same match gives in the learner's process."""
    from distributed.selfplay import RayEvaluator
    from trainers.selfplay.evaluation import Match, play

    config = PpoShogiConfig(**{**TINY, "collector": "ray", "eval_actors": 1, "ply_limit": 300})
    weights = ActorCritic(1, 8).state_dict()
    matches = [Match(7, "two_ply", 6, 11, weights), Match(7, "random", 4, 12, weights)]
    evaluator = RayEvaluator(config)
    try:
        pid = ray_session.get(evaluator.actors[0].ready.remote())
        evaluator.submit(matches)
        time.sleep(0.5)   # well inside the two-ply match (seconds of play)
        os.kill(pid, signal.SIGKILL)
        (evaluation,) = evaluator.poll(wait=True)
        assert evaluation.iteration == 7 and list(evaluation.results) == ["two_ply", "random"]
        assert evaluator.counters() == {"eval_replayed": 1.0, "eval_replaced": 1.0}
        for match in matches:
            assert evaluation.results[match.opponent].scores == play(match, config).scores
        assert ray_session.get(evaluator.actors[0].ready.remote()) != pid and evaluator.pending() == []
    finally:
        evaluator.close()


@pytest.mark.long
def test_a_restarted_learner_resumes_from_its_checkpoint(two_actor_run):
    """New actors after the restart; iterations, counters and sequences continue from the checkpoint."""
    code, failed_once, payload = two_actor_run
    history = payload["trainer"]["history"]
    assert code == 0 and failed_once
    assert [int(row["iteration"]) for row in history] == [1, 2, 3, 4, 5]
    assert [row["source_batches"] for row in history] == [2, 4, 6, 8, 10]   # counted on, not restarted
    assert history[-1]["source_plies"] == history[-1]["total_plies"]


def test_source_counts_a_loss_once_and_asks_again(ray_session):
    """A SIGKILL while the actor plays: the request is lost, the restarted actor is asked again."""
    from distributed.selfplay import RaySource

    source = RaySource(PpoShogiConfig(**{**TINY, "collector": "ray", "actors": 2, "staleness": 0}))
    try:
        weights = ActorCritic(1, 8).state_dict()
        source.collect(weights, 100, seed=0, opponent=weights)
        pid = ray_session.get(source.actors[0].identity.remote())["pid"]
        threading.Timer(0.3, os.kill, (pid, signal.SIGKILL)).start()
        batches = source.collect(weights, 3000, seed=1, opponent=weights)   # a few seconds of play
        counters = source.counters()
        assert sorted(b.source for b in batches) == ["actor_0", "actor_1"]
        assert counters["lost"] >= 1 and counters["restarts"] == 1 and counters["duplicates"] == 0
        assert counters["batches"] == 4 and source.actor_batches == {0: 2, 1: 2}
        assert ray_session.get(source.actors[0].identity.remote())["pid"] != pid
    finally:
        source.close()


def learner_log_probs(network: ActorCritic, batch) -> np.ndarray:
    with torch.inference_mode():
        logits, _ = network(torch.from_numpy(unpack_features(batch.features)))
        log_probs = torch.log_softmax(masked_logits(logits, torch.from_numpy(unpack_masks(batch.masks))), dim=1)
    return log_probs.gather(1, torch.from_numpy(batch.actions)[:, None]).squeeze(1).numpy()


def test_inference_server_plays_with_the_learners_weights(ray_session):
    from distributed.selfplay import RaySource

    torch.manual_seed(1)
    network, other = ActorCritic(1, 8), ActorCritic(1, 8)
    for net in (network, other):
        torch.nn.init.normal_(net.policy.weight, std=0.3)  # far from uniform: wrong weights would show
    source = RaySource(PpoShogiConfig(**{**TINY, "collector": "ray", "actors": 2, "inference": "server"}))
    try:
        batches = source.collect(network.state_dict(), 100, seed=0, opponent=other.state_dict())
        assert sorted(b.source for b in batches) == ["actor_0", "actor_1"]
        for batch in batches:
            np.testing.assert_allclose(batch.log_probs, learner_log_probs(network, batch), atol=1e-4)
            assert not np.allclose(batch.log_probs, learner_log_probs(other, batch), atol=1e-2)
    finally:
        source.close()


def run_main(argv, capsys):
    try:
        code = run.main(argv)
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err


def test_bad_actor_counts_exit_2_at_once(ray_session, capsys):
    code, err = run_main(["--algorithm", "ppo-shogi", "--actors", "0"], capsys)
    assert code == 2 and err.strip() == "error: --actors must be >= 1, got 0"
    started = time.perf_counter()
    code, err = run_main(["--algorithm", "ppo-shogi", "--actors", "8"], capsys)   # 8 x 1 CPU on 2 CPUs
    assert code == 2 and "--actors 8" in err and "do not fit the cluster's 2 CPUs" in err
    assert len(err.strip().splitlines()) == 1 and time.perf_counter() - started < 5
    code, err = run_main(["--algorithm", "ppo-shogi", "--actors", "2"], capsys)   # 2 x 1 CPU + a learner
    assert code == 2 and "+ 2 evaluation actor(s)" in err and "--set actor_cpus=0.25" in err
    code, err = run_main(["--algorithm", "ppo-shogi", "--actors", "1", "--workers", "2"], capsys)
    assert code == 2 and "fewer than --workers 2" in err


def test_a_search_whose_actors_cannot_fit_exits_2_at_once(ray_session, capsys, tmp_path):
    """tune.py plans each trial's self-play actors too: 4 actors x 1 CPU beside a trial's learner
    cannot fit 2 CPUs, which is said at once (the trials used to wait for their actors)."""
    import tune

    started = time.perf_counter()
    try:
        code = tune.main(["--algorithm", "ppo-shogi", "--num-samples", "1", "--storage", str(tmp_path),
                          "--set", "collector=ray", "--set", "actors=4", "--set", "eval_actors=0"])
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2 and "self-play actors hold 4 CPUs" in err and "the cluster has 2 CPUs" in err
    assert time.perf_counter() - started < 10
