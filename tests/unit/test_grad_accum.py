"""Gradient accumulation in the train loop: the stream's last micro-batch is flagged, and a partial
last group's gradient is the mean over its own micro-batches (closed form: plain autograd on the mean)."""

from __future__ import annotations

import torch

from bidpm.train.step import average_partial_group, flag_last


def test_flag_last_marks_only_the_final_item():
    assert list(flag_last(iter([1, 2, 3]))) == [(1, False), (2, False), (3, True)]
    assert list(flag_last(iter([7]))) == [(7, True)]
    assert list(flag_last(iter([]))) == []


def test_partial_group_gradient_is_the_mean_over_its_micro_batches():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(3))
    xs = [torch.randn(4, 3) for _ in range(2)]  # 2 leftover micro-batches of a group of 5
    grad_accum = 5
    for x in xs:  # the loop: each micro-batch loss scaled by 1/grad_accum, gradients summed
        ((x @ w) ** 2).mean().div(grad_accum).backward()
    average_partial_group([w], grad_accum, len(xs))
    ref = torch.autograd.grad(torch.stack([((x @ w) ** 2).mean() for x in xs]).mean(), w)[0]
    torch.testing.assert_close(w.grad, ref)
