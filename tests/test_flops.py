"""scripts/flops.py: analytic MACs agree with XLA's count; the paper's convention is reproduced."""

from __future__ import annotations

import importlib.util
import json
import pathlib

import pytest

from krause import paper
from krause.models import get_model

_PATH = pathlib.Path(__file__).resolve().parents[1] / "scripts" / "flops.py"
_SPEC = importlib.util.spec_from_file_location("flops", _PATH)
flops = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(flops)

SMALL = dict(depth=1, width=192, heads=3, mlp_dim=768)  # large enough that MACs dominate


@pytest.mark.parametrize("name", ["vit_t4", "kvit_t4"])
def test_analytic_count_agrees_with_compiled(name):
    model = get_model(name, **SMALL)
    analytic = flops.analytic_macs(model)["total"]
    compiled = flops.compiled_macs(model, impl="stencil")
    assert abs(compiled / analytic - 1) < 0.10, (compiled, analytic)


def test_compiled_count_sees_locality():
    """The stencil implementation computes fewer MACs than the dense masked one."""
    model = get_model("kvit_t4", **SMALL)
    dense_minus_local = flops.compiled_macs(model, impl="dense") - flops.compiled_macs(model)
    analytic_saving = 2 * (65 * 65 - flops.attention_entries(model)) * 192
    assert dense_minus_local > 0.5 * analytic_saving


def test_attention_entries():
    assert (
        flops.attention_entries(get_model("kvit_t4")) == 65 + 64 + 288
    )  # CLS row, CLS key, window
    assert flops.attention_entries(get_model("kvit_s16")) == 197 + 196 + 64 * 64
    assert flops.attention_entries(get_model("kvit_t4", locality=False)) == 65 * 65
    assert flops.attention_entries(get_model("vit_t4")) == 65 * 65


def test_honest_counts_and_paper_convention():
    kvit, vit = get_model("kvit_s4"), get_model("vit_s4")
    assert 1.38e9 <= flops.analytic_macs(kvit)["total"] <= 1.39e9
    assert flops.analytic_macs(vit)["total"] == pytest.approx(
        paper.result("cifar10", "vit_s4").gflops * 1e9, rel=0.01
    )
    rows = flops.paper_rows()
    assert len(rows) == 18  # the CIFAR-10 (8) and ImageNet (10) rows with a FLOPs column
    for _, name, overrides, _, paper_gflops in rows:
        ours = flops.reference_counter_macs(get_model(name, **overrides)) / 1e9
        assert ours == pytest.approx(paper_gflops, rel=0.02), name


def test_cli_writes_json(tmp_path, capsys):
    out = tmp_path / "flops.json"
    flops.main(["--model", "kswin_t", "--attention", "krause", "--no_compile", "--json", str(out)])
    (row,) = json.loads(out.read_text())
    assert row["params"] == paper.result("cifar10", "kswin_t").params
    assert row["analytic"]["total"] == sum(v for k, v in row["analytic"].items() if k != "total")
    assert "kswin_t" in capsys.readouterr().out
