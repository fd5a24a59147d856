import torch

from msifusion.models.lcrn import LCRN


def test_lcrn_keeps_size_and_maps_3_to_1_channels():
    out = LCRN()(torch.rand(2, 3, 17, 23))
    assert out.shape == (2, 1, 17, 23)


def test_lcrn_parameter_count_and_layout():
    model = LCRN()
    # initial 3→64 (3×3); block 64→32: 3×3, 3×3, 1×1 skip; block 32→1: 3×3, 3×3, 1×1 skip
    expected = (3 * 64 * 9 + 64) + (64 * 32 * 9 + 32) + (32 * 32 * 9 + 32) + (64 * 32 + 32) \
        + (32 * 1 * 9 + 1) + (1 * 1 * 9 + 1) + (32 + 1)
    assert sum(p.numel() for p in model.parameters()) == expected == 31916
    assert model.block1.skip.kernel_size == (1, 1) and model.block2.skip.out_channels == 1


def test_residual_skip_carries_signal_when_convolutions_are_zero():
    model = LCRN()
    with torch.no_grad():
        for conv in (model.block2.conv1, model.block2.conv2):
            conv.weight.zero_()
            conv.bias.zero_()
    x = torch.rand(1, 3, 8, 8)
    expected = model.block2.skip(model.block1(model.initial(x)))
    torch.testing.assert_close(model(x), expected)
