"""A Run's training recipe: trainer fields that make no sense together, its own split over its
Dataset's, an attention kernel its HardwareProfile cannot run."""
from __future__ import annotations

from aamctl.api.resolve import Obj, Resolved, run_split
from aamctl.api.rules.common import missing_fold
from aamctl.api.rules.hardware import FLASH_NO_MASK
from aamctl.errors import Diagnostic


def check_recipe(res: Resolved, run: Obj, ds: Obj) -> list[Diagnostic]:
    """Recipe fields that make no sense together (issue: every option rejects nonsense)."""
    d: list[Diagnostic] = []
    s = run.spec
    stage = s["stage"]
    tr = s["trainer"]
    lw = tr["lossWeights"]
    if s.get("unfreezeBaseAfterEpochs") and not s["freezeBase"]:
        d.append(run.diag("unfreezeBaseAfterEpochs needs freezeBase: true", ("spec", "unfreezeBaseAfterEpochs"),
                          hint="set freezeBase: true (frozen for N epochs, then unfrozen), or remove unfreezeBaseAfterEpochs"))
    if tr["batchSize"] == "auto" and stage not in ("pretrain", "finetune"):
        d.append(run.diag(f"batchSize auto searches a training batch; a {stage} run trains nothing",
                          ("spec", "trainer", "batchSize"), hint="give a number (predict batches only bound memory)"))
    if tr["gradientAccumulation"] == "auto" and not tr.get("effectiveBatchSize"):
        d.append(run.diag("gradientAccumulation auto needs trainer.effectiveBatchSize (samples per optimizer step)",
                          ("spec", "trainer", "gradientAccumulation"), hint="add effectiveBatchSize: 256, or give a number"))
    if tr.get("effectiveBatchSize") and tr["gradientAccumulation"] != "auto":
        d.append(run.diag("effectiveBatchSize is used by gradientAccumulation: auto only",
                          ("spec", "trainer", "effectiveBatchSize"),
                          hint="set gradientAccumulation: auto, or remove effectiveBatchSize"))
    if stage == "finetune" and lw.get("unifracWhenFinetuning", 0) > 0 and tr["batchSize"] != "auto":
        if tr["batchSize"] < 2 or tr["batchSize"] % 2:
            d.append(run.diag(f"the UniFrac loss needs an even batch size of at least 2, found {tr['batchSize']}",
                              ("spec", "trainer", "batchSize"), hint="pairs of samples are compared; use 8, 16, 32..."))
        if not ds.spec.get("tree") and not ds.spec.get("distanceMatrix"):
            d.append(run.diag(f"lossWeights.unifracWhenFinetuning needs UniFrac distances, but Dataset '{ds.name}' has "
                              "neither tree nor distanceMatrix", ("spec", "trainer", "lossWeights", "unifracWhenFinetuning"),
                              hint="add spec.tree or spec.distanceMatrix to the Dataset, or set it to 0"))
    rates = tr.get("learningRates") or {}
    if stage == "pretrain":
        for group in ("head", "categorical"):
            if rates.get(group) is not None:
                d.append(run.diag(f"a pretrain run has no {group} parameters to give a learning rate",
                                  ("spec", "trainer", "learningRates", group),
                                  hint="remove it (pretraining trains the base only), or set it on the finetune run"))
    if stage == "finetune" and rates.get("categorical") is not None and not ds.spec.get("categoricalColumns"):
        d.append(run.diag(f"learningRates.categorical is set, but Dataset '{ds.name}' has no categoricalColumns",
                          ("spec", "trainer", "learningRates", "categorical"),
                          hint="add spec.categoricalColumns to the Dataset, or remove the rate"))
    if stage == "finetune" and rates.get("base") is not None and s["freezeBase"] and not s.get("unfreezeBaseAfterEpochs"):
        d.append(run.diag("learningRates.base is set, but freezeBase keeps the base frozen throughout",
                          ("spec", "trainer", "learningRates", "base"),
                          hint="add unfreezeBaseAfterEpochs: N to unfreeze it after N epochs, or remove the rate"))
    if tr.get("ema") is not None and stage not in ("pretrain", "finetune"):
        d.append(run.diag(f"trainer.ema averages the weights of a training run; a {stage} run trains nothing",
                          ("spec", "trainer", "ema"),
                          hint="remove it here, and set it on the finetune (or pretrain) run this one starts from"))
    opt = tr.get("optimizer") or {}
    if opt.get("nesterov") and (opt.get("type") != "sgd" or not opt.get("momentum")):
        d.append(run.diag("nesterov needs optimizer type sgd with momentum > 0", ("spec", "trainer", "optimizer", "nesterov"),
                          hint="set type: sgd and momentum: 0.9, or remove nesterov"))
    prof = tr.get("profile")
    if prof and prof["steps"][0] > prof["steps"][1]:
        d.append(run.diag(f"profile.steps {prof['steps']}: the first step comes after the last",
                          ("spec", "trainer", "profile", "steps"), hint=f"write [{prof['steps'][1]}, {prof['steps'][0]}]"))
    if prof and tr.get("maxSteps") and prof["steps"][0] > tr["maxSteps"]:
        d.append(run.diag(f"profile.steps {prof['steps']} starts after the run's last step (maxSteps "
                          f"{tr['maxSteps']}): nothing would be profiled", ("spec", "trainer", "profile", "steps"),
                          hint=f"profile steps within 1..{tr['maxSteps']}, e.g. [{min(5, tr['maxSteps'])}, "
                               f"{min(8, tr['maxSteps'])}]"))
    random_asvs = ds.spec.get("asvSelection") == "random"
    if tr.get("validationPasses", 1) > 1 and not random_asvs:
        d.append(run.diag(f"validationPasses {tr['validationPasses']} needs Dataset '{ds.name}' with asvSelection: random "
                          f"(with {ds.spec.get('asvSelection')} every pass sees the same ASVs)",
                          ("spec", "trainer", "validationPasses"), hint="set asvSelection: random, or validationPasses: 1"))
    passes = (s.get("prediction") or {}).get("passes", 1)
    if passes > 1 and (stage != "predict" or not random_asvs):
        why = "only predict runs use it" if stage != "predict" else \
            f"Dataset '{ds.name}' selects ASVs by {ds.spec.get('asvSelection')}, so every pass is the same"
        d.append(run.diag(f"prediction.passes {passes}: {why}", ("spec", "prediction", "passes"),
                          hint="use asvSelection: random on the predict run's Dataset, or passes: 1"))
    return d


