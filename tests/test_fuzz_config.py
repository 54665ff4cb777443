"""Bad input, fuzzed: random `--set` pairs, YAML config files and command lines thrown at the
config parsing of run.py and tune.py, without starting Ray.

`start_ray` is replaced by a stop that records the assembled config: every input either reaches
it with a config that survives the trip to a worker (model_dump -> Config(**...)), and, for
tune.py, with every point of the search space, or it ends with exit code 2 and one line naming
what is wrong. Never a traceback, never another exception.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import random
import re
import sys

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import run
import tune
from trainers.registry import ALGORITHMS

EXAMPLES = int(os.environ.get("TRAINYARD_FUZZ_EXAMPLES", "300"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
TRIED = {"inputs": 0, "valid": 0, "rejected": 0}  # reported at the end of the module

ALL_KEYS = sorted({key for spec in ALGORITHMS.values() for key in spec.config_class.model_fields})
TRICKY_VALUES = ["nan", "inf", "-inf", ".nan", "1e999", "-1", "0", "1e-3", "10000000000000000000000", "true",
                 "null", "~", "[", "{a: 1}", "[1, 2]", "''", "\"", "!!python/object/apply:os.system ['echo pwned']",
                 "&a [*a]", "0x10", "1_000", "2024-01-01", "yes", "off", "- x", "a: b: c", ".", "/", "\x00"]
# schedule_kwargs reach torch's LR schedulers in the worker: names and values they may refuse
SCHEDULE_KWARGS = ["{gamma: 0.5}", "{step_size: 2, gamma: 0.5}", "{step_size: 0}", "{T_max: 3}", "{T_0: 0}",
                   "{T_0: 2, T_mult: 2}", "{T_mult: 1.5}", "{factor: 2}", "{factor: 0.5, patience: 0}",
                   "{threshold_mode: x}", "{foo: 1}", "{eta_min: -1}", "{gamma: abc}", "{last_epoch: 5}",
                   "{mode: max}", "{cooldown: -1}", "{min_lr: 0.001}", "{eps: nan}"]


# mopie's `alpha` is folded into `lr` before the fields are checked: a bad alpha is reported as lr
ALIASES = {"alpha": "lr"}


class ReachedRay(Exception):
    """The input was accepted: the CLI went on to start Ray."""


def stop_at_ray(address=None, num_cpus=None):
    # the config and (tune.py) the search space are locals of main() at this point
    caller = sys._getframe(1).f_locals
    raise ReachedRay(caller.get("config"), caller.get("space"))


@pytest.fixture(scope="module")
def cli_sandbox(tmp_path_factory):
    """The stop instead of start_ray, storage in a scratch folder, the environment restored
    (tune.py --wandb sets WANDB_MODE)."""
    storage = tmp_path_factory.mktemp("fuzz-storage")
    saved_env = dict(os.environ)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(run, "start_ray", stop_at_ray)
        patch.setattr(tune, "start_ray", stop_at_ray)
        patch.delenv("RAY_ADDRESS", raising=False)
        yield storage
    os.environ.clear()
    os.environ.update(saved_env)
    print(f"\nfuzzed inputs: {TRIED}")


def call_cli(module, argv: list[str]):
    """(exit code or 'ray', stderr, config, space) of one command line."""
    err = io.StringIO()
    config = space = None
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = module.main(argv)
        except SystemExit as exit_:  # argparse
            code = exit_.code
        except ReachedRay as reached:
            code, (config, space) = "ray", reached.args
    return code, err.getvalue(), config, space


def check_outcome(module, argv: list[str], names: list[str], fields: list[str] = ()) -> None:
    """The property: accepted with a usable config, or exit 2 with one line naming the problem:
    one of `names` (the keys, file or flag the input gave), or for a check between fields (the
    message has no "key = value:" head), one of the algorithm's `fields`."""
    code, err, config, space = call_cli(module, argv)
    TRIED["inputs"] += 1
    assert "Traceback" not in err, f"{module.__name__} {argv!r} printed a traceback:\n{err}"
    if code == "ray":
        TRIED["valid"] += 1
        assert_usable(config, space)
        return
    if code == 0 and any(a.startswith("-h") or a.startswith("--h") for a in argv):
        return  # --help
    assert code == 2, f"{module.__name__} {argv!r}: exit {code!r}\n{err}"
    TRIED["rejected"] += 1
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1, f"{argv!r}: expected one error line, got:\n{err}"
    if names:  # the message names one of the things the input gave (a key, a file, a flag)
        named = any(name in errors[0] or repr(name)[1:-1] in errors[0] for name in names)
        between_fields = not re.match(r"error: [\w.]+ = ", errors[0]) and any(f in errors[0] for f in fields)
        assert named or between_fields, f"{argv!r}: the message names none of {names!r}: {errors[0]}"


