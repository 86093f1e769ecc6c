"""aam installs like a package: a wheel built from the tree, installed into a fresh virtual
environment, finds its schemas, built-in profiles and sbatch template outside the source tree."""
from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def test_wheel_installs_and_runs_outside_the_source_tree(tmp_path):
    src = tmp_path / "src"  # a copy, so the build leaves nothing in the work tree
    skip = shutil.ignore_patterns(".venv", ".git", ".aam", "build", "*.egg-info", "__pycache__", "wandb")

    def ignore(folder, names):  # run outputs at the top of the tree; aamctl/runs is a package
        return set(skip(folder, names)) | ({"runs"} if Path(folder) == ROOT else set())

    shutil.copytree(ROOT, src, ignore=ignore)
    dist = tmp_path / "dist"
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                        str(dist), str(src)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    [wheel] = dist.glob("aam-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    purelib = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  capture_output=True, text=True, check=True).stdout.strip())
    # the wheel itself, unpacked by pip into the fresh environment; its dependencies are taken
    # from this environment's site-packages (added after the new one, so the wheel's aamctl wins)
    p = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(purelib),
                        str(wheel)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    (purelib / "zz-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copytree(ROOT / "manifests", elsewhere / "manifests")
    shutil.copytree(ROOT / "examples" / "data", elsewhere / "examples" / "data")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    where = subprocess.run([str(py), "-c", "import aamctl, sys; print(aamctl.__file__)"], cwd=elsewhere, env=env,
                           capture_output=True, text=True)
    assert where.stdout.startswith(str(purelib)), where.stdout + where.stderr
    found = subprocess.run([str(py), "-c", "from aamctl.planning.slurm import template_path; from aamctl.api.schema import "
                            "schema_dir; print(template_path()); print(schema_dir())"], cwd=elsewhere, env=env,
                           capture_output=True, text=True)
    assert found.returncode == 0 and all(line.startswith(str(purelib)) for line in found.stdout.split()), found
    for args in (["validate", "-f", "manifests/"], ["explain", "Run.spec.trainer"],
                 ["get", "hardwareprofiles"], ["apply", "--dry-run", "-f", "manifests/pretrain.yaml"]):
        p = subprocess.run([str(py), "-m", "aamctl.cli", *args], cwd=elsewhere, env=env, capture_output=True,
                           text=True, timeout=300)
        assert p.returncode == 0, (args, p.stdout, p.stderr)
    assert "learningRate" in subprocess.run([str(py), "-m", "aamctl.cli", "explain", "Run.spec.trainer"],
                                            cwd=elsewhere, env=env, capture_output=True, text=True).stdout
    dry = subprocess.run([str(py), "-m", "aamctl.cli", "apply", "--dry-run", "-f", "manifests/pretrain.yaml"],
                         cwd=elsewhere, env=env, capture_output=True, text=True).stdout
    assert "#SBATCH" in dry or "launch.sh" in dry
