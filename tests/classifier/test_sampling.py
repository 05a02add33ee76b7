"""Epoch sampling: shards per rank, class balance, and DA-Fusion's swap of real images for their synthetic
variants at the configured rate."""

import numpy as np
import pytest

from leafgen.classifier.sampling import NO_SOURCE, EpochSampler, SyntheticRows, SyntheticUse

MD = 1


def test_sampler_shards_are_disjoint_and_equal_length():
    labels = np.array([0] * 7 + [1] * 2 + [2] * 5 + [3] * 6)
    shards = [EpochSampler(labels, seed=0, balanced=False, rank=r, world_size=3) for r in range(3)]
    parts = [list(s) for s in shards]
    assert len({len(p) for p in parts}) == 1 and len(parts[0]) == len(shards[0])
    assert set().union(*map(set, parts)) == set(range(len(labels)))
    shards[0].set_epoch(1)
    assert list(shards[0]) != parts[0]


def test_balanced_sampler_evens_out_classes():
    labels = np.array([0] * 500 + [1] * 20 + [2] * 300 + [3] * 180)
    drawn = np.concatenate([list(EpochSampler(labels, 0, True, r, 2)) for r in range(2)])
    share = np.bincount(labels[drawn], minlength=4) / len(drawn)
    assert np.all(np.abs(share - 0.25) < 0.05), share


def _mixed_set(real_md=40, others=200, per_source=2, txt2img=5):
    """Real images (40 of the target class), two img2img variants of each real target image, and a few
    txt2img ones (variants of every real target image)."""
    labels = [0] * others + [MD] * real_md
    sources = [NO_SOURCE] * len(labels)
    md_index = list(range(others, others + real_md))
    for i in md_index:
        labels += [MD] * per_source
        sources += [i] * per_source
    labels += [MD] * txt2img
    sources += [NO_SOURCE] * txt2img
    synthetic = np.arange(len(labels)) >= others + real_md
    return np.asarray(labels), SyntheticRows(synthetic, np.asarray(sources)), md_index


@pytest.mark.parametrize("p", [0.0, 0.3, 0.5, 1.0])
def test_swap_draws_variants_at_the_configured_rate_and_only_in_place_of_their_source(p):
    labels, rows, md_index = _mixed_set()
    sampler = EpochSampler(labels, 0, False, rows=rows, use=SyntheticUse("swap", p))
    assert len(sampler) == (~rows.synthetic).sum()  # an epoch is one pass over the real images
    swapped = draws = 0
    for epoch in range(40):
        sampler.set_epoch(epoch)
        order = sampler.epoch_order()
        real_order = EpochSampler(labels, 0, False, rows=rows, use=SyntheticUse("swap", 0.0))
        real_order.set_epoch(epoch)
        # Each position holds the real image drawn there or one of that image's variants.
        for drawn, real in zip(order, real_order.epoch_order()):
            assert not rows.synthetic[real]
            if rows.synthetic[drawn]:
                assert labels[real] == MD and rows.sources[drawn] in (real, NO_SOURCE)
        md_positions = np.isin(real_order.epoch_order(), md_index)
        swapped += rows.synthetic[order[md_positions]].sum()
        draws += md_positions.sum()
        assert not rows.synthetic[order[~md_positions]].any()  # other classes are never swapped
    assert swapped / draws == pytest.approx(p, abs=0.03)


def test_append_mode_draws_every_synthetic_image_as_one_more_sample():
    labels, rows, _ = _mixed_set()
    sampler = EpochSampler(labels, 0, False, rows=rows, use=SyntheticUse("append"))
    assert len(sampler) == len(labels)
    assert sorted(sampler) == list(range(len(labels)))


def test_swap_with_balancing_draws_the_classes_equally_from_the_real_images():
    labels, rows, _ = _mixed_set()
    order = EpochSampler(labels, 3, True, rows=rows, use=SyntheticUse("swap", 0.5)).epoch_order()
    share = np.bincount(labels[order], minlength=4)[[0, MD]] / len(order)
    assert share == pytest.approx([0.5, 0.5], abs=0.07)


def test_every_rank_swaps_the_same_way():
    labels, rows, _ = _mixed_set()
    use = SyntheticUse("swap", 0.5)
    shards = [list(EpochSampler(labels, 7, False, r, 2, rows, use)) for r in range(2)]
    order = EpochSampler(labels, 7, False, 0, 2, rows, use).epoch_order()  # what every rank derives
    assert shards[0] == order[0::2].tolist() and shards[1] == order[1::2].tolist()
    assert len(shards[0]) == len(shards[1]) == -(-(~rows.synthetic).sum() // 2)
