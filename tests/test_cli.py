"""Bad input at the edge: exit code 2 and one line naming the problem, before Ray starts."""
from __future__ import annotations

import time

import pytest

import run
import tune
from trainers.checkpoint import save_atomic


def run_main(module, argv, capsys):
    try:
        code = module.main(argv)
    except SystemExit as exit_:  # argparse errors
        code = exit_.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize("module", [run, tune])
def test_unknown_algorithm_lists_the_names(module, capsys):
    code, err = run_main(module, ["--algorithm", "gat-fancy"], capsys)
    assert code == 2
    assert "unknown algorithm 'gat-fancy'" in err and "gat-advanced, gat-simple" in err  # the registered names


@pytest.mark.parametrize("module", [run, tune])
def test_bad_value_names_field_and_range(module, capsys):
    code, err = run_main(module, ["--algorithm", "gat-advanced", "--set", "lr=-0.5"], capsys)
    assert code == 2 and "lr = -0.5" in err and "allowed: lr > 0" in err
    code, err = run_main(module, ["--algorithm", "gat-advanced", "--set", "val_frac=0.9"], capsys)
    assert code == 2 and "val_frac" in err and "< 0.5" in err
    code, err = run_main(module, ["--algorithm", "gat-simple", "--set", "embedding_dim=30", "--set", "heads=4"], capsys)
    assert code == 2 and "multiple of heads" in err


def test_unknown_set_key(capsys):
    code, err = run_main(run, ["--algorithm", "gat-simple", "--set", "learning_rate=0.1"], capsys)
    assert code == 2 and "unknown config key 'learning_rate'" in err and "lr" in err


def test_missing_and_malformed_events_file(tmp_path, capsys):
    code, err = run_main(run, ["--algorithm", "gat-simple", "--set", f"events={tmp_path}/none.parquet"], capsys)
    assert code == 2 and "none.parquet" in err and "does not exist" in err
    bad = tmp_path / "events.csv"
    bad.write_text("user_id,track_id\n1,2\n")
    code, err = run_main(run, ["--algorithm", "gat-simple", "--set", f"events={bad}"], capsys)
    assert code == 2 and "events.csv" in err and "artist_id" in err and "timestamp" in err
    garbage = tmp_path / "events.parquet"
    garbage.write_bytes(b"this is not parquet")
    code, err = run_main(run, ["--algorithm", "gat-simple", "--set", f"events={garbage}"], capsys)
    assert code == 2 and "events.parquet" in err


