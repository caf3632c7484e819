"""krause.paper: the paper's numbers are internally consistent and map to rows and models.

The checks are relations the paper's architecture fixes, computed here independently: a Krause
twin adds one log_sigma per layer (ViT: 12) or per head (Swin-T: 3*2 + 6*2 + 12*6 + 24*2 = 138;
KARM: heads x depth), RoPE adds no parameters, and CIFAR-100 differs from CIFAR-10 only in the
classifier (90 more classes x (width + 1)).
"""

from __future__ import annotations

import pytest

from krause import paper

WIDTH = {"t4": 192, "s4": 384, "b4": 768}


def test_short_form_and_lookup_agree_with_results():
    assert len({(r.dataset, r.row) for r in paper.RESULTS}) == len(paper.RESULTS)
    for r in paper.RESULTS:
        assert paper.PAPER[(r.dataset, r.row)] == (r.metric, r.value, r.params)
        assert paper.result(r.dataset, r.row) is r
        assert r.dataset in paper.DATASET_LABELS
    with pytest.raises(ValueError, match=r"no row 'vit_x'.*'kvit_t4'"):
        paper.result("cifar10", "vit_x")


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100", "imagenet2012"])
def test_krause_vit_twins_add_one_sigma_per_layer(dataset):
    rows = [r for r in paper.RESULTS if r.dataset == dataset and r.row.startswith("kvit")]
    assert rows
    for r in rows:
        twin = paper.result(dataset, r.row[1:].split("+")[0])
        assert r.params - twin.params == 12, r.row


def test_rope_and_ablation_rows_keep_the_parameter_count():
    for r in paper.RESULTS:
        if "+" in r.row and r.params is not None:
            assert r.params == paper.result(r.dataset, r.row.split("+")[0]).params, r.row


def test_cifar100_differs_only_in_the_classifier():
    for size, width in WIDTH.items():
        for prefix in ("vit_", "kvit_"):
            row = prefix + size
            c10, c100 = paper.result("cifar10", row), paper.result("cifar100", row)
            assert c100.params - c10.params == 90 * (width + 1), row


def test_swin_and_pixel_sigma_counts():
    assert paper.result("cifar10", "kswin_t").params - paper.result("cifar10", "swin_t").params == (
        3 * 2 + 6 * 2 + 12 * 6 + 24 * 2
    )
    for dataset, heads, depth in (("mnist", 8, 12), ("cifar10", 8, 16)):
        arm, larm = paper.result(dataset, "arm"), paper.result(dataset, "larm")
        karm = paper.result(dataset, "karm")
        assert arm.params == larm.params
        assert karm.params - arm.params == heads * depth
        assert karm.metric == arm.metric == paper.BPD
        assert all(r.images_per_s > 0 for r in (arm, larm, karm))


def test_every_vision_row_has_a_model_and_round_trips_through_row_name():
    for r in paper.RESULTS:
        if r.metric != paper.ACC:
            continue
        name, overrides = paper.model_of(r.row)
        attention = "krause" if name.startswith(("kvit", "kswin")) else "softmax"
        model = {"attention": attention, "k0": 2, "locality": True, **overrides}
        assert paper.row_name(name, model) == r.row
    with pytest.raises(ValueError, match=r"unknown tags \['wide'\]"):
        paper.model_of("kvit_s4+wide")


def test_flops_column_only_on_cifar10_and_imagenet_vits():
    rows = [r for r in paper.RESULTS if r.gflops is not None]
    assert {r.dataset for r in rows} == {"cifar10", "imagenet2012"}
    assert len(rows) == 18
    # The paper's Krause column is lower than its softmax twin's (its counter drops projections).
    for r in rows:
        if r.row.startswith("kvit"):
            assert r.gflops < paper.result(r.dataset, r.row[1:]).gflops


def test_notes_name_known_rows():
    for key in [*paper.FIRST_VERSION, *paper.CIFAR100_PAGE_SWAP]:
        assert key in paper.PAPER
    # The page swaps the S pair: its values are the consistent reading's, exchanged.
    swap = paper.CIFAR100_PAGE_SWAP
    assert swap[("cifar100", "kvit_s4")] == paper.result("cifar100", "vit_s4").value
    assert swap[("cifar100", "vit_s4")] == paper.result("cifar100", "kvit_s4").value


def test_describe_writes_every_row():
    for dataset in paper.DATASET_LABELS:
        lines = paper.describe(dataset).splitlines()
        rows = [r for r in paper.RESULTS if r.dataset == dataset]
        assert len(lines) == len(rows)
        for line, r in zip(lines, rows, strict=True):
            value = f"{r.value:.2f}" if r.metric == paper.ACC else f"{r.value:.4f}"
            assert line.startswith(f"{r.label}: {value} ")
            assert r.params is None or f"{r.params:,} parameters" in line
    first = paper.FIRST_VERSION[("imagenet2012", "vit_s16")]
    assert f"ViT-S-16: {paper.result('imagenet2012', 'vit_s16').value:.2f} top-1 %" in (
        paper.describe("imagenet2012")
    )
    assert f"first version {first:.2f}" in paper.describe("imagenet2012")
    with pytest.raises(ValueError, match="nothing on 'svhn'"):
        paper.describe("svhn")