def assert_usable(config, space) -> None:
    """What a worker does with the config (rebuild it from its dump) and what a trial does
    (the dump updated with one point of the search space) must validate too."""
    rebuilt = type(config)(**config.model_dump())
    assert rebuilt == config
    build_schedule(config)
    if space:
        rng = random.Random(0)
        for _ in range(3):
            point = {key: sample_domain(domain, rng) for key, domain in space.items()}
            build_schedule(type(config)(**{**config.model_dump(), **point}))


def build_schedule(config) -> None:
    """The worker builds the LR schedule from schedule + schedule_kwargs: it must not raise."""
    import torch

    from trainers.base import make_scheduler

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=config.lr)
    make_scheduler(optimizer, config.schedule, config.max_iterations, **config.schedule_kwargs)


def sample_domain(domain, rng: random.Random):
    if isinstance(domain, dict) and "grid_search" in domain:
        return rng.choice(domain["grid_search"])
    if hasattr(domain, "sample"):
        return domain.sample(random_state=rng.randint(0, 2**31 - 1))
    return domain


# ----- strategies -------------------------------------------------------------------------------
algorithms = st.sampled_from(sorted(ALGORITHMS))
keys = st.one_of(st.sampled_from(ALL_KEYS), st.sampled_from(["schedule", "schedule_kwargs"]),
                 st.text(max_size=12).filter(lambda k: "=" not in k))
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True),
                    st.text(max_size=20))
plain_data = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                            st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                          max_leaves=6)
value_texts = st.one_of(st.sampled_from(TRICKY_VALUES), st.sampled_from(SCHEDULE_KWARGS), st.text(max_size=20),
                        plain_data.map(lambda v: yaml.safe_dump(v, default_flow_style=True).strip()))
numbers = st.one_of(st.integers(-3, 200).map(str), st.floats(-1, 3, allow_nan=False).map(repr))


def in_range(field) -> st.SearchStrategy:
    """Values a field accepts on its own (its type, its bounds, its choices): many inputs then
    pass the field checks and reach the checks between fields and the trip to the worker."""
    bounds = {attr: getattr(meta, attr) for meta in field.metadata for attr in ("gt", "ge", "lt", "le")
              if getattr(meta, attr, None) is not None}
    low, high = bounds.get("ge", bounds.get("gt", -1000)), bounds.get("le", bounds.get("lt", 1000))
    choices = getattr(field.annotation, "__args__", None)
    if field.annotation is bool:
        return st.booleans()
    if choices and all(isinstance(c, str) for c in choices):
        return st.sampled_from(choices)
    if isinstance(field.default, int):
        return st.integers(max(int(low), -1000), min(int(high), max(int(low), -1000) + 2000))
    if isinstance(field.default, float):
        return st.floats(max(low, -1000.0), min(high, 1000.0), allow_nan=False, exclude_min="gt" in bounds,
                         exclude_max="lt" in bounds)
    return st.just(field.get_default(call_default_factory=True))


def set_pairs_for(algorithm: str):
    """Mostly the algorithm's own keys with values in their range or plausible numbers (so that
    many inputs are valid and reach the deeper checks), some any key or any text."""
    fields = ALGORITHMS[algorithm].config_class.model_fields
    own = st.sampled_from(sorted(fields))
    fitting = own.flatmap(lambda key: st.tuples(st.just(key), in_range(fields[key]).map(json.dumps)))
    pair = st.one_of(fitting, st.tuples(own, numbers), st.tuples(own, value_texts), st.tuples(keys, value_texts))
    return st.lists(pair, min_size=1, max_size=4)


algorithm_and_pairs = algorithms.flatmap(lambda name: st.tuples(st.just(name), set_pairs_for(name)))


@pytest.mark.parametrize("module", [run, tune])
def test_random_set_pairs(module, cli_sandbox):
    @FUZZ
    @given(case=algorithm_and_pairs)
    def property_(case):
        algorithm, pairs = case
        argv = ["--algorithm", algorithm, "--storage", str(cli_sandbox)]
        for key, value in pairs:
            argv += ["--set", f"{key}={value}"]
        names = [key.strip() for key, _ in pairs] + ["--set"]
        names += [ALIASES[name] for name in names if name in ALIASES]
        check_outcome(module, argv, names, list(ALGORITHMS[algorithm].config_class.model_fields))

    property_()


yaml_documents = st.one_of(
    st.dictionaries(keys, plain_data, max_size=5).map(lambda d: yaml.safe_dump(d)),
    st.dictionaries(st.sampled_from(ALL_KEYS), value_texts, max_size=4)
    .map(lambda d: "".join(f"{k}: {v}\n" for k, v in d.items())),
    st.text(max_size=80),
    st.sampled_from(["", "- 1\n- 2\n", "lr: [1, 2\n", "!!python/object/apply:os.system ['echo pwned']\n",
                     "lr: &a [*a]\n", "\xff\xfe", "lr: 0.1\nlr: 0.2\n", "? [a]\n: 1\n"]),
)


