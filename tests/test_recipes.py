"""Recipe options (issue 12): each one's effect on a tiny model or a schedule, not just that the
schema accepts it."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from aam_runtime.data import table as T
from aam_runtime.data.prepare import fit_target_scale, scale_target, unscale_target
from aam_runtime.model import AAM, ModelConfig
from aam_runtime.optim import Schedule, make_optimizer, param_groups
from aam_runtime.outputs import average_passes

from synth import full_spec
from test_training import SMALL_MODEL, _batch

RUN_TRAINER = full_spec("Run", {"stage": "finetune", "datasetRef": "d", "modelRef": "m"})["trainer"]


def _trainer(**over) -> dict:
    tr = dict(RUN_TRAINER)
    tr.update(over)
    return tr


def _model(spec: dict, **kw) -> AAM:
    return AAM(ModelConfig.from_spec(spec), max_bp=150, **kw)


# ---------------------------------------------------------------- the network

def _one_base_apart():
    from aam_runtime.data.table import START
    rng = np.random.default_rng(0)
    seq = rng.integers(1, 5, size=100)  # A/C/G/T codes
    other = seq.copy()
    other[50] = 1 + (other[50] % 4)  # one base differs
    tokens = np.stack([np.concatenate([[START], seq]), np.concatenate([[START], other])])
    return torch.from_numpy(tokens).long()


def test_sequence_skip_tells_apart_asvs_one_base_apart():
    """Mean-pooled (base + position) embeddings see only base composition: two ASVs one base
    apart come out almost the same. The sequence skip makes them clearly different at init."""
    tokens = _one_base_apart()
    gaps = {}
    for skip in (False, True):
        torch.manual_seed(0)
        m = _model(dict(SMALL_MODEL, sequenceSkip=skip)).eval()
        with torch.no_grad():
            v, _ = m.encode_asvs(tokens)
        gaps[skip] = float((v[0] - v[1]).norm() / v.norm(dim=1).mean())
    assert gaps[True] > 5 * gaps[False], gaps


def test_count_embedding_none_ignores_abundance(tmp_path):
    batch, _ = _batch(tmp_path)
    torch.manual_seed(0)
    outs = {}
    for mode in ("none", "add"):
        m = _model(dict(SMALL_MODEL, countEmbedding=mode), n_outputs=1).eval()
        other = dict(batch, log_counts=batch["log_counts"] * 0.3)
        with torch.no_grad():
            outs[mode] = (m(batch, need_target=True)["target"], m(other, need_target=True)["target"])
    assert torch.equal(*outs["none"])
    assert not torch.allclose(*outs["add"])


@pytest.mark.parametrize("span", [1, 5])
def test_span_masking_masks_runs_at_about_the_ratio(span):
    torch.manual_seed(0)
    m = _model(dict(SMALL_MODEL, maskRatio=0.15, maskSpanLength=span))
    tokens = torch.randint(1, 5, (400, 101))
    tokens[:, 0] = T.START
    _, pos = m.mask_tokens(tokens, torch.Generator().manual_seed(1))
    share = pos[:, 1:].float().mean().item()
    assert 0.10 < share < 0.20, share
    # mean length of the masked runs
    p = pos[:, 1:].int()
    starts = (p[:, 1:] > p[:, :-1]).sum() + p[:, 0].sum()
    mean_run = p.sum().item() / starts.item()
    if span == 1:
        assert mean_run < 1.5
    else:
        assert mean_run >= span * 0.9, mean_run
    assert not pos[:, 0].any()  # START is never masked


# ---------------------------------------------------------------- optimisation

def _finetune_model():
    torch.manual_seed(0)
    return _model(dict(SMALL_MODEL), n_outputs=1, categorical_sizes=[3])


def test_param_groups_take_their_own_rates():
    m = _finetune_model()
    groups = param_groups(m, _trainer(learningRate=1e-3, learningRates={"base": 1e-5, "head": None,
                                                                         "categorical": 3e-2}))
    by = {}
    for g in groups:
        by.setdefault(g["group"], set()).add(g["lr"])
    assert by == {"base": {1e-5}, "head": {1e-3}, "categorical": {3e-2}}
    n = sum(p.numel() for g in groups for p in g["params"])
    assert n == sum(p.numel() for p in m.parameters())  # every parameter, once
    assert all(g["weight_decay"] == 0.0 for g in groups if g["params"][0].ndim < 2)


@pytest.mark.parametrize("kind", ["adamw", "adam", "sgd"])
def test_optimizer_types(kind):
    m = _finetune_model()
    opt = make_optimizer(param_groups(m, _trainer()), _trainer(optimizer={"type": kind, "momentum": 0.9,
                                                                          "nesterov": kind == "sgd"}))
    assert type(opt).__name__.lower() == kind
    if kind == "sgd":
        assert opt.param_groups[0]["nesterov"] and opt.param_groups[0]["momentum"] == 0.9


def test_freeze_schedule_holds_the_base_then_moves_it(tmp_path):
    """Frozen for `hold` steps (rate 0), then the base learns at its own rate; the head learns
    from the start."""
    batch, _ = _batch(tmp_path)
    batch = dict(batch, targets=torch.randn(batch["mask"].shape[0]))
    m = _model(dict(SMALL_MODEL), n_outputs=1)
    tr = _trainer(learningRate=1e-2, learningRates={"base": 1e-3}, scheduler="constant")
    opt = make_optimizer(param_groups(m, tr), tr)
    hold = 3
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, [Schedule(tr, 0, 100, hold=hold if g["group"] == "base" else 0) for g in opt.param_groups])
    base0 = m.sample_pos.weight.detach().clone()
    head0 = m.out[-1].weight.detach().clone()
    for step in range(hold + 2):
        loss = ((m(batch, need_target=True)["target"].squeeze(-1) - batch["targets"]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        moved = not torch.equal(m.sample_pos.weight, base0)
        assert moved == (step >= hold), step
    assert not torch.equal(m.out[-1].weight, head0)
    assert {g["group"]: g["lr"] for g in opt.param_groups}["base"] == pytest.approx(1e-3)


def test_plateau_cuts_the_rate_after_the_metric_stalls():
    s = Schedule(_trainer(scheduler="plateau", plateau={"factor": 0.5, "patience": 2, "minFactor": 0.1}), 0, 100)
    seen = []
    for better in (True,) + (False,) * 12:
        s.on_validation(better)
        seen.append(s(50))
    assert seen[:3] == [1.0, 1.0, 1.0]  # patience 2: two bad validations are tolerated
    assert seen[3] == 0.5 and seen[6] == 0.25
    assert min(seen) == 0.1  # floor
    # the factor lives in the callable's attributes, which LambdaLR's state_dict keeps
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, [s])
    fresh = Schedule(_trainer(scheduler="plateau"), 0, 100)
    sched2 = torch.optim.lr_scheduler.LambdaLR(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), [fresh])
    sched2.load_state_dict(sched.state_dict())
    assert fresh.factor == s.factor == 0.1


def test_cosine_restarts_return_to_the_peak():
    s = Schedule(_trainer(scheduler="cosine_restarts", cosineRestarts={"periodSteps": 10, "multiplier": 2,
                                                                       "minFactor": 0.0}), 0, 1000)
    assert s(0) == pytest.approx(1.0)
    assert s(5) == pytest.approx(0.5)
    assert s(9) < 0.05
    assert s(10) == pytest.approx(1.0)  # restart
    assert s(20) == pytest.approx(0.5)  # second cycle is 20 steps long
    assert s(30) == pytest.approx(1.0)


def test_onecycle_rises_to_the_peak_then_anneals():
    s = Schedule(_trainer(scheduler="onecycle", warmupSteps=50,
                          oneCycle={"peakFraction": 0.3, "startDivisor": 25, "endDivisor": 1e4}), 50, 100)
    assert s(0) == pytest.approx(1 / 25)  # its own warm-up: warmupSteps is not used
    assert s(30) == pytest.approx(1.0)
    assert s(15) < s(29) < 1.0
    assert s(100) == pytest.approx(1 / 25 / 1e4)


# ---------------------------------------------------------------- targets

@pytest.mark.parametrize("kind", ["none", "zscore", "minmax", "log1p", "log1p_zscore", "log1p_minmax"])
def test_target_transforms_round_trip(kind):
    y = np.array([18.0, 25.0, 31.0, 47.0, 85.0])
    norm = fit_target_scale(y, kind)
    z = scale_target(y, norm)
    assert np.allclose(unscale_target(z, norm), y)
    if kind.endswith("minmax"):
        assert z.min() == 0 and z.max() == 1
    if kind == "log1p_minmax":
        ly = np.log1p(y)
        assert np.allclose(z, (ly - ly.min()) / (ly.max() - ly.min()))
    if kind.endswith("zscore"):
        assert abs(z.mean()) < 1e-9 and abs(z.std() - 1) < 1e-9
    if kind == "log1p":
        assert np.allclose(z, np.log1p(y))


def test_log1p_refuses_values_at_or_below_minus_one():
    with pytest.raises(T.DataError, match="needs values above -1"):
        fit_target_scale(np.array([-2.0, 3.0]), "log1p", "age")


# ---------------------------------------------------------------- several passes

def test_average_passes_regression_and_classes():
    a, b = np.array([[1.0], [2.0]]), np.array([[3.0], [2.0]])
    mean, std = average_passes([a, b], "regression")
    assert np.allclose(mean, [[2.0], [2.0]]) and np.allclose(std, [[1.0], [0.0]])
    logits = [np.log(np.array([[0.9, 0.1]])), np.log(np.array([[0.5, 0.5]]))]
    lp, sd = average_passes(logits, "classification")
    assert np.allclose(np.exp(lp), [[0.7, 0.3]]) and np.allclose(sd, [[0.2, 0.2]])
    assert math.isclose(float(np.exp(lp).sum()), 1.0)


# ---------------------------------------------------------------- target losses and heads

from aam_runtime import losses as L  # noqa: E402


def _head(**over) -> dict:
    return dict(SMALL_MODEL["targetHead"], **over)


def _fit_noise(tmp_path, head: dict, steps: int = 400, seed: int = 0):
    """Fit a tiny model to targets drawn afresh from N(0, 1) at every step, whatever the input:
    the best the model can do is a constant, which the loss alone chooses (the mean, a quantile)."""
    batch, _ = _batch(tmp_path)
    torch.manual_seed(seed)
    loss = L.TargetLoss(head, "regression")
    m = _model(dict(SMALL_MODEL, targetHead=head), n_outputs=loss.n_outputs(0))
    opt = torch.optim.Adam(m.parameters(), lr=0.01)
    decay = torch.optim.lr_scheduler.LinearLR(opt, 1.0, 0.02, total_iters=steps)  # settle, do not jitter
    g = torch.Generator().manual_seed(seed)
    n = batch["mask"].shape[0]
    for _ in range(steps):
        y = torch.randn(n * 8, generator=g)
        out = m(batch, need_target=True)["target"].repeat(8, 1)  # 8 draws per sample a step
        opt.zero_grad()
        loss(out, y).backward()
        opt.step()
        decay.step()
    m.eval()
    with torch.no_grad():
        return m(batch, need_target=True)["target"]


def test_quantile_outputs_are_ordered_and_cover_their_share(tmp_path):
    q = _fit_noise(tmp_path, _head(loss="quantile", quantiles=[0.1, 0.5, 0.9]))
    assert q.shape[1] == 3
    assert (q[:, 1:] >= q[:, :-1]).all()
    y = torch.randn(20000, generator=torch.Generator().manual_seed(7))
    inside = ((y[None] >= q[:, :1]) & (y[None] <= q[:, 2:])).float().mean().item()
    assert 0.72 < inside < 0.88, (inside, q)  # nominal 0.8
    assert abs(q[:, 1].mean().item()) < 0.2  # the median of N(0, 1)


def test_quantiles_never_cross_even_for_wild_weights(tmp_path):
    batch, _ = _batch(tmp_path)
    torch.manual_seed(3)
    m = _model(dict(SMALL_MODEL, targetHead=_head(loss="quantile", quantiles=[0.05, 0.25, 0.5, 0.75, 0.95])),
               n_outputs=5)
    with torch.no_grad():
        for p in m.out.parameters():
            p.normal_(0, 5.0)
        out = m(batch, need_target=True)["target"]
    assert (out[:, 1:] >= out[:, :-1]).all()


def test_asymmetric_loss_moves_the_prediction_toward_the_cheaper_side(tmp_path):
    """over 4, under 1: the best constant is the 1/(1+4) = 0.2 quantile of N(0, 1), about -0.84."""
    sym = _fit_noise(tmp_path, _head(loss="asymmetric"))
    low = _fit_noise(tmp_path, _head(loss="asymmetric", asymmetric={"over": 4.0, "under": 1.0}))
    assert abs(sym.mean().item()) < 0.2
    assert -1.1 < low.mean().item() < -0.6, low


def test_huber_delta_is_used():
    p, y = torch.tensor([[3.0]]), torch.tensor([0.0])
    assert L.TargetLoss(_head(huberDelta=1.0), "regression")(p, y).item() == pytest.approx(2.5)
    assert L.TargetLoss(_head(huberDelta=5.0), "regression")(p, y).item() == pytest.approx(4.5)


def _fit_constant_logits(loss, labels: torch.Tensor, features: torch.Tensor | None = None, steps: int = 400):
    """Logits = features @ W + b (or b alone): the class probabilities the loss settles on."""
    torch.manual_seed(0)
    k = int(labels.max()) + 1
    b = torch.zeros(k, requires_grad=True)
    w = torch.zeros(features.shape[1] if features is not None else 1, k, requires_grad=True)
    opt = torch.optim.Adam([b, w], lr=0.05)
    for _ in range(steps):
        logits = b + (features @ w if features is not None else 0)
        opt.zero_grad()
        loss(logits.expand(len(labels), k) if features is None else logits, labels).backward()
        opt.step()
    with torch.no_grad():
        logits = b + (features @ w if features is not None else 0)
    return torch.softmax(logits, -1)


def test_balanced_class_weights_lift_the_minority():
    labels = torch.tensor([0] * 90 + [1] * 10)
    weights = L.class_weights("balanced", ["common", "rare"], labels.numpy())
    assert weights == pytest.approx([100 / (2 * 90), 100 / (2 * 10)])
    plain = _fit_constant_logits(L.TargetLoss(_head(), "classification"), labels)
    balanced = _fit_constant_logits(L.TargetLoss(_head(), "classification", weights), labels)
    assert plain[1].item() == pytest.approx(0.1, abs=0.02)
    assert balanced[1].item() == pytest.approx(0.5, abs=0.02)


def test_class_weight_map_names_classes():
    assert L.class_weights({"rare": 3.0}, ["common", "rare"], np.array([0, 1])) == [1.0, 3.0]
    with pytest.raises(ValueError, match="'rair' , which is not a class|'rair', which is not a class"):
        L.class_weights({"rair": 3.0}, ["common", "rare"], np.array([0, 1]))
    assert L.class_weights("none", ["a", "b"], np.array([0, 1])) is None


def test_label_smoothing_caps_the_confidence():
    """Separable classes: without smoothing the right class's probability goes to 1; with 0.2
    it settles near 1 - 0.2 + 0.2 / 2 = 0.9."""
    labels = torch.tensor([0, 1] * 20)
    x = torch.nn.functional.one_hot(labels, 2).float()
    sharp = _fit_constant_logits(L.TargetLoss(_head(), "classification"), labels, x, steps=800)
    smooth = _fit_constant_logits(L.TargetLoss(_head(labelSmoothing=0.2), "classification"), labels, x, steps=800)
    right = lambda p: p[torch.arange(len(labels)), labels].mean().item()  # noqa: E731
    assert right(sharp) > 0.97
    assert right(smooth) == pytest.approx(0.9, abs=0.02)


@pytest.mark.parametrize("act", ["softplus", "relu", "exp"])
def test_non_negative_activations(tmp_path, act):
    batch, _ = _batch(tmp_path)
    torch.manual_seed(0)
    m = _model(dict(SMALL_MODEL, targetHead=_head(outputActivation=act)), n_outputs=1)
    with torch.no_grad():
        for p in m.out.parameters():
            p.normal_(0, 3.0)
        out = m(batch, need_target=True)["target"]
    assert (out >= 0).all() and torch.isfinite(out).all()


def test_bounded_output_stays_in_range_and_travels_with_the_weights(tmp_path):
    batch, _ = _batch(tmp_path)
    torch.manual_seed(0)
    spec = dict(SMALL_MODEL, targetHead=_head(outputActivation="bounded"))
    m = _model(spec, n_outputs=1)
    m.set_bounds(-2.0, 3.0)
    with torch.no_grad():
        for p in m.out.parameters():
            p.normal_(0, 50.0)
        out = m(batch, need_target=True)["target"]
    assert (out >= -2.0).all() and (out <= 3.0).all() and out.max() - out.min() > 1.0
    again = _model(spec, n_outputs=1)
    again.load_state_dict(m.state_dict())  # the range is saved with the weights (predict)
    with torch.no_grad():
        assert torch.equal(again(batch, need_target=True)["target"], out)


def test_output_bounds_default_to_the_training_range_and_convert_given_ends():
    from aam_runtime.data.prepare import Data
    from aam_runtime.outputs import output_bounds

    class Enc:
        targets = np.array([0.0, 0.5, 1.0, 9.0], dtype=np.float32)  # on the model's scale (minmax of 10..20)

    d = Data(enc=Enc(), train=np.array([0, 1, 2]), val=np.array([3]), norm={"log1p": False, "mean": 10.0, "std": 10.0})
    assert output_bounds({"bounds": {}}, d) == (0.0, 1.0)
    assert output_bounds({"bounds": {"min": 5.0, "max": 40.0}}, d) == (-0.5, 3.0)


def test_residual_head_adds_a_linear_path(tmp_path):
    batch, _ = _batch(tmp_path)
    torch.manual_seed(0)
    m = _model(dict(SMALL_MODEL, targetHead=_head(hidden=[8], residual=True, hiddenDropout=0.0)), n_outputs=1).eval()
    assert m.out_skip is not None and m.out[2].p == 0.0
    with torch.no_grad():
        with_skip = m(batch, need_target=True)["target"]
        m.out[-1].weight.zero_()
        m.out[-1].bias.zero_()
        skip_only = m(batch, need_target=True)["target"]
        m.out_skip.weight.zero_()
        m.out_skip.bias.zero_()
        nothing = m(batch, need_target=True)["target"]
    assert not torch.allclose(with_skip, skip_only) and skip_only.abs().max() > 0 and nothing.abs().max() == 0
    plain = _model(dict(SMALL_MODEL, targetHead=_head(hidden=[8])), n_outputs=1)
    assert plain.out_skip is None and plain.out[2].p == SMALL_MODEL["dropout"]


def test_conditional_scale_per_category(tmp_path):
    batch, _ = _batch(tmp_path)
    n = batch["mask"].shape[0]
    cats = torch.tensor([[1, 0], [2, 0], [0, 0], [1, 0], [2, 0], [2, 0]])[:n]
    batch = dict(batch, categoricals=cats)
    torch.manual_seed(0)
    spec = dict(SMALL_MODEL, targetHead=_head(conditionalScale="site"))
    m = _model(spec, n_outputs=1, categorical_sizes=[2, 3], conditional_column=0).eval()
    with torch.no_grad():
        base = m(batch, need_target=True)["target"]  # identity at init
        m.cond_scale.weight[2] = 2.0
        m.cond_bias.weight[2] = 1.0
        out = m(batch, need_target=True)["target"]
    two = cats[:, 0] == 2
    assert torch.allclose(out[two], 2 * base[two] + 1)
    assert torch.equal(out[~two], base[~two])  # category 1 and an unseen category (0) untouched


@pytest.mark.parametrize("fusion,at", [("concat", "pooled"), ("concat", "asvs"), ("add", "asvs"), ("film", "asvs"),
                                       ("gated", "pooled"), ("gmu", "pooled"), ("cross-attention", "pooled")])
def test_every_fusion_lets_the_categories_change_the_output(tmp_path, fusion, at):
    batch, _ = _batch(tmp_path)
    n = batch["mask"].shape[0]
    torch.manual_seed(0)
    m = _model(dict(SMALL_MODEL, categoricalFusion=fusion, categoricalAt=at), n_outputs=1,
               categorical_sizes=[2, 3]).eval()
    with torch.no_grad():
        for p in m.parameters():  # larger than the init's 0.02, so a difference is not lost in rounding
            p.add_(torch.randn_like(p) * 0.3)
        one = m(dict(batch, categoricals=torch.tensor([[1, 1]] * n)), need_target=True)["target"]
        other = m(dict(batch, categoricals=torch.tensor([[2, 3]] * n)), need_target=True)["target"]
        unseen = m(dict(batch, categoricals=torch.zeros(n, 2, dtype=torch.long)), need_target=True)
    assert not torch.allclose(one, other, atol=1e-5)
    assert torch.isfinite(unseen["target"]).all()
    assert ("fusion_gate" in unseen) == (fusion in ("gated", "gmu"))
    # asvs: the embedding enters before the target encoder, so no wider head after pooling
    assert m.out[0].in_features == (16 + 8 if (fusion, at) == ("concat", "pooled") else 16)


def test_gmu_is_the_published_residual_gated_unit():
    torch.manual_seed(0)
    m = _model(dict(SMALL_MODEL, categoricalFusion="gmu"), n_outputs=1, categorical_sizes=[2])
    x, c = torch.randn(5, 16), torch.randn(5, 4)
    out: dict = {}
    got = m.fuse(x, c, out)
    z = torch.sigmoid(m.cat_gate(torch.cat([x, c], -1)))
    assert torch.allclose(got, x + z * torch.tanh(m.cat_proj(c)))
    assert 0 < out["fusion_gate"].item() < 1


def test_cross_attention_weighs_columns_per_position():
    """Two columns are two tokens: ASV positions that differ attend to them differently."""
    torch.manual_seed(0)
    m = _model(dict(SMALL_MODEL, categoricalFusion="cross-attention"), n_outputs=1, categorical_sizes=[2, 3])
    x, c = torch.randn(1, 6, 16), torch.randn(1, 8)
    tokens = m.cat_proj(c.view(1, 2, 4))
    _, weights = m.cat_attn(x, tokens, tokens, need_weights=True)
    assert weights.shape == (1, 6, 2) and weights[0].std(0).min() > 0


# ---------------------------------------------------------------- per-category normalization

def _site_data(tmp_path, ages_by_site: dict):
    """The synthetic data set with ages drawn per site (gum around 20, tongue around 60...)."""
    from aam_runtime.data import batches as B
    from aam_runtime.data.prepare import Data

    from synth import dataset_spec, make_dataset

    d = make_dataset(tmp_path / "d", n_samples=24)
    lines = d["metadata"].read_text().splitlines()
    rng = np.random.default_rng(0)
    out = [lines[0]]
    for i, line in enumerate(lines[1:]):
        sid, _, site = line.split("\t")
        if i == 23:
            site = "cheek"  # in validation only: a category training never saw
        lo, hi = ages_by_site[site]
        out.append(f"{sid}\t{rng.uniform(lo, hi):.2f}\t{site}")
    d["metadata"].write_text("\n".join(out) + "\n")
    p = T.load(dataset_spec(d), need_targets=["age"])
    enc = B.encode(p, 150, 1024, "abundance")
    return Data(enc=enc, train=np.arange(20), val=np.arange(20, 24), target_name="age", target_type="regression")


def test_normalize_by_recovers_per_category_means_and_falls_back_for_unseen(tmp_path, capsys):
    from aam_runtime.data.prepare import encode_target

    data = _site_data(tmp_path, {"gum": (15, 25), "tongue": (55, 65), "cheek": (40, 41)})
    encode_target(data, "zscore", None, strict=True, by="site")
    warned = capsys.readouterr().out
    assert "'cheek' never seen in training" in warned
    meta = data.enc.prepared.metadata
    site = meta["site"].to_numpy()
    age = meta["age"].astype(float).to_numpy()
    z = data.enc.targets
    for s in ("gum", "tongue"):
        rows = np.flatnonzero(site[:20] == s)
        assert abs(z[rows].mean()) < 1e-5 and z[rows].std() == pytest.approx(1.0, abs=1e-4)
        # a model that predicts 0 on the normalized scale predicts each category's training mean
        back = unscale_target(np.zeros(len(rows)), data.norm, data.target_groups(rows))
        assert np.allclose(back, age[rows].mean())
    # the unseen category uses the global statistics, and everything round-trips
    assert data.norm["groups"].keys() == {"gum", "tongue"}
    all_rows = np.arange(24)
    assert np.allclose(unscale_target(z, data.norm, data.target_groups(all_rows)), age, atol=1e-3)
    g = data.norm
    assert z[23] == pytest.approx((age[23] - g["mean"]) / g["std"], rel=1e-4)


def test_normalize_by_column_missing_is_found_at_preflight(tmp_path):
    from aam_runtime.data.preflight import check_dataset

    from synth import dataset_spec, make_dataset

    d = make_dataset(tmp_path / "d")
    spec = dataset_spec(d, targets=[{"name": "age", "type": "regression", "normalizeBy": "sitee"}])
    [p] = check_dataset(spec, "finetune", "age", need_distances=False)
    assert p.field == ("spec", "targets", 0, "normalizeBy") and p.hint == "did you mean 'site'?"
    assert "normalizeBy column 'sitee' is not a column of" in p
