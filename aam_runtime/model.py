"""The AAM network: nucleotides -> ASV vectors -> sample context -> sample embedding / targets.

Shapes: B samples, S ASV slots (padded to the batch's longest sample), U distinct ASVs in the
batch, L tokens per ASV (START + bases), D embedding width.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from aam_runtime.data.table import MASK, PAD, START, VOCAB_SIZE

# Modules that belong to the target head: what finetuning starts afresh (unless it continues a
# finetune run) and what freezeBase leaves trainable.
CATEGORICAL_MODULES = ("cat_embs", "cat_proj", "cat_gate", "cat_attn", "cat_norm")
HEAD_MODULES = ("tgt", "tgt_pool", "tgt_ln", *CATEGORICAL_MODULES, "out", "out_skip", "out_scale", "out_bias",
                "cond_scale", "cond_bias", "out_lo", "out_hi")


def is_head_key(name: str) -> bool:
    """Is this state-dict key or parameter name part of the target head?"""
    return name.split(".")[0] in HEAD_MODULES


def param_group(name: str) -> str:
    """The learning-rate group of a parameter: base, head, or categorical (trainer.learningRates)."""
    top = name.split(".")[0]
    return "categorical" if top in CATEGORICAL_MODULES else "head" if top in HEAD_MODULES else "base"


@dataclass(frozen=True)
class Level:
    heads: int
    layers: int


@dataclass(frozen=True)
class TargetHead:
    heads: int
    layers: int
    layer_norm: bool
    hidden: tuple[int, ...]
    output_scale: bool
    hidden_dropout: float | None = None  # None: the Model's dropout
    residual: bool = False  # output = Linear(x) + MLP(x)
    activation: str = "none"  # none | softplus | relu | exp | bounded (on the model's scale)
    monotone: bool = False  # quantile outputs: the first, then non-negative increments


@dataclass(frozen=True)
class ModelConfig:
    """The network's shape, built from a resolved Model spec (schema defaults already filled)."""

    embedding_dim: int
    ffn_multiplier: int
    dropout: float
    nucleotide: Level
    sample: Level
    encoder_head: Level
    target_head: TargetHead
    count_embedding: str
    categorical_fusion: str
    categorical_embedding_dim: int
    mask_ratio: float
    gradient_checkpointing: bool
    dedup_asvs: bool
    sequence_skip: bool = False
    mask_span: int = 1
    categorical_at: str = "pooled"  # pooled | asvs: where concat/add/film meet the categorical embedding

    @classmethod
    def from_spec(cls, spec: dict) -> "ModelConfig":
        th = spec["targetHead"]
        return cls(embedding_dim=spec["embeddingDim"], ffn_multiplier=spec["ffnMultiplier"], dropout=spec["dropout"],
                   nucleotide=Level(**spec["nucleotide"]), sample=Level(**spec["sample"]),
                   encoder_head=Level(**spec["encoderHead"]),
                   target_head=TargetHead(heads=th["heads"], layers=th["layers"], layer_norm=th["layerNorm"],
                                          hidden=tuple(th["hidden"]), output_scale=th["outputScale"],
                                          hidden_dropout=th.get("hiddenDropout"), residual=th.get("residual", False),
                                          activation=th.get("outputActivation", "none"),
                                          monotone=th.get("loss") == "quantile"),
                   count_embedding=spec["countEmbedding"], categorical_fusion=spec["categoricalFusion"],
                   categorical_embedding_dim=spec["categoricalEmbeddingDim"], mask_ratio=spec["maskRatio"],
                   gradient_checkpointing=spec["gradientCheckpointing"], dedup_asvs=spec["dedupAsvs"],
                   sequence_skip=spec.get("sequenceSkip", False), mask_span=spec.get("maskSpanLength", 1),
                   categorical_at=spec.get("categoricalAt", "pooled"))


def sample_positions(max_asvs_per_sample: int) -> int:
    """Rows of the sample-level position table (at least 1024, so small data sets share a shape)."""
    return max(1024, max_asvs_per_sample)


