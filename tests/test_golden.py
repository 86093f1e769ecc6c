"""Golden numerics (aamctl doctor --write-golden / --golden): the round trip, the shipped CPU file,
and that a wrong kernel is caught and named."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from aam_runtime import golden as G

from conftest import aamctl


def test_write_then_compare_round_trip_through_the_cli(tmp_path):
    out = tmp_path / "g" / "here.pt"
    p = aamctl(tmp_path / "home", "doctor", "--profile", "cpu", "--write-golden", str(out))
    assert "golden numerics: wrote" in p.stdout and out.is_file()
    doc = G.load(out)
    assert set(doc["results"]) >= {"fp32", "bf16"}
    assert {"out/embedding", "out/nuc_logits", "loss/total"} <= set(doc["results"]["fp32"])
    assert any(k.startswith("grad/nuc.blocks.0") for k in doc["results"]["fp32"])
    p = aamctl(tmp_path / "home", "doctor", "--profile", "cpu", "--golden", str(out))
    assert "golden numerics against" in p.stdout and ": ok" in p.stdout and "verdict: ready" in p.stdout

    # a file whose recorded embedding gradient is off by 1% of its scale: named, exit 1
    doc["results"]["fp32"]["grad/tok_emb.weight"] += 0.01 * doc["results"]["fp32"]["grad/tok_emb.weight"].abs().max()
    torch.save(doc, tmp_path / "off.pt")
    p = aamctl(tmp_path / "home", "doctor", "--golden", str(tmp_path / "off.pt"), check=False)
    assert p.returncode == 1
    assert "DIFFERENT" in p.stdout and "NOT READY (golden numerics)" in p.stdout
    line = next(x for x in p.stdout.splitlines() if "grad/tok_emb.weight" in x)
    assert line.rstrip().endswith("over") and ("9.9" in line or "1.00e-02" in line), line


def test_the_shipped_cpu_golden_file_holds_on_this_machine():
    """Numerics regression: today's code on this CPU reproduces the shipped file (written on the
    project's reference CPU) within the per-dtype tolerances. A change to the model's arithmetic
    fails here; write a new file with 'aamctl doctor --write-golden aam_runtime/golden_files/cpu.pt'
    when the change is meant."""
    ok, lines = G.compare(G.load("cpu"), "cpu")
    assert ok, "\n".join(lines)


def test_a_kernel_that_ignores_the_padding_mask_is_caught(monkeypatch):
    """What the check is for (ROCm < 6.3's masked mem_efficient attention ignores the mask)."""
    real = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda q, k, v, attn_mask=None, **kw: real(q, k, v, **kw))
    ok, lines = G.compare(G.load("cpu"), "cpu")
    assert not ok
    fp32 = next(line for line in lines if line.startswith("fp32:"))
    assert "FAIL" in fp32
    assert any("over" in line and "grad/" in line for line in lines)


def test_rounding_level_tensors_do_not_fail_the_comparison():
    """A gradient that is zero up to rounding (~1e-9 beside ~1e-1) is measured against its group's
    scale, not its own: math vs the default attention kernel stays far inside fp32's tolerance."""
    ok, lines = G.compare(G.load("cpu"), "cpu", backend="math")
    assert ok, "\n".join(lines)
    assert G.relative_difference(torch.tensor([2e-9]), torch.tensor([1e-9])) == 1.0
    assert G.relative_difference(torch.tensor([2e-9]), torch.tensor([1e-9]), floor=1e-3) < 1e-5


def test_bad_golden_files_get_one_message(tmp_path):
    (tmp_path / "junk.pt").write_text("not a torch file")
    torch.save({"format": "something-else"}, tmp_path / "other.pt")
    for name, expected in (("missing.pt", "no such golden file (shipped with aam: cpu)"),
                           ("junk.pt", "not a golden file torch can read"),
                           ("other.pt", "not an aam golden file")):
        p = aamctl(tmp_path / "home", "doctor", "--golden", str(tmp_path / name), check=False)
        assert p.returncode == 2, p.stdout + p.stderr
        assert expected in p.stderr and "Traceback" not in p.stderr
    p = aamctl(tmp_path / "home", "doctor", "--golden", "cpu", "--write-golden", str(tmp_path / "x.pt"), check=False)
    assert p.returncode != 0 and "one at a time" in p.stderr


def test_doctor_reads_native_bf16_from_the_cpu_flags(tmp_path):
    """cpu-bf16 pays off only with native bf16 instructions; doctor reads them from the kernel."""
    from aam_runtime.machine import cpu_bf16_flags
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n")
    assert cpu_bf16_flags(str(info)) == ["avx512_bf16"]
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 fma avx512f amx_bf16 amx_tile\n")
    assert cpu_bf16_flags(str(info)) == ["amx_bf16"]
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\n")
    assert cpu_bf16_flags(str(info)) == []
    assert cpu_bf16_flags(str(tmp_path / "missing")) == []
