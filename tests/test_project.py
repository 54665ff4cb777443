"""The project's promises about itself: CI runs the README's command; cluster files are valid."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    return re.findall(r"```bash\n(python3\.11 -m venv[^\n]+)\n```", (ROOT / "README.md").read_text())


def test_ci_runs_the_readme_test_command():
    commands = readme_commands()
    assert len(commands) == 2 and "run.py --algorithm" in commands[0] and "pytest" in commands[1]
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert commands[1] in ci_lines


@pytest.mark.parametrize("name", ["cluster.yaml", "examples/cluster-aws.yaml"])
def test_cluster_file_is_valid_for_rays_launcher(name):
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((ROOT / name).read_text())
    validate_config(prepare_config(config))  # raises on a schema error
    assert config["head_start_ray_commands"] and config["setup_commands"]
    assert any("--dashboard-host=127.0.0.1" in c for c in config["head_start_ray_commands"])
    assert config["file_mounts"] == {"~/trainyard": "."}


def test_cluster_schema_catches_a_typo():
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    config["max_worker"] = config.pop("max_workers")
    with pytest.raises(jsonschema.ValidationError, match="max_worker"):
        validate_config(prepare_config(config))


def test_search_spaces_cover_the_shared_keys():
    from search_spaces import load_search_space
    from trainers.registry import ALGORITHMS

    for name, spec in ALGORITHMS.items():
        space = load_search_space(name).space()
        assert {"lr", "patience", "schedule"} <= set(space)
        assert set(space) <= set(spec.config_class.model_fields), f"{name}: space has keys the config lacks"


def test_trainers_import_no_ray():
    offenders = [str(p) for p in (ROOT / "trainers").rglob("*.py")
                 if re.search(r"^\s*(import ray|from ray)", p.read_text(), re.MULTILINE)]
    assert offenders == []


GENERIC_LAYERS = ["run.py", "tune.py", "cli_common.py", "search_spaces/__init__.py", "trainers/base.py",
                  "trainers/registry.py", "trainers/context.py", "trainers/config.py", "trainers/checkpoint.py",
                  "trainers/run_logger.py", "trainers/mlflow_tracking.py",
                  *[f"distributed/{p.name}" for p in (ROOT / "distributed").glob("*.py")
                    if not p.name.startswith("selfplay")]]


def test_the_generic_layers_name_no_algorithm():
    """What one algorithm needs from Ray comes through its registry entry (ray_parts); the CLIs,
    distributed/ (but for an algorithm's own Ray parts) and the Trainer base name none."""
    from trainers.registry import algorithm_names

    names = [re.escape(name) for name in algorithm_names()]
    pattern = re.compile(r"\b(" + "|".join([*names, "collector", "self-play", "shogi", "mopie", "prism",
                                            "born", "gat"]) + r")\b", re.IGNORECASE)
    offenders = [f"{path}:{number}: {line.strip()}" for path in GENERIC_LAYERS
                 for number, line in enumerate((ROOT / path).read_text().splitlines(), 1) if pattern.search(line)]
    assert len(GENERIC_LAYERS) > 15 and offenders == []


def test_ci_can_install_the_example_offline():
    """The example test installs examples/custom_algorithm without build isolation: the test
    extra must bring setuptools, and the example must declare its entry point."""
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^test = .*"setuptools', pyproject, re.MULTILINE)
    example = (ROOT / "examples" / "custom_algorithm" / "pyproject.toml").read_text()
    assert '[project.entry-points."trainyard.algorithms"]' in example


def test_comments_stand_on_their_own():
    """No pointers to documents outside the repository (a spec file, a numbered seed, a path on
    the machine the project was written on)."""
    pattern = re.compile(r"\bseed 0\d\d\b|\bspecs?[/ ]\w+\.md\b|/work/shared")
    files = [*(ROOT / "trainers").rglob("*.py"), *(ROOT / "distributed").rglob("*.py"),
             *(ROOT / "search_spaces").rglob("*.py"), ROOT / "run.py", ROOT / "tune.py", ROOT / "cli_common.py"]
    offenders = [f"{p.relative_to(ROOT)}:{n}" for p in files
                 for n, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert offenders == []
