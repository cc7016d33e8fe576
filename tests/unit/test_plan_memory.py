"""Memory planning (issue 24): the fake-tensor tracker against closed forms, CUDA's autocast policy, the
estimate against the H200 measurements, the pre-flight refusal with fixes, ``bidpm plan``, and every shipped
GPU config against the cards of the cluster's node types."""

from __future__ import annotations

import json
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest
import torch
import yaml
from torch._subclasses.fake_tensor import FakeTensorMode

from bidpm.config import ConfigError, load_config
from bidpm.plan.gpus import instance_gpu, smallest_accelerator_gb, usable_gib
from bidpm.plan.memory import GIB, estimate_step_memory
from bidpm.plan.preflight import _key, check_plan, estimate, job_cases, make_plan
from bidpm.plan.trace import LiveBytes, cuda_autocast_policy
from bidpm.study.memory import study_cases
from bidpm.timegrid import uniform_grid

ROOT = Path(__file__).resolve().parents[2]
TINY = ["data.image_size=[32,32]", "model.base_channels=8", "model.channel_mults=[1,2]", "model.num_res_blocks=1",
        "model.attention_levels=[]", "model.groups=4", "method.paired_distance=l2", "train.batch_size=4",
        "train.num_workers=1", "train.use_gpu=true", "train.precision=bf16"]


def test_live_bytes_follows_allocations_and_frees_in_closed_form():
    with FakeTensorMode():
        live = LiveBytes()
        with live:
            a = torch.empty(1000)                  # 4000 bytes
            b = a * 2                              # + 4000 -> 8000
            v = b[:10]                             # a view: no new storage
            del a                                  # 4000
            c = torch.empty(500, dtype=torch.bfloat16)  # + 1000 -> 5000
            assert live.current == 5000
            del b, v, c
        assert (live.peak, live.current) == (8000, 0)


def test_cuda_policy_runs_group_norm_and_pow_in_float32_and_is_removed_after():
    x = torch.randn(2, 4, 3, 3).bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.nn.functional.group_norm(x, 2).dtype == torch.bfloat16      # CPU's own policy
        with cuda_autocast_policy():
            y = torch.nn.functional.group_norm(x, 2)
            assert y.dtype == torch.float32 and (x ** 2).dtype == torch.float32   # CUDA's float32 list
            assert torch.mm(x.flatten(1).float(), x.flatten(1).float().T).dtype == torch.bfloat16   # still low
        assert torch.nn.functional.group_norm(x, 2).dtype == torch.bfloat16
    y.sum().backward()
    assert x.grad is not None and x.grad.dtype == torch.bfloat16


# One H200, torch.cuda.max_memory_allocated over the training steps (configs/brats_t1t2.yaml UNet, 192 px,
# batch 16, fully paired, L2 paired distance, Adam, no EMA, eager, bf16): the figures, GiB.
H200 = {("rf", 1): 18.4, ("bidpm", 1): 35.4, ("bidpm", 2): 69.3, ("bidpm", 4): 137.1}


@pytest.mark.parametrize("method,n", list(H200))
def test_estimate_is_within_20_percent_of_the_h200_peaks(method, n):
    cfg = load_config(str(ROOT / "configs/brats_t1t2.yaml"), [
        f"method.name={method}", f"method.time_grid={uniform_grid(n)}", "method.step_weights=null",
        "method.paired_distance=l2", "train.checkpoint_unroll=false", "train.num_workers=1"])
    got = estimate_step_memory(cfg).peak_gib
    err = (got - H200[method, n]) / H200[method, n]
    print(f"{method} N={n}: estimated {got:.2f} GiB, measured {H200[method, n]} GiB, error {100 * err:+.1f}%")
    assert abs(err) <= 0.20


def test_checkpointing_and_smaller_batches_lower_the_estimate_and_fp32_raises_it():
    base = load_config(None, TINY + [f"method.time_grid={uniform_grid(4)}", "method.step_weights=null"])
    plain = estimate_step_memory(base).traced
    over = lambda *o: estimate_step_memory(load_config(None, TINY + [f"method.time_grid={uniform_grid(4)}",  # noqa: E731
                                                                     "method.step_weights=null", *o])).traced
    assert over("train.checkpoint_unroll=true") < 0.6 * plain
    assert over("train.batch_size=2") < 0.7 * plain
    assert over("train.precision=fp32") > plain


def _limit_gb_for(gib: float) -> float:
    """The card (vendor GB) whose usable share is ``gib``."""
    return gib / usable_gib(1.0)


