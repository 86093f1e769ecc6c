"""Container recipes (containers/*.def): Apptainer cannot be installed on this Debian, so CI reads
each recipe with spython (Singularity's maintained Python parser) and checks what an image needs;
the shared install step they run (scripts/install-aam.sh) runs for real, as setup.sh does, and
once more here into a fresh environment outside the checkout, as an image's %post does."""
from __future__ import annotations

import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from spython.main.parse.parsers import SingularityParser

ROOT = Path(__file__).resolve().parent.parent
RECIPES = sorted((ROOT / "containers").glob("*.def"))
INSTALL = "scripts/install-aam.sh"


def test_there_is_a_recipe_per_accelerator():
    assert {p.stem for p in RECIPES} == {"aam-cpu", "aam-cuda", "aam-rocm"}


def _needed_paths() -> set[str]:
    """What pip needs to build aam from the copied tree: pyproject, its readme, every package dir."""
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    tool = meta["tool"]["setuptools"]
    dirs = {tool.get("package-dir", {}).get(p, p.replace(".", "/")).split("/")[0] for p in tool["packages"]}
    return {"pyproject.toml", meta["project"]["readme"], "scripts", *dirs}


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_recipe_structure(recipe):
    text = recipe.read_text()
    header = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")][:2]
    assert header[0].split() == ["Bootstrap:", "docker"], header
    stage = SingularityParser(str(recipe)).recipe["spython-base"]
    # a pinned base: a tag that is not "latest"
    base = stage.fromHeader
    assert ":" in base and not base.endswith(":latest"), base

    # %files: the build context's paths exist and cover everything the install needs
    copied = {}
    for line in stage.files:
        src, dst = line.split()
        assert (ROOT / src).exists(), f"{recipe.name}: %files copies {src}, which is not in the repository"
        assert dst == f"/opt/aam/{src}", line
        copied[src] = dst
    missing = _needed_paths() - set(copied)
    assert not missing, f"{recipe.name}: %files misses {sorted(missing)} (pip install needs them)"

    # %post: the one shared install step, once, with ssu, into a venv; no other pip install
    post = "\n".join(stage.install).replace("\\\n", " ")
    calls = [ln for ln in post.splitlines() if INSTALL in ln]
    assert len(calls) == 1, calls
    words = shlex.split(calls[0])
    assert words[words.index(f"/opt/aam/{INSTALL}") - 1] == "bash"
    assert "--ssu" in words and "--venv" in words
    venv = words[words.index("--venv") + 1]
    assert not re.search(r"\bpip3? install\b", post), f"{recipe.name}: installs with pip outside {INSTALL}"
    env = dict(re.match(r"(\w+)=(.*)", w).groups() for w in words if re.match(r"^[A-Z_]+=", w))
    accelerator = recipe.stem.split("-")[1]
    if accelerator == "cpu":
        assert env["AAM_TORCH_INDEX"].endswith("/whl/cpu")
    else:  # a GPU build of torch from PyTorch's index for that stack, pinned
        assert re.search(r"/whl/(cu\d+|rocm\d+\.\d+)$", env["AAM_TORCH_INDEX"]), env
        assert re.fullmatch(r"\d+\.\d+\.\d+", env["AAM_TORCH_VERSION"]), env

    # %environment puts that venv first; %test runs the doctor; %runscript is aamctl
    assert any(e.startswith("PATH=") and e.split("=", 1)[1].startswith(f"{venv}/bin:") for e in stage.environ)
    tests = [ln for ln in stage.install if ln.endswith(">> /tests.sh")]
    assert any("aamctl doctor" in ln for ln in tests), f"{recipe.name}: %test does not run aamctl doctor"
    assert stage.cmd.startswith("exec aamctl")


def test_the_rocm_recipe_matches_the_cosmos_profile():
    """The ROCm image's stack is the one the cosmos-mi300a profile names (rocmVersion 6.3)."""
    import yaml

    docs = list(yaml.safe_load_all((ROOT / "aamctl/builtins/hardwareprofiles.yaml").read_text()))
    cosmos = next(d for d in docs if d["metadata"]["name"] == "cosmos-mi300a")
    major_minor = ".".join(cosmos["spec"]["rocmVersion"].split(".")[:2])
    text = (ROOT / "containers/aam-rocm.def").read_text()
    assert f"rocm{major_minor}" in text and f":{major_minor}" in text


def test_install_step_refuses_bad_arguments():
    for args in (["--bogus"], ["--venv"], ["--venv", "/tmp/x", "--python", "python3"], ["--extras", "test;rm"]):
        p = subprocess.run(["bash", str(ROOT / INSTALL), *args], capture_output=True, text=True)
        assert p.returncode == 2, (args, p.stderr)
        assert "install-aam" in p.stderr or "usage" in p.stderr


@pytest.mark.slow
def test_shared_install_step_builds_a_working_copy_outside_the_checkout(tmp_path):
    """What an image's %post does: a fresh venv, a normal (not editable) install; the schemas,
    the sbatch template and the shipped golden file come with it."""
    venv = tmp_path / "venv"
    p = subprocess.run(["bash", str(ROOT / INSTALL), "--venv", str(venv)], capture_output=True, text=True,
                       timeout=900)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert "install-aam: aam ready (torch" in p.stdout
    aamctl = venv / "bin" / "aamctl"
    site = subprocess.run([str(venv / "bin/python"), "-c", "import aamctl; print(aamctl.__file__)"],
                          capture_output=True, text=True, cwd=tmp_path).stdout
    assert str(ROOT) not in site, "the install must be a copy, not the checkout"
    v = subprocess.run([str(aamctl), "--home", str(tmp_path / "h"), "validate", "-f", str(ROOT / "examples/quickstart.yaml")],
                       capture_output=True, text=True, cwd=tmp_path)
    assert v.returncode == 0, v.stdout + v.stderr
    d = subprocess.run([str(aamctl), "doctor", "--profile", "cpu", "--golden", "cpu"], capture_output=True, text=True,
                       cwd=tmp_path, timeout=300)
    assert d.returncode == 0 and "golden numerics against cpu: ok" in d.stdout, d.stdout + d.stderr
