"""The hosts' package source: a folder of wheels for exactly what this environment has
installed (the project's resolved requirements), plus pip, setuptools and wheel for the
editable install, built from here (the hosts have no route to a package index) so that
cluster.yaml's setup_commands run unchanged. Reused while the installed set is the same.
"""
from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

BUILD_TOOLS = ["pip", "setuptools", "wheel"]


def pinned_requirements() -> list[str]:
    frozen = subprocess.run([sys.executable, "-m", "pip", "freeze", "--exclude-editable"],
                            capture_output=True, text=True, check=True).stdout.splitlines()
    return sorted(line for line in frozen if "==" in line and not line.startswith(("-e", "trainyard==")))


def build(folder: Path) -> Path:
    requirements = pinned_requirements() + BUILD_TOOLS
    digest = hashlib.sha256("\n".join(requirements).encode()).hexdigest()[:16]
    done = folder / f".complete-{digest}"
    if done.exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    listing = folder / "requirements.txt"
    listing.write_text("\n".join(requirements) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                    "-d", str(folder), "-r", str(listing)], check=True, timeout=1800)
    done.write_text("\n".join(requirements))
    return folder