def build_model(spec: dict, hardware: dict, *, max_bp: int, n_outputs: int = 0,
                categorical_sizes: list[int] | None = None, max_asvs: int = 1024,
                conditional_column: int | None = None) -> "AAM":
    """The one way training and predict make the network: shape from the Model spec, attention
    kernel from the Model (or, on auto, the HardwareProfile) and the machine. conditional_column:
    the index among the categorical columns of targetHead.conditionalScale's column."""
    model = AAM(ModelConfig.from_spec(spec), max_bp=max_bp, n_outputs=n_outputs,
                categorical_sizes=categorical_sizes, max_asvs=max_asvs, conditional_column=conditional_column)
    requested = spec["attentionBackend"] if spec["attentionBackend"] != "auto" else hardware["attentionBackend"]
    model.attention_backend, model.attention_why, model.attention_warning = attention_decision(
        requested, hardware["accelerator"], hardware.get("rocmVersion"), getattr(torch.version, "hip", None))
    return model


def sdpa_context(backend: str):
    """A context manager that pins scaled_dot_product_attention to one kernel ('auto': torch picks)."""
    if backend in (None, "auto"):
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    kernel = {"math": SDPBackend.MATH, "mem_efficient": SDPBackend.EFFICIENT_ATTENTION,
              "flash": SDPBackend.FLASH_ATTENTION}[backend]
    return sdpa_kernel([kernel])


def _major_minor(version: str | None) -> tuple[int, int] | None:
    if not version:
        return None
    parts = [int(p) for p in str(version).split(".")[:2] if p.isdigit()]
    return tuple(parts + [0] * (2 - len(parts))) if parts else None  # type: ignore[return-value]


def attention_decision(requested: str, accelerator: str, rocm_version: str | None,
                       torch_hip: str | None = None) -> tuple[str, str, str | None]:
    """(SDPA backend, why, warning or None).

    On ROCm the masked mem_efficient kernel gives wrong results below HIP 6.3 (aotriton < 0.8.2,
    SPEC-model.md, the reference's COS-8.2: 42% instead of 70% masked-nucleotide accuracy), and
    AAM always passes padding masks. That kernel ships inside the torch wheel, so the torch build's
    HIP version decides (torch_hip, torch.version.hip); the HardwareProfile's rocmVersion (the
    site's ROCm stack) decides only where the build's is unknown (aamctl, which never imports
    torch), and a disagreement between the two is reported. flash never takes ROCm's path with a
    mask and is refused at validate elsewhere; here it degrades to math rather than crash."""
    if accelerator != "rocm":
        return requested, f"{requested}: {accelerator} kernels take the padding mask", None
    build, profile = _major_minor(torch_hip), _major_minor(rocm_version)
    warning = None
    if build and profile and (build < (6, 3)) != (profile < (6, 3)):
        warning = (f"the HardwareProfile says ROCm {rocm_version} but torch was built with HIP {torch_hip}: "
                   f"the torch build decides the attention kernel (its aotriton ships in the wheel)")
    version, source = (build, f"torch built with HIP {torch_hip}") if build else \
        (profile, f"HardwareProfile rocmVersion {rocm_version}") if profile else (None, "no ROCm version known")
    old = version is None or version < (6, 3)
    if requested == "flash":
        return "math", f"math: flash takes no padding mask on ROCm ({source})", warning
    if old and requested in ("auto", "mem_efficient"):
        return "math", (f"math: masked mem_efficient is wrong below ROCm 6.3 ({source})" if version else
                        "math: the ROCm version is unknown, so the kernel that is right everywhere"), warning
    return requested, f"{requested}: {source} has the fixed mem_efficient kernel", warning


def choose_attention_backend(requested: str, accelerator: str, rocm_version: str | None,
                             torch_hip: str | None = None) -> str:
    """The SDPA backend to use (attention_decision, without the reasons)."""
    return attention_decision(requested, accelerator, rocm_version, torch_hip)[0]


