"""EnsembleLinear: long batches go through row chunks (the weight gradient as many short products)."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from distributed_o2o.algorithms.networks import ROW_CHUNKS, SPLIT_MIN_ROWS, EnsembleLinear


class BatchedProducts(TorchDispatchMode):
    """The batch sizes of the batched matrix products dispatched inside it."""

    def __init__(self):
        super().__init__()
        self.batches: list[int] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.bmm.default:
            self.batches.append(args[0].shape[0])
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("rows", [256, SPLIT_MIN_ROWS + ROW_CHUNKS * 31])
def test_ensemble_linear_matches_each_members_own_linear_layer_in_values_and_gradients(rows):
    torch.manual_seed(0)
    layer = EnsembleLinear(3, 14, 5).double()
    x = torch.randn(3, rows, 14, dtype=torch.float64, requires_grad=True)
    out = layer(x)
    reference = torch.stack([x[k] @ layer.weight[k] + layer.bias[k] for k in range(3)])
    upstream = torch.randn_like(out)
    grads = torch.autograd.grad(out, (x, layer.weight, layer.bias), upstream)
    reference_grads = torch.autograd.grad(reference, (x, layer.weight, layer.bias), upstream)
    torch.testing.assert_close(out, reference)
    for grad, expected in zip(grads, reference_grads):
        torch.testing.assert_close(grad, expected)


def test_a_long_batchs_weight_gradient_is_computed_over_row_chunks():
    layer = EnsembleLinear(2, 14, 256)
    long, short = torch.randn(2, SPLIT_MIN_ROWS, 14), torch.randn(2, 256, 14)
    for x, expected in ((long, 2 * ROW_CHUNKS), (short, 2)):
        with BatchedProducts() as products:
            layer(x).sum().backward()
        assert products.batches and set(products.batches) == {expected}