@pytest.mark.parametrize("module", [run, tune])
def test_random_yaml_configs(module, cli_sandbox, tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz-yaml")

    @FUZZ
    @given(algorithm=algorithms, document=yaml_documents)
    def property_(algorithm, document):
        path = folder / "config.yaml"
        path.write_bytes(document.encode("utf-8", "surrogatepass"))
        argv = ["--algorithm", algorithm, "--config", str(path), "--storage", str(cli_sandbox)]
        fields = list(ALGORITHMS[algorithm].config_class.model_fields)
        check_outcome(module, argv, [str(path), *yaml_keys(document)], fields)

    property_()


def yaml_keys(document: str) -> list[str]:
    try:
        data = yaml.safe_load(document)
    except (yaml.YAMLError, ValueError):
        return []
    return [str(key) for key in data] if isinstance(data, dict) else []


RUN_FLAGS = ["--algorithm", "--config", "--set", "--workers", "--gpus-per-worker", "--actors", "--name", "--resume",
             "--from-checkpoint", "--address", "--max-failures", "--keep-checkpoints", "--wandb", "--bogus", "-h"]
TUNE_FLAGS = ["--algorithm", "--config", "--set", "--grid", "--num-samples", "--scheduler", "--search",
              "--max-concurrent", "--workers-per-trial", "--gpus-per-worker", "--trial-mode", "--name", "--resume",
              "--address", "--wandb", "--bogus"]
FLAG_VALUES = st.one_of(st.sampled_from(["0", "1", "2", "-1", "1.5", "nan", "inf", "asha", "pbt", "fifo", "optuna",
                                         "random", "inline", "train", "auto", "mopie", "gat-simple", "lr=0.1",
                                         "lr=[0.1, 0.2]", "lr=[]", "lr=x", "momentum=[0.0, 0.99]", "=", "",
                                         "auto", "/", "."]),
                        st.text(max_size=12), st.integers(-5, 100).map(str))


def command_lines(flags: list[str]):
    token = st.one_of(st.sampled_from(flags), FLAG_VALUES)
    return st.tuples(algorithms, st.lists(token, max_size=8))


@pytest.mark.parametrize("module,flags", [(run, RUN_FLAGS), (tune, TUNE_FLAGS)], ids=["run", "tune"])
def test_random_command_lines(module, flags, cli_sandbox):
    @FUZZ
    @given(line=command_lines(flags))
    def property_(line):
        algorithm, tokens = line
        # the storage goes last (argparse keeps the last one): an abbreviated random flag such
        # as "--st" never makes a folder outside the sandbox
        argv = ["--algorithm", algorithm, *tokens, "--storage", str(cli_sandbox)]
        check_outcome(module, argv, [])

    property_()


# ----- what the fuzzing found, pinned -------------------------------------------------------------
@pytest.mark.parametrize("module,argv,wanted", [
    # schedule_kwargs went to torch's scheduler unchecked: a TypeError in every worker
    (run, ["--algorithm", "mopie", "--set", "schedule=step", "--set", "schedule_kwargs={T_max: 3}"],
     "schedule_kwargs = a mapping: 'T_max' is not an argument of schedule 'step'"),
    (run, ["--algorithm", "gat-simple", "--set", "schedule=plateau", "--set", "schedule_kwargs={factor: 2}"],
     "factor = 2: schedule 'plateau' needs a number in (0, 1)"),
    # a grid of schedules the fixed schedule_kwargs do not fit: every such trial failed (a key
    # fixed with --set alone leaves the space, so the conflict needs the --grid axis)
    (tune, ["--algorithm", "mopie", "--set", "schedule=step", "--set", "schedule_kwargs={gamma: 0.5}",
            "--grid", "schedule=[none, step]"], "the search space's schedule = 'none' does not fit"),
    # mopie's alpha (an alias of lr) fixed while a grid varies lr: every trial failed
    (tune, ["--algorithm", "mopie", "--set", "alpha=0.5", "--grid", "lr=[0.3, 0.6]"], "alpha (0.5) and lr"),
    # a list where a metric name belongs broke a validator: "unhashable type: 'list'"
    (run, ["--algorithm", "born-adversarial", "--set", "metric=[val_acc]"], "metric = ['val_acc']: Input should be"),
])
def test_inputs_the_fuzzing_found(module, argv, wanted, cli_sandbox):
    code, err, _, _ = call_cli(module, [*argv, "--storage", str(cli_sandbox)])
    assert code == 2 and wanted in err and len(err.strip().splitlines()) == 1, err