def test_preflight_refuses_with_fixes_that_fit_and_passes_cpu_runs():
    cfg = load_config(None, TINY + [f"method.time_grid={uniform_grid(4)}", "method.step_weights=null",
                                    "tune.space.n_steps=[1,4]"])
    plain = estimate(cfg).peak_gib
    ckpt = estimate(load_config(None, TINY + [f"method.time_grid={uniform_grid(4)}", "method.step_weights=null",
                                              "train.checkpoint_unroll=true"])).peak_gib
    gb = _limit_gb_for((plain + ckpt) / 2)          # fits only checkpointed
    with pytest.raises(ConfigError, match=r"do not fit the GPU.*train.gpu_memory_gb.*Fix.*train.checkpoint_unroll=true"):
        check_plan(cfg, "tune_steps", gb, "train.gpu_memory_gb")
    assert check_plan(load_config(None, TINY + ["train.use_gpu=false"]), "tune_steps", gb, "x") is None
    plan = make_plan(cfg, "tune_steps", gb)
    assert [c.label for c in plan.cases] == ["config as given", "search: N=1", "search: N=4"]
    assert [c.fits for c in plan.cases] == [False, True, False] and not plan.fits
    fixed = load_config(None, TINY + [f"method.time_grid={uniform_grid(4)}", "method.step_weights=null",
                                      "tune.space.n_steps=[1,4]", "train.checkpoint_unroll=true"])
    assert check_plan(fixed, "tune_steps", gb, "train.gpu_memory_gb").fits


def test_plan_command_writes_json_and_exits_2_when_it_does_not_fit(tmp_path, capsys):
    from bidpm.commands.plan import main

    args = ["--config", str(ROOT / "configs/quickstart.yaml"), *TINY, "tune.space.n_steps=[1,2]"]
    assert main([*args, "--gpu-memory-gb", "0.001", "--json", str(tmp_path / "p.json")]) == 2
    out = json.loads((tmp_path / "p.json").read_text())
    assert out["fits"] is False and out["peak_memory_gib"] > 0 and [c["case"] for c in out["cases"]][1:] == [
        "search: N=1", "search: N=2"]
    assert "fits" in capsys.readouterr().out
    assert main([*args, "--gpu-memory-gb", "80"]) == 0


def test_gpu_tables():
    assert instance_gpu("g5.2xlarge") == ("A10G", 24.0) and instance_gpu("g2-standard-8") == ("L4", 24.0)
    assert instance_gpu("m5.2xlarge") is None
    assert smallest_accelerator_gb(["CPU", "accelerator_type:H100", "accelerator_type:L4"]) == ("L4", 24.0)
    assert abs(usable_gib(24) - 24e9 / GIB * 0.9) < 1e-9


def _cluster_cards() -> dict[str, float]:
    """GPU node type -> card GB, from the instance types the cluster launcher configs name."""
    cards = {}
    for f in ("cluster/aws.yaml", "cluster/gcp.yaml"):
        for name, nt in yaml.safe_load((ROOT / f).read_text())["available_node_types"].items():
            if nt.get("resources", {}).get("GPU"):
                inst = nt["node_config"].get("InstanceType") or nt["node_config"].get("machineType")
                found = instance_gpu(inst)
                assert found, f"{f} {name}: GPU instance type {inst} unknown to bidpm.plan.gpus"
                cards[f"{f}:{name} ({inst})"] = found[1]
    return cards


def test_every_shipped_gpu_config_fits_the_cluster_node_types():
    cards = _cluster_cards()
    assert len(cards) == 2
    smallest = min(cards.values())
    cases = []
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        cfg = load_config(str(path))
        if not cfg.train.use_gpu:
            continue
        assert cfg.train.gpu_memory_gb == smallest, f"{path.name}: train.gpu_memory_gb should name the cluster's card"
        found = study_cases(cfg) if cfg.study.methods else job_cases(cfg, "tune_steps", largest_n_only=True)
        if "ablate" in path.name:
            found += job_cases(load_config(str(path), ["data.pairing_ratio=0.1"]), "train")
        cases += [(path.name, case) for case in found]
    # 16 distinct traces (~50 CPU s of fake-tensor dispatch, one core each): two processes share them
    distinct = {_key(case.cfg): case.cfg for _, case in cases}
    with ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn")) as pool:
        peaks = dict(zip(distinct, (m.peak_gib for m in pool.map(estimate, distinct.values()))))
    for name, case in cases:
        peak = peaks[_key(case.cfg)]
        assert peak <= usable_gib(smallest), f"{name} {case.label}: {peak:.1f} GiB > {usable_gib(smallest):.1f}"
    assert len(cases) >= 7


def test_the_jobs_preflight_uses_train_gpu_memory_gb_and_says_what_it_checked():
    from bidpm.raycluster.resources import check_gpu_memory

    with pytest.raises(ConfigError, match=r"train: 1 of 1 cases do not fit .*0.001 GB from train.gpu_memory_gb"):
        check_gpu_memory(load_config(None, TINY + ["train.gpu_memory_gb=0.001"]), "train")
    said: list[str] = []
    check_gpu_memory(load_config(None, TINY + ["train.gpu_memory_gb=80"]), "train", print_fn=said.append)
    assert len(said) == 1 and "1 cases fit 80 GB (train.gpu_memory_gb)" in said[0]
    check_gpu_memory(load_config(None, TINY + ["train.use_gpu=false", "train.gpu_memory_gb=0.001"]), "train", said.append)
    assert len(said) == 1                                 # CPU runs: nothing to check
