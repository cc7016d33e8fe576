"""Velocity fields: UNet shapes at several sizes, the size rule, time broadcasting, gradient reach; MLP."""

from __future__ import annotations

import pytest
import torch

from bidpm.config import ModelConfig
from bidpm.model import MLPVelocity, UNet, build_velocity_field


def tiny_cfg(**kw) -> ModelConfig:
    base = dict(kind="unet", base_channels=8, channel_mults=[1, 2, 2], num_res_blocks=1, groups=4, num_heads=2)
    base.update(kw)
    return ModelConfig(**base)


@pytest.mark.parametrize("size", [(32, 32), (64, 48)])
def test_unet_output_shape(size):
    torch.manual_seed(0)
    net = build_velocity_field(tiny_cfg(attention_levels=[1, 2]), image_size=size)
    x = torch.randn(3, 1, *size)
    assert net(x, torch.rand(3)).shape == x.shape


def test_unet_192_paper_size():
    torch.manual_seed(0)
    net = build_velocity_field(tiny_cfg(base_channels=4, groups=2, channel_mults=[1, 1, 2, 2]), image_size=(192, 192))
    x = torch.randn(1, 1, 192, 192)
    with torch.no_grad():
        assert net(x, 0.5).shape == x.shape


def test_unet_size_not_divisible_is_clear_error():
    cfg = tiny_cfg()  # depth 2 -> multiples of 4
    with pytest.raises(ValueError, match=r"30x32.*2\^depth = 4"):
        build_velocity_field(cfg, image_size=(30, 32))
    net = build_velocity_field(cfg)
    with pytest.raises(ValueError, match=r"30x32.*divisible by 4"):
        net(torch.randn(1, 1, 30, 32), 0.0)


def test_unet_starts_at_zero_velocity():
    """Zero-initialised output conv: u_theta = 0 at init, so both Bi-DPM chains start as the identity."""
    net = build_velocity_field(tiny_cfg())
    out = net(torch.randn(2, 1, 16, 16), torch.rand(2))
    assert torch.count_nonzero(out) == 0


def test_unet_time_scalar_equals_vector():
    torch.manual_seed(0)
    net = build_velocity_field(tiny_cfg())
    torch.nn.init.normal_(net.conv_out.weight, std=0.1)
    x = torch.randn(3, 1, 16, 16)
    ref = net(x, torch.full((3,), 0.25))
    for t in (0.25, torch.tensor(0.25), torch.tensor([0.25]), torch.full((3, 1, 1, 1), 0.25)):
        torch.testing.assert_close(net(x, t), ref, rtol=0, atol=0)
    assert not torch.allclose(net(x, 0.75), ref), "the output must depend on t"
    with pytest.raises(ValueError, match="one time per sample"):
        net(x, torch.rand(2))


def test_unet_gradient_reaches_every_parameter():
    torch.manual_seed(0)
    net = build_velocity_field(tiny_cfg(attention_levels=[1, 2], num_res_blocks=2))
    # The zero output conv blocks gradients to earlier layers at step 0 by design; perturb it to test wiring.
    torch.nn.init.normal_(net.conv_out.weight, std=0.1)
    x = torch.randn(2, 1, 16, 16)
    net(x, torch.rand(2)).pow(2).sum().backward()
    dead = [n for n, p in net.named_parameters() if p.grad is None or torch.count_nonzero(p.grad) == 0]
    assert dead == []


def test_unet_rejects_bad_levels_and_groups():
    with pytest.raises(ValueError, match="attention_levels"):
        UNet(base_channels=8, channel_mults=(1, 2), groups=4, attention_levels=(2,))
    with pytest.raises(ValueError, match="groups"):
        UNet(base_channels=12, channel_mults=(1, 2), groups=8)
    with pytest.raises(ValueError, match="num_heads"):
        UNet(base_channels=8, channel_mults=(1, 2), groups=4, num_heads=3, attention_levels=(0,))


def test_mlp_shapes_and_time():
    torch.manual_seed(0)
    net = build_velocity_field(ModelConfig(kind="mlp", mlp_dim=2, mlp_hidden=16, mlp_layers=2))
    assert isinstance(net, MLPVelocity)
    assert sum(isinstance(m, torch.nn.Linear) for m in net.modules()) == 3  # 2 hidden + output
    x = torch.randn(5, 2)
    out = net(x, torch.rand(5))
    assert out.shape == (5, 2)
    torch.testing.assert_close(net(x, 0.3), net(x, torch.full((5,), 0.3)))
    assert not torch.allclose(net(x, 0.0), net(x, 1.0))
    with pytest.raises(ValueError, match="mlp_dim"):
        net(torch.randn(5, 3), 0.0)
