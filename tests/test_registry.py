"""The open registry: every algorithm comes from the `trainyard.algorithms` entry points of an
installed package (the built-in nine from this project's own), or from `package.module:Class`;
a registration that cannot work exits 2 naming the entry point. Fake packages here are real
installed metadata: a `*.dist-info` folder on sys.path, which importlib.metadata reads."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

import run
import tune
from trainers import registry
from trainers.config import TrainerConfig

ROOT = Path(__file__).resolve().parents[1]
BUILTIN = ["gat-simple", "gat-advanced", "mopie", "prism", "born-classify", "born-generative", "born-gan",
           "born-adversarial", "ppo-shogi"]


@pytest.fixture
def packages(tmp_path, monkeypatch):
    """install(dist, entry points, modules): a fake installed package on sys.path."""
    monkeypatch.syspath_prepend(str(tmp_path))

    def install(dist: str, entries: dict[str, str], modules: dict[str, str] | None = None) -> None:
        info = tmp_path / f"{dist.replace('-', '_')}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
        lines = "\n".join(f"{name} = {value}" for name, value in entries.items())
        (info / "entry_points.txt").write_text(f"[trainyard.algorithms]\n{lines}\n")
        for name, source in (modules or {}).items():
            (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        registry.reload()

    yield install
    monkeypatch.undo()
    registry.reload()


def cli(module, argv, capsys):
    try:
        code = module.main(argv)
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err


def test_the_builtin_nine_come_from_this_projects_entry_points():
    from trainers.base import Trainer

    assert set(BUILTIN) <= set(registry.algorithm_names())
    for name in BUILTIN:
        spec = registry.get_algorithm(name)
        assert "package 'trainyard'" in spec.origin and issubclass(spec.config_class, TrainerConfig)
        assert spec.search_space == f"search_spaces.{name.replace('-', '_')}"
    # the trainer classes are imported only when asked for, and carry the registered name
    trainer = registry.get_algorithm("mopie").trainer_class()
    assert issubclass(trainer, Trainer) and trainer.algorithm == "mopie"
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert all(f'{name} = "trainers.builtin:' in pyproject for name in BUILTIN)


def test_module_class_form_needs_no_packaging(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "examples" / "custom_algorithm"))
    spec = registry.get_algorithm("trainyard_digits.trainer:DigitsMlpTrainer")
    assert spec.name == "digits-mlp" and spec.reference == "trainyard_digits.trainer:DigitsMlpTrainer"
    assert spec.config_class.__name__ == "DigitsMlpConfig" and spec.metric == "val_acc"
    assert registry.run_name_prefix(spec) == "digits-mlp"
    by_object = registry.get_algorithm("trainyard_digits.algorithm:DIGITS_MLP")
    assert by_object.search_space == "trainyard_digits.space"


def test_an_entry_point_whose_class_is_missing_exits_2_naming_it(packages, capsys):
    packages("broken-algos", {"ghost": "trainers.builtin:NO_SUCH_ALGORITHM",
                              "nomodule": "trainyard_no_such_module:ALGO"})
    code, err = cli(run, ["--algorithm", "ghost"], capsys)
    assert code == 2 and "'ghost'" in err and "trainers.builtin:NO_SUCH_ALGORITHM" in err
    assert "'broken-algos'" in err and len(err.strip().splitlines()) == 1
    code, err = cli(tune, ["--algorithm", "nomodule"], capsys)
    assert code == 2 and "'nomodule'" in err and "trainyard_no_such_module" in err
    # the Algorithm is there but its trainer class is not
    packages("half-algos", {"halfway": "half_algo:HALF"}, {"half_algo": """
        from trainers.config import TrainerConfig
        from trainers.registry import Algorithm
        HALF = Algorithm("trainers.base:NoSuchTrainer", TrainerConfig)
    """})
    code, err = cli(run, ["--algorithm", "halfway"], capsys)
    assert code == 2 and "'halfway'" in err and "trainers.base:NoSuchTrainer does not exist" in err


def test_an_entry_point_whose_config_is_not_a_trainer_config_exits_2(packages, capsys):
    packages("odd-algos", {"odd": "odd_algo:ODD", "plain": "odd_algo:NOT_AN_ALGORITHM"}, {"odd_algo": """
        from pydantic import BaseModel
        from trainers.registry import Algorithm
        class Settings(BaseModel):
            lr: float = 0.1
        ODD = Algorithm("trainers.imaging.mopie:MopieTrainer", Settings)
        NOT_AN_ALGORITHM = {"trainer": "x"}
    """})
    for module in (run, tune):
        code, err = cli(module, ["--algorithm", "odd"], capsys)
        assert code == 2 and "entry point 'odd'" in err and "'odd-algos'" in err
        assert "is not a trainers.config.TrainerConfig subclass" in err
    code, err = cli(run, ["--algorithm", "plain"], capsys)
    assert code == 2 and "entry point 'plain'" in err and "not a trainyard Algorithm" in err


def test_two_packages_claiming_one_name_exit_2_naming_both(packages, capsys):
    packages("mopie-fork", {"mopie": "trainers.builtin:MOPIE"})
    for module in (run, tune):
        code, err = cli(module, ["--algorithm", "mopie"], capsys)
        assert code == 2 and "registered by 2 packages" in err
        assert "'trainyard'" in err and "'mopie-fork'" in err
    assert registry.get_algorithm("prism").name == "prism"  # the other names still work


def test_the_registrys_trainer_name_must_match_its_checkpoints(packages, capsys):
    """A trainer whose `algorithm` differs from its entry point's name would write checkpoints
    that its own resume refuses: said at once."""
    packages("renamed", {"renamed-mopie": "trainers.builtin:MOPIE"})
    code, err = cli(run, ["--algorithm", "renamed-mopie"], capsys)
    assert code == 2 and "'renamed-mopie'" in err and "algorithm = 'mopie'" in err
