"""The Run's trainer section of a converted command: epochs, batches, rates and schedule, losses
and the best metric, precision and seeds; a baseline's forest; a predict's starting point."""
from __future__ import annotations

import math

from aamctl.convert.flags import BASELINE, PREDICT, PRETRAIN, TRAIN
from aamctl.convert.launch import ConvertError


class TrainerFields:
    """Converter's trainer part (a mixin: it writes self.run through self.ref and self.note)."""

    # -- Run
    def training(self) -> None:
        c = self.l.command
        if c == BASELINE:
            self._baseline()
        elif c == PREDICT:
            self._predict()
        else:
            self._fit()
            self._losses()

    def _baseline(self) -> None:
        o, r = self.o, self.run
        if o["--n-estimators"] != 500 or "--n-estimators" in self.given:
            r.set("baseline.trees", o["--n-estimators"], "--n-estimators")
        mf = o["--max-features"]
        if mf not in ("sqrt", "log2"):
            if mf in ("None", "none", "1.0", "all"):
                r.set("baseline.maxFeatures", "all", f"--max-features {mf}")
            else:
                self.note("--max-features", f"'{mf}' is not expressible (aam: sqrt, log2 or all); sqrt is used")
        elif mf != "sqrt":
            r.set("baseline.maxFeatures", mf, "--max-features")
        self.ref(r, "trainer.seed", "--random-seed", o["--random-seed"])

    def _predict(self) -> None:
        o, r = self.o, self.run
        self.ref(r, "trainer.batchSize", "--batch-size", o["--batch-size"])
        if o["--prediction-passes"] > 1 and o["--asv-sampling"] == "random":
            r.set("prediction.passes", o["--prediction-passes"], "--prediction-passes (a std column comes with it)")
        elif o["--prediction-passes"] > 1:
            self.note("--prediction-passes", "passes differ only with --asv-sampling random (the reference "
                      "repeats identical passes); one pass")
        r.set("initFrom", {"checkpoint": o["--model"]},
              "--model: must be an aam finetune checkpoint (a reference checkpoint cannot be read; convert the "
              "aam train command too)")

    def _fit(self) -> None:
        """What a pretrain or train run shares: epochs, batches, rates, schedule, precision, seed."""
        c, o, r = self.l.command, self.o, self.run
        t = "trainer."
        self.ref(r, t + "epochs", "--epochs", o["--epochs"])
        self.ref(r, t + "batchSize", "--batch-size", o["--batch-size"])
        accum = o["--gradient-accumulation-steps"]
        if o["--target-effective-batch-size"]:
            per_step = o["--batch-size"] * self.l.nproc * self.l.nnodes
            accum = max(accum, math.ceil(o["--target-effective-batch-size"] / per_step))
            r.set(t + "gradientAccumulation", accum, f"--target-effective-batch-size {o['--target-effective-batch-size']}"
                  f" over {per_step} samples per step")
        else:
            self.ref(r, t + "gradientAccumulation", "--gradient-accumulation-steps", accum)
        self.ref(r, t + "learningRate", "--lr", o["--lr"])
        if c == TRAIN and o["--categorical-lr"] is not None:
            if [x for x in self.ds.spec.get("categoricalColumns", []) if x != o["--metadata-column"]]:
                r.set(t + "learningRates.categorical", o["--categorical-lr"], "--categorical-lr")
            else:
                self.note("--categorical-lr", "no --categorical-columns, so no categorical parameters to give it to")
        self.ref(r, t + "earlyStopping.patience", "--patience", o["--patience"])
        self.ref(r, t + "warmupSteps", "--warmup-steps", o["--warmup-steps"])
        self.ref(r, t + "weightDecay", "--weight-decay", o["--weight-decay"])
        self.ref(r, t + "optimizer.type", "--optimizer", o["--optimizer"])
        self.scheduler()
        clip = o["--max-grad-norm"]
        self.ref(r, t + "gradientClip", "--max-grad-norm", clip)
        mp = o["--mixed-precision"]
        if mp is not None:
            r.set(t + "precision", "no" if mp == "none" else mp, "--mixed-precision")
        else:
            r.set(t + "precision", "no", "the reference trains in fp32 unless --mixed-precision; aam's default: auto "
                                         "(bf16 where the hardware has it)")
        if o["--compile-model"]:
            r.set(t + "compile", "on", "--compile-model")
        seed = o["--seed"]
        if seed is not None:
            r.set(t + "seed", seed, "--seed")
        else:
            r.set(t + "seed", r.default(t + "seed"), "no --seed: the reference draws a random one; aam seeds every run "
                                                     "(this value) so it repeats")
        if o["--auto-batch-size"] and o["--device"] == "cuda":
            self.note("--auto-batch-size", "on by default in the reference: on a GPU it searches the largest batch "
                      "that fits (and may train with another size than --batch-size); this manifest keeps batchSize as "
                      "written: set batchSize: auto for the same search")

    def _losses(self) -> None:
        """Loss weights; a train run's best metric, validation passes and frozen base."""
        c, o, r = self.l.command, self.o, self.run
        t = "trainer."
        w = t + "lossWeights."
        if c == PRETRAIN:
            self.ref(r, w + "unifrac", "--penalty", o["--penalty"])
            self.ref(r, w + "nucleotide", "--nuc-penalty", o["--nuc-penalty"])
            self.ref(r, w + "count", "--count-penalty", o["--count-penalty"],
                     "aam predicts counts only when asked")
        else:
            self.ref(r, w + "target", "--target-penalty", o["--target-penalty"])
            self.ref(r, w + "unifracWhenFinetuning", "--penalty", o["--penalty"],
                     "the reference keeps the UniFrac loss while fine-tuning")
            self.ref(r, w + "nucleotideWhenFinetuning", "--nuc-penalty", o["--nuc-penalty"],
                     "the reference keeps the nucleotide loss while fine-tuning")
            count = o["--count-penalty"] if o["--count-prediction"] else 0.0
            self.ref(r, w + "countWhenFinetuning", "--count-penalty", count,
                     "the reference keeps the count loss while fine-tuning")
            metric = o["--best-metric"]
            kind = "classification" if o["--classifier"] else "regression"
            if metric in (("accuracy", "f1") if kind == "regression" else ("r2", "mae")):
                raise ConvertError(f"--best-metric {metric} does not fit a {kind} target",
                                   where=self.l.where, hint="r2 or mae for regression, accuracy or f1 with --classifier")
            self.ref(r, t + "earlyStopping.metric", "--best-metric", metric)
            if o["--val-prediction-passes"] > 1 and o["--asv-sampling"] == "random":
                r.set(t + "validationPasses", o["--val-prediction-passes"], "--val-prediction-passes")
            elif o["--val-prediction-passes"] > 1:
                self.note("--val-prediction-passes", "ignored by the reference too without --asv-sampling random")
            if o["--freeze-base"] and o["--pretrained-encoder"]:
                r.set("freezeBase", True, "--freeze-base")
            elif o["--freeze-base"]:
                self.note("--freeze-base", "without --pretrained-encoder the base is random; aam does not freeze "
                          "random weights (left out)")
            if o["--pretrained-encoder"]:
                self.note("--pretrained-encoder", f"{o['--pretrained-encoder']} is a reference checkpoint, which aam "
                          "cannot load: convert the aam pretrain command that made it and set initFrom: {run: NAME}; "
                          "as written this Run trains from random weights")

    def scheduler(self) -> None:
        o, r, t = self.o, self.run, "trainer."
        s = o["--scheduler"]
        mapped = {"warmup_cosine": "cosine", "cosine": "cosine"}.get(s, s)
        self.ref(r, t + "scheduler", "--scheduler", mapped)
        lr = o["--lr"]
        if s == "cosine":
            r.set(t + "warmupSteps", 0, "--scheduler cosine: the reference's cosine has no warm-up")
        if s == "cosine_restarts":
            if o["--scheduler-t0"]:
                r.set(t + "cosineRestarts.periodSteps", o["--scheduler-t0"], "--scheduler-t0")
            else:
                r.comments[t + "scheduler"] = ("--scheduler cosine_restarts; the reference's first period is a quarter "
                                               "of the run's steps; aam's cosineRestarts.periodSteps default: 1000")
            r.set(t + "cosineRestarts.multiplier", o["--scheduler-t-mult"] or 2,
                  "--scheduler-t-mult" if o["--scheduler-t-mult"] else "the reference's default (2); aam's: 1")
            if o["--scheduler-eta-min"]:
                r.set(t + "cosineRestarts.minFactor", o["--scheduler-eta-min"] / lr, "--scheduler-eta-min / --lr")
        if s == "plateau":
            r.set(t + "plateau.factor", o["--scheduler-factor"] or 0.3,
                  "--scheduler-factor" if o["--scheduler-factor"] else "the reference's default (0.3); aam's: 0.5")
            r.set(t + "plateau.patience", o["--scheduler-patience"] or 5,
                  "--scheduler-patience" if o["--scheduler-patience"] else "the reference's default (5); aam's: 2")
            r.set(t + "plateau.minFactor", (o["--scheduler-min-lr"] or 0.0) / lr,
                  "--scheduler-min-lr / --lr" if o["--scheduler-min-lr"] else
                  "the reference's default min-lr (0); aam's minFactor: 0.001")
        if s == "onecycle":
            r.set(t + "oneCycle.peakFraction", 0.3, "the reference's pct_start")
            r.set(t + "warmupSteps", 0, "onecycle warms up by itself in the reference")
