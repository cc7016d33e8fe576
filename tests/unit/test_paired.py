"""Paired distances: L2 / L1 / pseudo-Huber against numpy; LPIPS random-backbone check; offline weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bidpm.config import MethodConfig
from bidpm.losses import LPIPSDistance, LPIPSWeightsUnavailable, backbone_weights_file, build_paired_distance


def _pair(shape=(3, 1, 8, 6), seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(-1, 1, size=shape), rng.uniform(-1, 1, size=shape)


@pytest.mark.parametrize("name", ["l2", "l1", "pseudo_huber"])
def test_pixel_distances_match_numpy(name):
    a, b = _pair()
    c = 0.03
    diff = (a - b).reshape(len(a), -1)
    ref = {
        "l2": np.mean(diff**2, axis=1),
        "l1": np.mean(np.abs(diff), axis=1),
        "pseudo_huber": np.sqrt(np.mean(diff**2, axis=1) + c**2) - c,
    }[name]
    d = build_paired_distance(MethodConfig(paired_distance=name, pseudo_huber_c=c))
    got = d(torch.from_numpy(a), torch.from_numpy(b))
    assert got.shape == (3,)
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-12)
    # also for (B, D) vectors (toy data), and zero on identical inputs
    v = torch.from_numpy(a.reshape(3, -1))
    assert torch.equal(d(v, v), torch.zeros(3, dtype=v.dtype))


def test_pseudo_huber_limits():
    c = 0.5
    d = build_paired_distance(MethodConfig(paired_distance="pseudo_huber", pseudo_huber_c=c))
    a = torch.zeros(1, 4, dtype=torch.float64)
    small, big = torch.full((1, 4), 1e-3, dtype=torch.float64), torch.full((1, 4), 1e3, dtype=torch.float64)
    assert float(d(a, small)) == pytest.approx(1e-6 / (2 * c), rel=1e-5)  # ~ mean sq / (2c)
    assert float(d(a, big)) == pytest.approx(1e3 - c, rel=1e-6)           # ~ RMS error - c


def test_lpips_random_backbone_check():
    """Random-backbone check (pretrained=True linear layers, pnet_rand=True trunk): NOT a perceptual metric,
    only the wiring: (B,) output, 0 on identical inputs, > 0 otherwise, gradients to inputs, frozen."""
    torch.manual_seed(0)
    d = build_paired_distance(MethodConfig(paired_distance="lpips", lpips_net="vgg", lpips_random_backbone=True))
    assert isinstance(d, LPIPSDistance)
    a = torch.rand(2, 1, 32, 32) * 2 - 1
    b = (torch.rand(2, 1, 32, 32) * 2 - 1).requires_grad_(True)
    same = d(a, a.clone())
    assert same.shape == (2,) and torch.equal(same, torch.zeros(2))
    out = d(a, b)
    assert out.shape == (2,) and (out > 0).all()
    out.sum().backward()
    assert b.grad is not None and torch.isfinite(b.grad).all() and b.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in d.parameters())
    d.train()  # a parent's .train() must not switch on lpips' dropout
    assert not d.lpips.training and not any(m.training for m in d.modules())
    torch.testing.assert_close(d(a, b), out.detach())


def _fake_alexnet_state(path, seed=0):
    """A torchvision-format AlexNet state_dict with random values (keys features.<i>.*, classifier.*)."""
    from torchvision.models import alexnet

    torch.manual_seed(seed)
    net = alexnet(weights=None)
    state = {k: v for k, v in net.state_dict().items() if k.startswith("features.")}
    state["classifier.1.weight"] = torch.zeros(1)  # extra keys (the real file has the classifier) are ignored
    torch.save(state, path)
    return state


def _no_network(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[:1]}")

    import torchvision.models._api as tv_api
    import urllib.request

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fail)
    monkeypatch.setattr(torch.hub, "download_url_to_file", fail)
    monkeypatch.setattr(tv_api, "load_state_dict_from_url", fail, raising=False)
    monkeypatch.setattr(urllib.request, "urlopen", fail)


def _empty_torch_home(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # forget any torch.hub.set_dir()


def test_lpips_missing_weights_fails_clearly_without_network(monkeypatch, tmp_path):
    _no_network(monkeypatch)
    _empty_torch_home(monkeypatch, tmp_path)
    with pytest.raises(LPIPSWeightsUnavailable) as info:
        build_paired_distance(MethodConfig(paired_distance="lpips", lpips_net="vgg"))
    msg = str(info.value)
    assert "vgg16-397923af.pth" in msg
    assert str(tmp_path / "torch_home" / "hub" / "checkpoints") in msg
    assert "TORCH_HOME/hub/checkpoints" in msg
    assert "method.lpips_backbone_weights" in msg
    assert "method.paired_distance=l2|l1|pseudo_huber" in msg

    missing = tmp_path / "nowhere.pth"
    with pytest.raises(LPIPSWeightsUnavailable, match="nowhere.pth"):
        build_paired_distance(MethodConfig(paired_distance="lpips", lpips_backbone_weights=str(missing)))


def test_lpips_loads_backbone_from_configured_path(monkeypatch, tmp_path):
    _no_network(monkeypatch)
    path = tmp_path / "alex.pth"
    state = _fake_alexnet_state(path)
    d = build_paired_distance(MethodConfig(paired_distance="lpips", lpips_net="alex", lpips_backbone_weights=str(path)))
    got = d.lpips.net.state_dict()
    for key, value in got.items():  # slice<k>.<i>.weight <- features.<i>.weight
        assert torch.equal(value, state["features." + key.partition(".")[2]]), key
    a, b = torch.rand(1, 1, 32, 32) * 2 - 1, torch.rand(1, 1, 32, 32) * 2 - 1
    assert float(d(a, b)) > 0

    bad = tmp_path / "bad.pth"
    torch.save({"features.0.weight": torch.zeros(3)}, bad)
    with pytest.raises(LPIPSWeightsUnavailable, match="bad.pth"):
        build_paired_distance(MethodConfig(paired_distance="lpips", lpips_net="alex", lpips_backbone_weights=str(bad)))


def test_lpips_loads_backbone_from_hub_cache(monkeypatch, tmp_path):
    _no_network(monkeypatch)
    _empty_torch_home(monkeypatch, tmp_path)
    ckpt = tmp_path / "torch_home" / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    assert backbone_weights_file("alex") == "alexnet-owt-7be5be79.pth"
    state = _fake_alexnet_state(ckpt / "alexnet-owt-7be5be79.pth", seed=1)
    d = build_paired_distance(MethodConfig(paired_distance="lpips", lpips_net="alex"))
    assert torch.equal(d.lpips.net.slice1[0].weight, state["features.0.weight"])
