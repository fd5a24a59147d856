import numpy as np
import pytest
import torch

from msifusion.losses import edge_map, edge_perceptual_loss, luminance_t


def _image(seed: int = 0) -> torch.Tensor:
    return torch.rand(1, 1, 16, 20, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kernel", ["laplacian", "sobel"])
def test_edge_loss_zero_for_equal_edges(kernel):
    image = _image()
    assert edge_perceptual_loss(image, edge_map(image, kernel), kernel).item() == pytest.approx(0.0, abs=1e-10)
    # An added constant leaves edges unchanged, so the loss stays zero.
    assert edge_perceptual_loss(image + 3.0, edge_map(image, kernel), kernel).item() == pytest.approx(0.0, abs=1e-8)


@pytest.mark.parametrize("kernel", ["laplacian", "sobel"])
def test_edge_loss_positive_for_different_edges(kernel):
    assert edge_perceptual_loss(_image(0), edge_map(_image(1), kernel), kernel).item() > 1e-3


def test_laplacian_known_answer_and_flat_border():
    image = torch.zeros(1, 1, 5, 5)
    image[0, 0, 2, 2] = 1.0
    edges = edge_map(image, "laplacian")[0, 0]
    assert edges[2, 2].item() == -4.0 and edges[1, 2].item() == 1.0 and edges[0, 0].item() == 0.0
    assert edge_map(torch.ones(1, 1, 6, 6), "laplacian").abs().max().item() == 0.0  # no border edges


def test_sobel_known_answer_across_both_axes():
    step = torch.zeros(1, 1, 6, 6)
    step[..., 3:] = 1.0  # a vertical edge between columns 2 and 3
    for image in (step, step.transpose(-1, -2)):  # and the same edge turned horizontal
        edges = edge_map(image, "sobel")[0, 0]
        across = edges[:, 2:4] if image is step else edges[2:4, :].T
        np.testing.assert_allclose(across.numpy(), 4.0, rtol=1e-6)  # (1 + 2 + 1) · the step
        assert edges.sum().item() == pytest.approx(across.sum().item())  # nothing away from the edge
    dot = torch.zeros(1, 1, 5, 5)
    dot[0, 0, 2, 2] = 1.0
    edges = edge_map(dot, "sobel")[0, 0]
    assert edges[2, 1].item() == pytest.approx(2.0) and edges[1, 1].item() == pytest.approx(2**0.5)


def test_luminance_weights():
    rgb = torch.eye(3).view(3, 3, 1, 1)  # pure red, green and blue
    np.testing.assert_allclose(luminance_t(rgb).flatten().numpy(), [0.299, 0.587, 0.114], rtol=1e-6)