def test_gpus_on_a_machine_without_gpus_fails_at_once(capsys, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    started = time.perf_counter()
    code, err = run_main(run, ["--algorithm", "gat-simple", "--gpus-per-worker", "1"], capsys)
    assert code == 2 and "--gpus-per-worker 1" in err and "has none" in err
    assert time.perf_counter() - started < 10  # no Ray start, no wait for resources


def test_checkpoint_from_another_algorithm(tmp_path, capsys):
    save_atomic({"algorithm": "gat-simple", "config": {}, "iteration": 3, "trainer": {}}, tmp_path / "state.pt")
    code, err = run_main(run, ["--algorithm", "gat-advanced", "--from-checkpoint", str(tmp_path)], capsys)
    assert code == 2 and "written by algorithm 'gat-simple', not 'gat-advanced'" in err


def test_malformed_yaml_config(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("lr: 0.1\n  patience: [\n")
    code, err = run_main(tune, ["--algorithm", "gat-simple", "--config", str(config)], capsys)
    assert code == 2 and "not valid YAML" in err


def test_bad_flags_exit_2(capsys):
    code, err = run_main(run, ["--algorithm", "gat-simple", "--workers", "0"], capsys)
    assert code == 2 and "--workers must be >= 1" in err
    code, err = run_main(tune, ["--algorithm", "gat-simple", "--scheduler", "hyperband"], capsys)
    assert code == 2 and "invalid choice" in err


def test_tune_gpu_share_auto_and_bad_values(capsys):
    """tune.py --gpus-per-worker: auto (the default) gives CPU trials where there is no GPU and the
    search space's GPU_SHARE where there is; a word other than auto or a negative share exits 2."""
    from search_spaces import load_search_space

    mopie, ppo = load_search_space("mopie"), load_search_space("ppo-shogi")
    assert tune.parse_args(["--algorithm", "mopie"]).gpus_per_worker == "auto"
    assert tune.resolve_gpu_share("auto", 0.0, mopie) == 0.0
    assert tune.resolve_gpu_share("auto", 2.0, mopie) == 0.25
    assert tune.resolve_gpu_share("auto", 1.0, ppo) == 1.0
    assert tune.resolve_gpu_share(0.5, 2.0, mopie) == 0.5  # an explicit share wins
    from distributed.tune import plan_trials

    packed = plan_trials(1, tune.resolve_gpu_share("auto", 1.0, mopie), cpus=16, gpus=1, max_concurrent=None)
    assert packed.concurrency == 4 and packed.trial_resources == {"CPU": 1.0, "GPU": 0.25}
    code, err = run_main(tune, ["--algorithm", "mopie", "--gpus-per-worker", "some"], capsys)
    assert code == 2 and "expected a number or auto" in err
    code, err = run_main(tune, ["--algorithm", "mopie", "--gpus-per-worker", "-1"], capsys)
    assert code == 2 and "--gpus-per-worker must be >= 0" in err


def test_tune_plans_room_for_each_trials_self_play_actors():
    """ppo-shogi trials with collector=ray start actors outside the trial's own resources (its
    registry entry's Ray-parts hook says how many): fewer trials run at once so that every
    trial's actors fit, and a trial that cannot fit is refused before Ray is asked (it used to
    wait for its actors until a timeout)."""
    from cli_common import assemble_config
    from distributed.resources import ResourceError, ray_parts_of
    from distributed.tune import plan_trials

    spec, config = assemble_config("ppo-shogi", None, ["collector=ray", "actors=2", "actor_cpus=0.5", "eval_actors=0"])
    assert ray_parts_of(spec, config, 1, 0.0).cpus == 1.0
    _, served = assemble_config("ppo-shogi", None, ["collector=ray", "actors=2", "actor_cpus=0.5", "eval_actors=0",
                                                    "inference=server"])
    assert ray_parts_of(spec, served, 1, 0.0).cpus == 1.5  # one inference actor per learner
    _, evaluated = assemble_config("ppo-shogi", None, ["collector=ray", "actors=2", "actor_cpus=0.5", "eval_actors=2"])
    assert ray_parts_of(spec, evaluated, 1, 0.0).cpus == 2.0  # evaluation actors beside one learner
    assert ray_parts_of(spec, evaluated, 2, 0.0).cpus == 1.0  # several learners evaluate in-process
    _, local = assemble_config("ppo-shogi", None, [])
    assert ray_parts_of(spec, local, 1, 0.0) is None
    assert ray_parts_of(assemble_config("mopie", None, [])[0], local, 1, 0.0) is None  # no hook at all
    assert plan_trials(1, 0.0, cpus=2, gpus=0, max_concurrent=None, actor_cpus=1.0).concurrency == 1
    assert plan_trials(1, 0.0, cpus=16, gpus=0, max_concurrent=None, actor_cpus=3.0).concurrency == 4  # 16 / (1 + 3)
    train = plan_trials(2, 0.0, cpus=16, gpus=0, max_concurrent=None, trial_mode="train", actor_cpus=2.0)
    assert train.concurrency == 3 and train.workers.workers == 2  # 16 / (0.01 + 2 + 2)
    with pytest.raises(ResourceError, match="self-play actors hold 2 CPUs"):
        plan_trials(1, 0.0, cpus=2, gpus=0, max_concurrent=None, actor_cpus=2.0, actor_label="self-play actor")


def test_a_search_too_large_or_empty_exits_2_with_the_count(capsys):
    code, err = run_main(tune, ["--algorithm", "mopie", "--num-samples", "0"], capsys)
    assert code == 2 and "--num-samples must be >= 1, got 0" in err
    code, err = run_main(tune, ["--algorithm", "mopie", "--num-samples", "1000", "--grid", "batch_size=[8,16,32,64]",
                                "--grid", "momentum=" + str([i / 100 for i in range(26)])], capsys)
    assert code == 2 and "would run 104,000 trials" in err and "the limit is 100,000" in err
    import ray

    assert not ray.is_initialized()  # said before Ray starts


def test_a_key_fixed_with_set_leaves_the_search_space():
    from cli_common import assemble_config
    from search_spaces import load_search_space

    spec, config = assemble_config("mopie", None, ["patience=0", "lr=0.5"])
    space = tune.search_space(load_search_space(spec), config,
                              tune.parse_args(["--algorithm", "mopie", "--grid", "lr=[0.4, 0.6]"]))
    assert "patience" not in space            # --set patience=0 holds in every trial
    assert space["lr"] == {"grid_search": [0.4, 0.6]}  # an explicit --grid axis still wins
    assert "momentum" in space and "beta" in space