class Block(nn.Module):
    """Pre-LayerNorm transformer block; attention through SDPA with a key-padding mask."""

    def __init__(self, dim: int, heads: int, ffn_mult: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, ffn_mult * dim), nn.GELU(), nn.Linear(ffn_mult * dim, dim))
        self.drop = nn.Dropout(dropout)
        self.attn_dropout = dropout

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        n, s, d = x.shape  # n sequences, s positions
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        q, k, v = (t.view(n, s, self.heads, d // self.heads).transpose(1, 2) for t in (q, k, v))
        mask = None if key_mask is None else key_mask[:, None, None, :]  # [n, 1, 1, s], True = attend
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                           dropout_p=self.attn_dropout if self.training else 0.0)
        x = x + self.drop(self.proj(y.transpose(1, 2).reshape(n, s, d)))
        return x + self.drop(self.ff(self.ln2(x)))


# gradientCheckpointing: nucleotide tokens per checkpointed chunk of ASVs (about 0.3 GB of
# activations per chunk at the reference sizes)
CHUNK_TOKENS = 16384


class Encoder(nn.Module):
    def __init__(self, dim, heads, layers, ffn_mult, dropout, checkpointing=False):
        super().__init__()
        self.blocks = nn.ModuleList(Block(dim, heads, ffn_mult, dropout) for _ in range(layers))
        self.ln = nn.LayerNorm(dim)
        self.checkpointing = checkpointing

    def forward(self, x, key_mask=None):
        for block in self.blocks:
            if self.checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(block, x, key_mask, use_reentrant=False)
            else:
                x = block(x, key_mask)
        return self.ln(x)

    def stack(self, x, key_mask=None):
        """All blocks without per-block checkpoints (the caller checkpoints the whole stack)."""
        for block in self.blocks:
            x = block(x, key_mask)
        return self.ln(x)


class AttentionPool(nn.Module):
    """Masked softmax-weighted sum over positions: [n, s, d] -> [n, d]."""

    def __init__(self, dim: int):
        super().__init__()
        # no bias: softmax ignores a constant shift, so a bias would get only rounding noise as
        # gradient, which AdamW blows up into lr-sized random steps
        self.score = nn.Linear(dim, 1, bias=False)

    def forward(self, x, mask):
        w = self.score(x).squeeze(-1).masked_fill(~mask, float("-inf"))
        w = torch.softmax(w, dim=-1)
        return torch.einsum("ns,nsd->nd", w, x)


SEQ_SKIP_STD = 0.3


class TargetHeadLayers:
    """AAM's target head (finetune): a target encoder and pooling over the sample's ASV states,
    categorical inputs fused in, an MLP to the outputs and what shapes them. A part of AAM
    (its parameters keep AAM's names: tgt.*, cat_embs.*, out.*), written apart for reading."""

    def _build_target_head(self, c: ModelConfig, n_outputs: int, categorical_sizes: list[int] | None,
                           conditional_column: int | None) -> None:
        d = c.embedding_dim
        ff, drop, ckpt = c.ffn_multiplier, c.dropout, c.gradient_checkpointing
        th = c.target_head
        self.tgt = Encoder(d, th.heads, th.layers, ff, drop, ckpt)
        self.tgt_pool = AttentionPool(d)
        self.tgt_ln = nn.LayerNorm(d) if th.layer_norm else nn.Identity()
        self.cat_embs = nn.ModuleList(nn.Embedding(n + 1, c.categorical_embedding_dim)
                                      for n in (categorical_sizes or []))
        cat_dim = c.categorical_embedding_dim * len(self.cat_embs)
        self.fusion = c.categorical_fusion if cat_dim else "none"
        # where: after pooling (one vector per sample), or at every ASV position before the
        # target encoder (the reference's concat/add); cross-attention is per position by nature
        self.fuse_at = "asvs" if self.fusion == "cross-attention" else c.categorical_at
        width = d
        if self.fusion == "concat":
            if self.fuse_at == "asvs":
                self.cat_proj = nn.Linear(d + cat_dim, d)
            else:
                width = d + cat_dim
        elif self.fusion in ("add", "gated", "gmu"):
            self.cat_proj = nn.Linear(cat_dim, d)
            if self.fusion in ("gated", "gmu"):
                self.cat_gate = nn.Linear(d + cat_dim, d)
        elif self.fusion == "film":
            self.cat_proj = nn.Linear(cat_dim, 2 * d)
        elif self.fusion == "cross-attention":
            # each column's embedding becomes one key/value token; every ASV position queries them
            self.cat_proj = nn.Linear(c.categorical_embedding_dim, d)
            self.cat_attn = nn.MultiheadAttention(d, th.heads, dropout=drop, batch_first=True)
            self.cat_norm = nn.LayerNorm(d)
        layers: list[nn.Module] = []
        hidden_drop = drop if th.hidden_dropout is None else th.hidden_dropout
        in_width = width
        for h in th.hidden:
            layers += [nn.Linear(width, h), nn.GELU(), nn.Dropout(hidden_drop)]
            width = h
        layers.append(nn.Linear(width, n_outputs))
        self.out = nn.Sequential(*layers)
        # residual: a linear path beside the MLP (the reference's residual regression head)
        self.out_skip = nn.Linear(in_width, n_outputs) if th.residual and th.hidden else None
        self.out_scale = nn.Parameter(torch.ones(n_outputs)) if th.output_scale else None
        self.out_bias = nn.Parameter(torch.zeros(n_outputs)) if th.output_scale else None
        self.activation = th.activation
        self.monotone = th.monotone and n_outputs > 1
        # bounded: the range on the model's scale, set from the training targets (set_bounds)
        # and saved with the weights so predict applies the same range
        if self.activation == "bounded":  # only then: checkpoints without it stay loadable
            self.register_buffer("out_lo", torch.zeros(()))
            self.register_buffer("out_hi", torch.ones(()))
        self.cond_col = conditional_column
        if conditional_column is not None:
            levels = (categorical_sizes or [])[conditional_column] + 1  # 0: a category training never saw
            self.cond_scale = nn.Embedding(levels, n_outputs)
            self.cond_bias = nn.Embedding(levels, n_outputs)

    def fuse(self, x: torch.Tensor, c: torch.Tensor, out: dict) -> torch.Tensor:
        """Categorical embeddings c [B, C*e] into x: the pooled vector [B, D] or every ASV
        position [B, S, D]. gated and gmu report their mean gate value in out["fusion_gate"]."""
        f = self.fusion
        if f == "cross-attention":
            tokens = self.cat_proj(c.view(c.shape[0], len(self.cat_embs), -1))  # [B, C, D]
            attended, _ = self.cat_attn(x, tokens, tokens, need_weights=False)
            return self.cat_norm(x + attended)
        if x.dim() == 3:  # the same embedding at every position
            c = c[:, None, :].expand(-1, x.shape[1], -1)
        if f == "concat":
            both = torch.cat([x, c], dim=-1)
            return self.cat_proj(both) if x.dim() == 3 else both
        if f == "add":
            return x + self.cat_proj(c)
        if f == "film":
            gamma, beta = self.cat_proj(c).chunk(2, dim=-1)
            return x * (1 + gamma) + beta
        # gated: x + z * W c; gmu (the reference's gated multimodal unit): x + z * tanh(W c),
        # z = sigmoid(W_z [x, c]) in both
        z = torch.sigmoid(self.cat_gate(torch.cat([x, c], dim=-1)))
        out["fusion_gate"] = z.detach().float().mean()
        h = self.cat_proj(c)
        return x + z * (torch.tanh(h) if f == "gmu" else h)

    def set_bounds(self, lo: float, hi: float) -> None:
        """outputActivation bounded: outputs in [lo, hi] on the model's scale."""
        self.out_lo.fill_(float(lo))
        self.out_hi.fill_(float(hi))

    def head_output(self, v: torch.Tensor, batch: dict) -> torch.Tensor:
        """Pooled (and fused) vector -> target outputs: MLP (+ linear skip), learnable scale and
        bias, per-category scale and bias, quantile ordering, then the output activation."""
        y = self.out(v)
        if self.out_skip is not None:
            y = y + self.out_skip(v)
        if self.out_scale is not None:
            y = y * self.out_scale + self.out_bias
        if self.cond_col is not None:
            code = batch["categoricals"][:, self.cond_col]
            y = y * self.cond_scale(code) + self.cond_bias(code)
        if self.monotone:  # quantiles: the lowest, then non-negative steps up, so they never cross
            y = torch.cat([y[:, :1], y[:, :1] + torch.cumsum(F.softplus(y[:, 1:]), dim=1)], dim=1)
        a = self.activation
        if a == "softplus":
            y = F.softplus(y)
        elif a == "relu":
            y = F.relu(y)
        elif a == "exp":
            y = torch.exp(y.clamp(max=30.0))  # no inf from a wild output
        elif a == "bounded":
            y = self.out_lo + (self.out_hi - self.out_lo) * torch.sigmoid(y)
        return y


class AAM(TargetHeadLayers, nn.Module):
    # FSDP wraps each transformer block (accelerate reads this list for TRANSFORMER_BASED_WRAP)
    _no_split_modules = [Block.__name__]

    def __init__(self, config: ModelConfig, max_bp: int, n_outputs: int = 0,
                 categorical_sizes: list[int] | None = None, max_asvs: int = 1024,
                 conditional_column: int | None = None):
        super().__init__()
        c = config
        self.config = c
        self.dedup = c.dedup_asvs
        self.attention_backend = "auto"
        self.mask_ratio = c.mask_ratio
        # Bases and positions are stored at nanoGPT's 0.02 (so AdamW moves them ~5% a step) but enter
        # at unit scale: at 0.02 every ASV looks alike, every sample too, and a target head sits on
        # the mean for hundreds of steps. Measured in docs/benchmarks.md (init comparison).
        self.emb_scale = 50.0
        self._build_encoders(c, max_bp, max_asvs)
        self.n_outputs = n_outputs
        if n_outputs:
            self._build_target_head(c, n_outputs, categorical_sizes, conditional_column)
        self._init_weights()

    def _build_encoders(self, c: ModelConfig, max_bp: int, max_asvs: int) -> None:
        """The base: nucleotide encoder and ASV pooling, abundance, sample encoder, encoder head,
        and the self-supervised heads (in this order: the order fixes the initial weights)."""
        d = c.embedding_dim
        ff, drop, ckpt = c.ffn_multiplier, c.dropout, c.gradient_checkpointing
        self.tok_emb = nn.Embedding(VOCAB_SIZE, d, padding_idx=PAD)
        self.nuc_pos = nn.Embedding(max_bp + 1, d)
        self.nuc = Encoder(d, c.nucleotide.heads, c.nucleotide.layers, ff, drop, ckpt)
        self.asv_pool = AttentionPool(d)
        # sequenceSkip: a learned vector per (position, base), summed over the sequence and added to
        # the pooled ASV vector. Attention pooling over positions starts as a mean, and a mean of
        # (base + position) embeddings is the base composition: ASVs a few bases apart look alike and
        # a target head sits on the mean. This linear read of the exact sequence tells them apart
        # from the first step (measured in docs/benchmarks.md, Quality).
        self.seq_skip = nn.EmbeddingBag((max_bp + 1) * VOCAB_SIZE, d, mode="sum") if c.sequence_skip else None
        self.nuc_head = nn.Linear(d, VOCAB_SIZE)
        self.count_mode = c.count_embedding
        if self.count_mode == "add":
            self.count_in = nn.Linear(1, d)
        elif self.count_mode == "concat":
            self.count_in = nn.Linear(d + 1, d)
        elif self.count_mode == "film":
            self.count_in = nn.Linear(1, 2 * d)
        else:  # none: abundance does not enter the model (the reference's default)
            self.count_in = None
        self.sample_pos = nn.Embedding(max_asvs, d)
        self.sample = Encoder(d, c.sample.heads, c.sample.layers, ff, drop, ckpt)
        self.enc_head = Encoder(d, c.encoder_head.heads, c.encoder_head.layers, ff, drop, ckpt)
        self.enc_pool = AttentionPool(d)
        self.count_head = nn.Linear(d, 1)

    def _init_weights(self) -> None:
        self.apply(self._init)
        if self.n_outputs and self.cond_col is not None:  # identity until trained
            nn.init.ones_(self.cond_scale.weight)
            nn.init.zeros_(self.cond_bias.weight)
        # log(count + 1) reaches ~7: give it unit-scale weights so abundance is visible from step 0
        # (bases and positions keep 0.02: larger embeddings learn too slowly under AdamW).
        if self.count_in is not None:
            nn.init.normal_(self.count_in.weight, std=1.0 / max(1, self.count_in.in_features) ** 0.5)
        if self.seq_skip is not None:
            # ~100 positions summed: per-dimension std ~ 0.3 * sqrt(L), above the pooled vector's
            nn.init.normal_(self.seq_skip.weight, std=SEQ_SKIP_STD)

    @staticmethod
    def _init(m):
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)

    def base_parameters(self):
        """Everything but the target head (what freezeBase freezes)."""
        head = {id(p) for n, p in self.named_parameters() if is_head_key(n)}
        return [p for p in self.parameters() if id(p) not in head]

    def mask_tokens(self, tokens: torch.Tensor, generator: torch.Generator | None = None):
        """Replace about maskRatio of the real bases by MASK; returns (masked tokens, bool positions).

        maskSpanLength 1 masks bases independently; k > 1 masks runs of k consecutive bases
        (span starts drawn at maskRatio / k, so the masked share stays about maskRatio), which a
        model cannot fill in from the neighbouring bases alone."""
        real = (tokens != PAD) & (tokens != START)
        span = self.config.mask_span
        r = torch.rand(tokens.shape, generator=generator, device="cpu")
        if span <= 1:
            pos = r < self.mask_ratio
        else:
            starts = (r < self.mask_ratio / span).float()[:, None, :]  # [U, 1, L]
            # a start at i masks i..i+span-1: max-pool the starts over a window reaching back span-1
            pos = F.max_pool1d(F.pad(starts, (span - 1, 0)), kernel_size=span, stride=1)[:, 0, :] > 0
        pos = real & pos.to(tokens.device)
        return tokens.masked_fill(pos, MASK), pos

    def encode_asvs(self, tokens: torch.Tensor):
        """[U, L] tokens -> ([U, D] ASV vectors, [U, L, D] per-base states)."""
        u, length = tokens.shape
        pos = torch.arange(length, device=tokens.device)
        x = (self.tok_emb(tokens) + self.nuc_pos(pos)[None]) * self.emb_scale
        mask = tokens != PAD
        if self.nuc.checkpointing and self.training and torch.is_grad_enabled() and u * length > CHUNK_TOKENS:
            # gradientCheckpointing: the nucleotide stack runs on chunks of ASVs, each chunk one
            # checkpoint, so backward holds one chunk's activations, not every ASV's: a batch of
            # 2 x 5,000 ASVs fits where per-layer checkpoints alone need ~27 GB (docs/benchmarks.md).
            # ASVs never attend to each other here, so the chunks compute the same function.
            step = max(1, CHUNK_TOKENS // length)
            h = torch.cat([torch.utils.checkpoint.checkpoint(self.nuc.stack, x[i:i + step], mask[i:i + step],
                                                             use_reentrant=False)
                           for i in range(0, u, step)])
        else:
            h = self.nuc(x, mask)
        vec = self.asv_pool(h, mask)
        if self.seq_skip is not None:
            # one (position, base) index per real token; padding slots get weight 0
            idx = pos[None, :] * VOCAB_SIZE + tokens
            vec = vec + self.seq_skip(idx, per_sample_weights=mask.float()).to(vec.dtype)
        return vec, h

    def forward(self, batch: dict, *, mask_nucleotides: bool = False, generator=None, need_target: bool = False):
        with sdpa_context(self.attention_backend):
            return self._forward(batch, mask_nucleotides, generator, need_target)

    def _forward(self, batch, mask_nucleotides, generator, need_target):
        tokens = batch["tokens"]  # [U, L] distinct ASVs of the batch
        index = batch["asv_index"]  # [B, S] into tokens
        smask = batch["mask"]  # [B, S] real ASV slots
        out: dict = {}
        if mask_nucleotides and self.mask_ratio > 0:
            tokens_in, masked = self.mask_tokens(tokens, generator)
        else:
            tokens_in, masked = tokens, None
        if self.dedup:
            asv_vec, states = self.encode_asvs(tokens_in)  # each distinct ASV once
            x = asv_vec[index]  # [B, S, D] scatter back
        else:
            # the reference's way: every occurrence encoded separately
            occ = index[smask]
            occ_vec, states_occ = self.encode_asvs(tokens_in[occ])
            x = occ_vec.new_zeros(*index.shape, occ_vec.shape[-1])
            x[smask] = occ_vec
            states = None
            if masked is not None:
                masked = masked[occ]
                out["nuc_targets"] = tokens[occ][masked]
                out["nuc_logits"] = self.nuc_head(states_occ[masked])
        if masked is not None and self.dedup:
            out["nuc_targets"] = tokens[masked]
            out["nuc_logits"] = self.nuc_head(states[masked])
        logc = batch["log_counts"].unsqueeze(-1)  # [B, S, 1]
        if self.count_mode == "none":
            pass
        elif self.count_mode == "add":
            x = x + self.count_in(logc)
        elif self.count_mode == "concat":
            x = self.count_in(torch.cat([x, logc], dim=-1))
        else:  # film
            gamma, beta = self.count_in(logc).chunk(2, dim=-1)
            x = x * (1 + gamma) + beta
        s = x.shape[1]
        x = x + self.sample_pos(torch.arange(s, device=x.device).clamp(max=self.sample_pos.num_embeddings - 1))[None]
        ctx = self.sample(x, smask)  # [B, S, D]
        h = self.enc_head(ctx, smask)
        out["embedding"] = self.enc_pool(h, smask)  # [B, D]
        out["count_pred"] = self.count_head(ctx).squeeze(-1)  # [B, S]
        if need_target and self.n_outputs:
            c = None
            if self.fusion != "none":
                cats = batch["categoricals"]  # [B, C] codes (0 = unknown)
                c = torch.cat([emb(cats[:, i]) for i, emb in enumerate(self.cat_embs)], dim=-1)
            if c is not None and self.fuse_at == "asvs":
                ctx = self.fuse(ctx, c, out)
            t = self.tgt(ctx, smask)
            v = self.tgt_ln(self.tgt_pool(t, smask))
            if c is not None and self.fuse_at == "pooled":
                v = self.fuse(v, c, out)
            out["pooled"] = v  # [B, D] the sample vector the target is read from (outputs.embeddings)
            out["target"] = self.head_output(v, batch)
        return out


def pairwise_unifrac_loss(emb: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """MSE between tanh(||e_i - e_j|| / 10) and UniFrac over pairs i < j; also the MAE."""
    b = emb.shape[0]
    i, j = torch.triu_indices(b, b, offset=1, device=emb.device)
    diff = emb[i].float() - emb[j].float()
    dist = torch.sqrt((diff * diff).sum(-1) + 1e-12)  # eps: d(sqrt)/dx is finite at 0
    pred = torch.tanh(dist / 10.0)
    true = target[i, j].float()
    return F.mse_loss(pred, true), (pred - true).abs().mean().detach()


def sharded_unifrac_loss(local: torch.Tensor, gathered: torch.Tensor, offset: int, target: torch.Tensor,
                         world: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The pairwise loss over a global batch split across `world` data-parallel ranks.

    local [b, D] are this rank's embeddings (rows offset..offset+b of the global batch), gathered
    [B, D] everybody's, detached. Returns (surrogate, loss, mae): the surrogate's gradient with
    respect to `local` equals the global loss's, scaled by `world` so that DDP's gradient
    averaging yields exactly the single-process gradient; loss and mae are the global values.
    No collective runs in backward, so nothing races DDP's own all-reduce.
    """
    big_b = gathered.shape[0]
    loss, mae = pairwise_unifrac_loss(gathered.detach(), target)
    b = local.shape[0]
    rows = torch.arange(b, device=local.device) + offset
    others = gathered.detach()
    diff = local.float()[:, None, :] - others.float()[None, :, :]  # [b, B, D] ordered pairs (i local, j any)
    dist = torch.sqrt((diff * diff).sum(-1) + 1e-12)
    err = (torch.tanh(dist / 10.0) - target[rows].float()) ** 2
    keep = torch.ones_like(err, dtype=torch.bool)
    keep[torch.arange(b), rows] = False  # no diagonal
    pairs = big_b * (big_b - 1) / 2
    surrogate = world * err[keep].sum() / pairs
    return surrogate, loss, mae


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
