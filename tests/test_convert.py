"""aamctl convert: reference command lines -> manifests that validate and mean the same run."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from aamctl.convert.launch import ConvertError, commands_in_script
from aamctl.convert.script import convert_argv, convert_file
from aamctl.errors import AamError
from aamctl.api.parse import load_documents
from aamctl.convert.flags import BY_COMMAND, COMMANDS, FLAGS, reference_table_markdown
from aamctl.api.validate import validate
from conftest import aamctl

ROOT = Path(__file__).resolve().parent.parent
COMMANDS_FILE = Path(__file__).resolve().parent / "fixtures" / "reference-commands.sh"
TRAIN = ["aam", "train", "--table", "t.biom", "--unifrac-matrix", "t.h5", "--metadata", "m.tsv",
         "--metadata-column", "age", "--output-dir", "out/ft"]


def docs_of(text: str) -> dict:
    """{(kind, name): spec} of a convert output."""
    return {(d["kind"], d["metadata"]["name"]): d["spec"] for d in yaml.safe_load_all(text) if d}


def check_valid(text: str, tmp_path: Path) -> None:
    path = tmp_path / "converted.yaml"
    path.write_text(text)
    docs, problems = load_documents([str(path)])
    assert not problems, [p.render() for p in problems]
    validate(docs)  # raises AamError with every problem


def one(text: str, kind: str) -> dict:
    found = [spec for (k, _), spec in docs_of(text).items() if k == kind]
    assert len(found) == 1, found
    return found[0]


# ---------------------------------------------------------------- the reference's own command lines

def test_every_survey_and_readme_command_converts_to_valid_manifests(tmp_path):
    found = commands_in_script(COMMANDS_FILE.read_text(), str(COMMANDS_FILE), {})
    assert len(found) == 22  # 19 survey runs, 3 README commands
    text = convert_file(str(COMMANDS_FILE))
    check_valid(text, tmp_path)
    docs = docs_of(text)
    runs = {name: spec for (kind, name), spec in docs.items() if kind == "Run"}
    # 19 + 3, and one stand-in pretraining for the survey's reference encoder checkpoint
    assert len(runs) == 23
    assert sum(1 for s in runs.values() if s["stage"] == "finetune") == 20
    # the survey shares one Dataset and one HardwareProfile (4 processes, DDP)
    assert docs[("HardwareProfile", "cuda-1x4-ddp")] == {"accelerator": "cuda", "devicesPerNode": 4, "strategy": "ddp"}
    survey = [s for s in runs.values() if s.get("target") == "add_0c" and s["datasetRef"].startswith("all-outdoor")]
    assert len(survey) == 19
    stand_in = runs["pretrain-all-outdoor-small-5000"]
    assert stand_in["stage"] == "pretrain"
    assert all(s["initFrom"] == {"run": "pretrain-all-outdoor-small-5000"} for s in survey)
    # the README's train starts from the README's pretrain, its predict from the train
    assert runs["train"]["initFrom"] == {"run": "pretrain"}
    assert runs["predictions"]["initFrom"] == {"run": "train"}
    assert runs["pretrain"]["trainer"]["epochs"] == 5


def test_survey_arms_mean_what_the_reference_ran():
    text = convert_file(str(COMMANDS_FILE))
    docs = docs_of(text)
    runs = {name: spec for (kind, name), spec in docs.items() if kind == "Run"}
    models = {name: spec for (kind, name), spec in docs.items() if kind == "Model"}
    combo = runs["best-combo"]
    assert combo["trainer"]["learningRate"] == 5e-5 and combo["freezeBase"] is True
    assert combo["trainer"]["earlyStopping"]["metric"] == "mae" and combo["trainer"]["epochs"] == 50
    head = models[combo["modelRef"]]["targetHead"]
    assert head["loss"] == "mae" and head["hidden"] == [256, 64] and head["residual"] is True
    assert models[combo["modelRef"]]["categoricalFusion"] == "gmu"
    ds = docs[("Dataset", combo["datasetRef"])]
    assert ds["maxAsvsPerSample"] == 5000 and ds["categoricalColumns"] == ["season", "facility"]
    assert ds["targets"] == [{"name": "add_0c", "type": "regression", "normalize": "zscore"}]
    assert runs["categorical-lr"]["trainer"]["learningRates"] == {"categorical": 5e-4}
    assert runs["onecycle"]["trainer"]["scheduler"] == "onecycle"
    assert runs["cosine-restarts"]["trainer"]["scheduler"] == "cosine_restarts"
    assert runs["lr-1e5-100ep"]["trainer"]["epochs"] == 100 and "freezeBase" not in runs["lr-1e5-100ep"]
    # the reference's concat meets every ASV position; perceiver is said to be missing
    assert models[runs["concat"]["modelRef"]]["categoricalAt"] == "asvs"
    assert models[runs["perceiver"]["modelRef"]]["categoricalFusion"] == "cross-attention"
    assert "# --perceiver-num-latents: not expressible" in text
    assert "# --categorical-loss-weights: not expressible" in text


# ---------------------------------------------------------------- defaults and comments

def test_reference_defaults_are_written_with_a_comment_when_ours_differ(tmp_path):
    text = convert_argv(TRAIN)
    check_valid(text, tmp_path)
    ds, model, run = one(text, "Dataset"), one(text, "Model"), one(text, "Run")
    assert ds["rarefyDepth"] == 5000 and ds["asvSelection"] == "first"
    assert ds["targets"][0]["normalize"] == "minmax"  # the reference's legacy default
    assert model["countEmbedding"] == "none" and model["gradientCheckpointing"] is True
    assert model["targetHead"]["layers"] == 4
    lw = run["trainer"]["lossWeights"]
    assert lw == {"unifracWhenFinetuning": 1.0, "nucleotideWhenFinetuning": 1.0, "countWhenFinetuning": 1.0}
    assert run["trainer"]["gradientClip"] is None and run["trainer"]["precision"] == "no"
    assert one(text, "HardwareProfile")["accelerator"] == "cuda"
    for line in text.splitlines():
        if line.strip().startswith(("rarefyDepth:", "asvSelection:", "countEmbedding:", "gradientClip:")):
            assert "# the reference's default" in line, line
    # given flags are written: naming the flag, and our default where it differs
    text = convert_argv(TRAIN + ["--max-bp", "150", "--lr", "3e-4", "--no-count-prediction", "--device", "cpu"])
    assert "  maxBp: 150  # --max-bp\n" in text
    assert "learningRate: 0.0003  # --lr; aam's default: 0.0001" in text
    assert "countWhenFinetuning" not in text
    assert "--auto-batch-size" not in text  # no batch search off the GPU


@pytest.mark.parametrize("transform,normalize,extra", [
    ("zscore", "zscore", {}), ("none", "none", {}), ("log-minmax", "log1p_minmax", {}),
    ("log-zscore", "log1p_zscore", {}), ("zscore-category", "zscore", {"normalizeBy": "site"})])
def test_target_transforms(transform, normalize, extra):
    argv = TRAIN + ["--target-transform", transform] + (["--normalize-by", "site"] if extra else [])
    text = convert_argv(argv)
    target = one(text, "Dataset")["targets"][0]
    assert target == {"name": "age", "type": "regression", "normalize": normalize, **extra}
    # log-minmax turns bounded outputs on in the reference
    assert (one(text, "Model")["targetHead"].get("outputActivation") == "bounded") == (transform == "log-minmax")


def test_launchers_containers_env_and_sbatch(tmp_path):
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/bash\n#SBATCH --partition=gpu -A abc123\n#SBATCH --time=04:00:00\n#SBATCH -N 2\n"
                      "DATA=/data\n"
                      "WANDB_API_KEY=s3cr3t-v4lue OMP_NUM_THREADS=4 srun --ntasks 2 singularity exec --rocm -B /scratch "
                      "aam.sif torchrun --nnodes 2 --nproc_per_node 4 -m aam.cli pretrain --table $DATA/t.biom \\\n"
                      "  --unifrac-matrix ${DATA}/t.h5 --output-dir out/pre --fsdp --mixed-precision bf16\n")
    text = convert_file(str(script))
    check_valid(text, tmp_path)
    hw, run = one(text, "HardwareProfile"), one(text, "Run")
    assert hw["nodes"] == 2 and hw["devicesPerNode"] == 4 and hw["strategy"] == "fsdp" and hw["precision"] == "bf16"
    assert hw["container"] == {"image": "aam.sif", "runtime": "singularity", "binds": ["/scratch"]}
    assert hw["env"] == {"OMP_NUM_THREADS": "4"}
    assert "s3cr3t-v4lue" not in text and "WANDB_API_KEY=<redacted>" in text
    assert "# environment: WANDB_API_KEY look like secrets and are left out" in text
    assert run["executor"] == {"type": "slurm", "slurm": {"partition": "gpu", "account": "abc123",
                                                          "timeLimit": "04:00:00", "nodes": 2}}
    assert one(text, "Dataset")["table"] == "/data/t.biom"


def test_every_flag_of_every_command_is_read(tmp_path):
    """Each flag alone, with a typical value, on top of the command's required flags."""
    samples = {"--categorical-columns": "site", "--normalize-by": "site", "--normalize-targets-by": "site",
               "--quantiles": "0.1,0.5,0.9", "--regressor-hidden-dims": "64,32", "--class-weights": "1,2",
               "--loss-config": '{"age": "mse"}', "--conditional-output-scaling": "site", "--max-features": "log2",
               "--categorical-loss-weights": "auto", "--best-metric": "r2", "--categorical-loss-weight-column": "site"}
    base = {"pretrain": ["--table", "t.biom", "--unifrac-matrix", "t.h5", "--output-dir", "o/p"],
            "train": TRAIN[2:], "predict": ["--model", str(tmp_path / "best.pt"), "--table", "t.biom", "--output", "p.tsv"],
            "rf-baseline": ["--table", "t.biom", "--metadata", "m.tsv", "--metadata-column", "age", "--train-samples",
                            "tr.txt", "--val-samples", "va.txt", "--output", "rf.tsv"]}
    (tmp_path / "best.pt").write_bytes(b"")  # validate checks that a checkpoint named by path exists
    seen = 0
    for command in COMMANDS:
        for f in BY_COMMAND[command].values():
            if f.name in base[command]:
                continue
            if f.kind in ("flag", "bool"):
                extra = [f.name] + ([f.negation] if f.kind == "bool" else [])
            elif f.kind == "choice":
                extra = [f.name, samples.get(f.name, f.choices[-1])]
            elif f.kind == "int":  # twice the reference's default: a value that differs, in range
                extra = [f.name, str(2 * f.default if isinstance(f.default, int) and f.default > 0 else 3)]
            else:
                extra = [f.name, samples.get(f.name, {"float": "0.5", "str": "x"}[f.kind])]
            if f.name == "--target-transform":
                extra += ["--normalize-by", "site"]
            if f.name in ("--quantiles",):
                extra += ["--loss-type", "quantile"]
            if f.name == "--conditional-output-scaling":
                extra += ["--categorical-columns", "site"]
            if f.name in ("--class-weights",):
                extra += ["--classifier"]
            text = convert_argv(["aam", command, *base[command], *extra])
            check_valid(text, tmp_path)
            seen += 1
    assert seen == sum(len(BY_COMMAND[c]) for c in COMMANDS) - sum(len(base[c]) // 2 for c in COMMANDS)


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("argv,message,hint", [
    (TRAIN + ["--lrr", "1e-4"], "aam train has no option '--lrr'", "did you mean '--lr'?"),
    (TRAIN + ["--memory-profile"], "has no option '--memory-profile'", "is an option of aam pretrain"),
    (TRAIN + ["--epochs", "ten"], "--epochs: 'ten' is not a whole number", None),
    (TRAIN + ["--loss-type", "l2"], "'l2' is not one of mse, mae, huber", None),
    (TRAIN + ["--lr"], "--lr needs a value", None),
    (["aam", "trian", "--table", "t"], "unknown aam command 'trian'", "did you mean 'train'?"),
    (["torchrun", "--nproc-per-node", "four", "-m", "aam.cli", "train"], "is not a whole number", None),
    (["python", "train.py"], "expected an aam command", None),
    (TRAIN + ["--conditional-output-scaling", "site"], "which --categorical-columns does not list", None),
    (TRAIN + ["--best-metric", "f1"], "--best-metric f1 does not fit a regression target", "with --classifier"),
])
def test_bad_command_lines_get_one_message(argv, message, hint):
    with pytest.raises(ConvertError) as exc:
        convert_argv(argv)
    text = exc.value.render()
    assert message in text and (hint is None or hint in text), text


def test_cli_unknown_flag_exit_1_no_traceback(tmp_path):
    p = aamctl(tmp_path / "home", "convert", "--", *TRAIN, "--warmup-step", "10", check=False)
    assert p.returncode == 1
    assert p.stderr.strip() == ("aamctl convert: aam train has no option '--warmup-step' "
                                "(hint: did you mean '--warmup-steps'?)")
    p = aamctl(tmp_path / "home", "convert", "-f", str(tmp_path / "missing.sh"), check=False)
    assert p.returncode == 1 and "missing.sh: cannot read" in p.stderr
    script = tmp_path / "job.sh"
    script.write_text("aam pretrain --table $NOPE/t.biom --unifrac-matrix x.h5 --output-dir o\n")
    p = aamctl(tmp_path / "home", "convert", "-f", str(script), check=False, env={"PATH": "/usr/bin:/bin"})
    assert p.returncode == 1 and f"{script}:1: $NOPE is not set" in p.stderr
    p = aamctl(tmp_path / "home", "convert", "--name", "Bad_Name", "--", *TRAIN, check=False)
    assert p.returncode == 2 and "DNS-1123" in p.stderr


def test_cli_prints_manifests_that_validate(tmp_path):
    """End to end on the bundled data: the README's fine-tune line, pointed at examples/data."""
    data = ROOT / "examples" / "data" / "oral-age"
    p = aamctl(tmp_path / "home", "convert", "--name", "oral", "--", "aam", "train", "--table", str(data / "table.biom"),
               "--unifrac-matrix", str(tmp_path / "dm.h5"), "--metadata", str(data / "metadata.tsv"),
               "--metadata-column", "age", "--device", "cpu", "--rarefy-depth", "1000", "--output-dir", "out/oral")
    assert p.stdout.startswith("# from aamctl convert: aam train --table")
    path = tmp_path / "oral.yaml"
    path.write_text(p.stdout)
    v = aamctl(tmp_path / "home", "validate", "-f", str(path))
    assert v.stdout.split() == ["dataset/oral", "valid", "model/oral", "valid", "hardwareprofile/oral", "valid",
                                "run/oral", "valid"]  # --name names every object


# ---------------------------------------------------------------- docs

def test_reference_doc_is_the_flag_table():
    assert (ROOT / "docs" / "reference.md").read_text() == reference_table_markdown(), \
        "docs/reference.md is stale: python -c 'from aamctl.convert.flags import reference_table_markdown as m; " \
        "open(\"docs/reference.md\", \"w\").write(m())'"
    text = reference_table_markdown()
    for f in FLAGS:
        assert f"`{f.name}`" in text
    assert len({(f.name, c) for f in FLAGS for c in f.commands}) == sum(len(BY_COMMAND[c]) for c in COMMANDS)


def test_convert_error_is_an_aam_error():
    assert issubclass(ConvertError, AamError)
