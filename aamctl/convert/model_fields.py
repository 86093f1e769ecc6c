"""The Model of a converted pretrain or train command: the architecture flags, and the target
head's (loss, activation, hidden layers, categorical fusion)."""
from __future__ import annotations

from aamctl.convert.flags import TRAIN
from aamctl.convert.launch import ConvertError


class ModelFields:
    """Converter's Model part (a mixin: it writes self.model through self.ref and self.note)."""

    # -- Model
    def architecture(self) -> None:
        o, m = self.o, self.model
        c = self.l.command
        self.ref(m, "embeddingDim", "--embedding-dim", o["--embedding-dim"])
        for level in ("nucleotide", "sample", "encoderHead") + (("targetHead",) if c == TRAIN else ()):
            self.ref(m, f"{level}.heads", "--attention-heads", o["--attention-heads"])
            self.ref(m, f"{level}.layers", "--attention-layers", o["--attention-layers"],
                     "the reference gives every encoder, the target's too, this many layers")
        count = o["--count-embedding-method"] if o["--count-embedding"] else "none"
        flag = "--count-embedding" + (f" --count-embedding-method {count}" if count != "none" else "")
        if "--count-embedding" in self.given or "--count-embedding-method" in self.given or count != m.default(
                "countEmbedding"):
            m.set("countEmbedding", count, flag if "--count-embedding" in self.given or "--count-embedding-method" in
                  self.given else "the reference's default (--count-embedding off); aam's: add")
        self.ref(m, "maskRatio", "--nuc-mask-ratio", o["--nuc-mask-ratio"])
        if o["--nuc-mask-strategy"] == "span":
            m.set("maskSpanLength", 4, "--nuc-mask-strategy span (the reference draws spans of 3-5 bases)")
        self.ref(m, "gradientCheckpointing", "--gradient-checkpointing", o["--gradient-checkpointing"],
                 "it trades compute for memory")
        attn = o["--attn-implementation"]
        if "--attn-implementation" in self.given:
            m.set("attentionBackend", {"sdpa": "auto"}.get(attn, attn), f"--attn-implementation {attn}")
        else:
            m.set("attentionBackend", "auto", "the reference's default is mem_efficient; aam picks the kernel per "
                                              "HardwareProfile (auto)")
        if c == TRAIN:
            self.head()

    def head(self) -> None:
        o, m = self.o, self.model
        self.ref(m, "targetHead.layerNorm", "--target-layer-norm", o["--target-layer-norm"])
        if o["--learnable-output-scale"]:
            m.set("targetHead.outputScale", True, "--learnable-output-scale")
        if o["--regressor-hidden-dims"]:
            try:
                hidden = [int(x) for x in o["--regressor-hidden-dims"].split(",") if x.strip()]
            except ValueError:
                raise ConvertError(f"--regressor-hidden-dims '{o['--regressor-hidden-dims']}' is not a comma-separated "
                                   "list of whole numbers", where=self.l.where) from None
            m.set("targetHead.hidden", hidden, "--regressor-hidden-dims")
            self.ref(m, "targetHead.hiddenDropout", "--regressor-dropout", o["--regressor-dropout"],
                     "aam's hidden layers otherwise use the Model's dropout")
        if o["--residual-regression-head"] and o["--regressor-hidden-dims"]:
            m.set("targetHead.residual", True, "--residual-regression-head")
        elif o["--residual-regression-head"]:
            self.note("--residual-regression-head", "without --regressor-hidden-dims the head is one linear layer; "
                      "there is nothing for a skip path to go around (aam's residual needs hidden widths)")
        act = o["--output-activation"]
        if o["--bounded-targets"] or getattr(self, "auto_bounded", False):
            m.set("targetHead.outputActivation", "bounded",
                  "--bounded-targets" if o["--bounded-targets"] else
                  "the reference bounds outputs by itself with log-minmax (range: the training targets)")
        elif act != "none":
            m.set("targetHead.outputActivation", act, "--output-activation")
        if o["--conditional-output-scaling"]:
            cols = [x.strip() for x in o["--conditional-output-scaling"].split(",") if x.strip()]
            missing = [x for x in cols if x not in self.ds.spec.get("categoricalColumns", [])]
            if missing:
                raise ConvertError(f"--conditional-output-scaling names {', '.join(missing)}, which --categorical-columns "
                                   "does not list (the reference refuses this too)", where=self.l.where)
            m.set("targetHead.conditionalScale", cols[0], "--conditional-output-scaling")
            if len(cols) > 1:
                self.note("--conditional-output-scaling", f"aam scales by one column; {', '.join(cols[1:])} dropped")
        loss = o["--loss-type"]
        if not o.get("--classifier"):
            self.ref(m, "targetHead.loss", "--loss-type", loss)
            if loss == "quantile":
                if not o["--quantiles"]:
                    raise ConvertError("--loss-type quantile needs --quantiles (the reference refuses it too)",
                                       where=self.l.where)
                try:
                    qs = [float(x) for x in o["--quantiles"].split(",") if x.strip()]
                except ValueError:
                    raise ConvertError(f"--quantiles '{o['--quantiles']}' is not a comma-separated list of numbers",
                                       where=self.l.where) from None
                m.set("targetHead.quantiles", qs, "--quantiles")
            if loss == "asymmetric":
                m.set("targetHead.asymmetric", {"over": o["--over-penalty"], "under": o["--under-penalty"]},
                      "--over-penalty, --under-penalty")
        if o["--class-weights"]:
            self.note("--class-weights", "given in class order in the reference; aam names the classes: write "
                      "targetHead.classWeights as {class: weight} (classes sorted by name: "
                      f"{o['--class-weights']})")
        fusion = o["--categorical-fusion"]
        cats = self.ds.spec.get("categoricalColumns", [])
        if cats and [x for x in cats if x != o["--metadata-column"]]:
            if fusion in ("concat", "add"):
                m.set("categoricalFusion", fusion, f"--categorical-fusion {fusion}" if "--categorical-fusion" in
                      self.given else "the reference's default (concat)")
                m.set("categoricalAt", "asvs", "the reference adds concat/add at every ASV position; aam's "
                                               "default fuses after pooling")
            elif fusion == "perceiver":
                m.set("categoricalFusion", "cross-attention", "--categorical-fusion perceiver has no aam equivalent; "
                                                              "cross-attention is the nearest")
            else:
                m.set("categoricalFusion", fusion, "--categorical-fusion")
            if fusion in ("cross-attention", "perceiver"):
                self.ref(m, "targetHead.heads", "--cross-attn-heads", o["--cross-attn-heads"],
                         "aam's cross-attention uses the target head's attention heads")
            self.ref(m, "categoricalEmbeddingDim", "--categorical-embed-dim", o["--categorical-embed-dim"])
