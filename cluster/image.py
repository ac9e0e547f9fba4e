"""The pods' "image": a Python environment holding exactly what image/requirements.txt installs.

Building the image's environment with pip would download torch and take minutes. Instead this
resolves the requirements file against the distributions already installed in the test
environment (each requirement's version must satisfy its specifier, and its own dependencies are
followed, environment markers evaluated, extras not), then makes a fresh ``venv`` without system
site-packages whose site-packages holds a symbolic link to every file and folder of exactly those
distributions. pip is added because the image's base (python:3.11-slim) has it and Metaflow's pod
command runs ``python -m pip install boto3 requests``.

So a pod can import torch, pandas, matplotlib, boto3, requests and their dependencies, and fails
on anything else (Metaflow itself and torchperf/ come from the code package, as in a real pod).
The environment is built once per requirements file and test environment and cached.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
REQUIREMENTS = ROOT / "image" / "requirements.txt"
BASE_PACKAGES = ("pip",)  # in the base image; Metaflow's pod command calls pip
CACHE = Path(os.environ.get("TORCHPERF_IMAGE_CACHE", "/var/tmp/torchperf-image"))


class ImageError(RuntimeError):
    """A requirement the test environment cannot provide as the image would."""


def read_requirements(path: Path) -> list[Requirement]:
    lines = (line.split("#", 1)[0].strip() for line in Path(path).read_text().splitlines())
    return [Requirement(line) for line in lines if line]


def _installed() -> dict[str, metadata.Distribution]:
    found = {}
    for dist in metadata.distributions(path=sys.path):
        name = dist.metadata["Name"]
        if name:
            found.setdefault(canonicalize_name(name), dist)
    return found


def resolve(requirements: list[Requirement]) -> list[metadata.Distribution]:
    """Every installed distribution the requirements pull in, dependencies included."""
    installed = _installed()
    environment = default_environment()
    chosen: dict[str, metadata.Distribution] = {}
    todo = list(requirements) + [Requirement(name) for name in BASE_PACKAGES]
    while todo:
        requirement = todo.pop()
        if requirement.marker and not requirement.marker.evaluate({**environment, "extra": ""}):
            continue
        key = canonicalize_name(requirement.name)
        if key in chosen:
            continue
        dist = installed.get(key)
        if dist is None:
            raise ImageError(f"{requirement} is not installed in {sys.prefix}")
        if not requirement.specifier.contains(dist.version, prereleases=True):
            raise ImageError(
                f"{requirement} needs another version than the installed {dist.version}"
            )
        chosen[key] = dist
        todo.extend(Requirement(text) for text in dist.requires or [])
    return sorted(chosen.values(), key=lambda d: canonicalize_name(d.metadata["Name"]))


def _top_level_entries(dist: metadata.Distribution) -> set[str]:
    """The names directly under site-packages that a distribution installed."""
    entries = set()
    for file in dist.files or []:
        first = file.parts[0]
        if first in ("..", "__pycache__") or first.endswith(".pth"):
            continue
        entries.add(first)
    return entries


def build(requirements_file: Path = REQUIREMENTS, cache: Path = CACHE) -> Path:
    """The environment's folder (``<it>/bin/python``), built unless cached."""
    dists = resolve(read_requirements(requirements_file))
    fingerprint = hashlib.sha256(
        "\n".join(
            # "hard links": environments linked the older way (symlinks) are not reused.
            [sys.prefix, "hard links", Path(requirements_file).read_text()]
            + [f"{d.metadata['Name']}=={d.version}" for d in dists]
        ).encode()
    ).hexdigest()[:12]
    target = Path(cache) / f"image-{fingerprint}"
    if (target / ".complete").exists():
        return target
    staging = Path(cache) / f".building-{fingerprint}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.parent.mkdir(parents=True, exist_ok=True)
    base_python = (
        Path(sys.base_prefix) / "bin" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
    )
    subprocess.run([str(base_python), "-m", "venv", "--without-pip", str(staging)], check=True)
    version = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    site = staging / "lib" / version / "site-packages"
    for dist in dists:
        source_site = Path(dist.locate_file(""))
        for entry in _top_level_entries(dist):
            if (source_site / entry).exists() and not (site / entry).exists():
                _link_tree(source_site / entry, site / entry)
    names = sorted(d.metadata["Name"] for d in dists)
    (staging / "image-contents.txt").write_text("\n".join(names) + "\n")
    # The venv records its own path: move it into place under the final name, then fix that.
    if target.exists():
        shutil.rmtree(staging)
        return target
    staging.rename(target)
    config = target / "pyvenv.cfg"
    config.write_text(re.sub(re.escape(str(staging)), str(target), config.read_text()))
    (target / ".complete").write_text("")
    return target


def _link_tree(source: Path, target: Path) -> None:
    """Hard links where the file system allows (a pod's private /tmp hides a project venv that
    lives under /tmp, and symlinks into it would dangle there), else a symlink."""
    try:
        if source.is_dir():
            shutil.copytree(source, target, symlinks=True, copy_function=os.link)
        else:
            os.link(source, target)
    except OSError:
        shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(
            missing_ok=True
        )
        target.symlink_to(source)


def contents(image: Path) -> list[str]:
    """The distributions an environment built here holds."""
    return (Path(image) / "image-contents.txt").read_text().split()