def check_run_split(run: Obj, ds: Obj) -> list[Diagnostic]:
    """A Run's spec.split changes its Dataset's split: it must make sense on top of it."""
    over = run_split(run.spec)
    if not over:
        return []
    d: list[Diagnostic] = []
    base = ds.spec["split"]
    if base.get("trainIds"):
        d.append(run.diag(f"Dataset '{ds.name}' splits by id files (spec.split.trainIds), which a Run's "
                          "spec.split cannot change", ("spec", "split"),
                          hint="remove the Run's spec.split, or split the Dataset by validationFraction or folds"))
        return d
    eff = {**base, **over}
    if "fold" in over and not eff.get("folds"):
        d.append(run.diag(f"fold {over['fold']} needs folds, and Dataset '{ds.name}' does not split "
                          "into folds", ("spec", "split", "fold"),
                          hint="add folds (here or in the Dataset's spec.split), e.g. split: {folds: 5, fold: 0}"))
    elif missing_fold(eff):
        at = ("spec", "split", "fold") if "fold" in over else ("spec", "split", "folds")
        d.append(run.diag(missing_fold(eff), at, hint=f"use a fold from 0 to {eff['folds'] - 1}"))
    return d


def check_attention(res: Resolved, run: Obj, model_ref: str | None, hw: Obj) -> list[Diagnostic]:
    """A Model pinned to flash attention on a GPU profile (the profile's own flash is its rule)."""
    if not model_ref or ("Model", model_ref) not in res.objects or hw.spec["accelerator"] == "cpu":
        return []
    if res.get("Model", model_ref).spec.get("attentionBackend") != "flash":
        return []
    field = ("spec", "modelRef") if run.spec.get("modelRef") else ("spec", "hardwareRef")
    return [run.diag(FLASH_NO_MASK.format(acc=hw.spec["accelerator"]) + f" (Model '{model_ref}' sets "
                     f"attentionBackend: flash; HardwareProfile '{hw.name}' is {hw.spec['accelerator']})", field,
                     hint="set the Model's attentionBackend to auto (the profile then decides) or mem_efficient")]
