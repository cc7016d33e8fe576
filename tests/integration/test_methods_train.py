"""Every method that no other end-to-end test trains - I-CFM, OT-CFM, VP-CFM, CycleGAN, shortcut, MeanFlow -
trained for real: Ray Train, two workers (gloo DDP) on CPU, two epochs of a few steps on phantom shards
(Bi-DPM and RF are test_train.py's). Each run: the loss finite and falling, both epochs reported and
checkpointed; the last checkpoint holds what a resume needs (weights, EMA, the optimizer over every
parameter - CycleGAN's discriminators included - restored into fresh objects, then one more step); and it
scores through the one evaluation (``TrainedModel`` + ``evaluate_split``) at 1 and 2 Euler steps.

One ``fit()`` per method (worker start-up is most of each ~25 s); the resume of a killed fit is the same
code for every method and is tested once, in test_train.py. VP-CFM's fit also runs ``train.grad_accum``
that does not divide an epoch's micro-batches: the leftover ones make one last, smaller optimizer step
(an earlier version silently dropped them) - the train loop's, the same for every method."""

from __future__ import annotations

import math

import pytest
import torch

pytestmark = [pytest.mark.integration, pytest.mark.slow]

STEPS, EPOCHS = 4, 2
BASE = [
    "data.layout=phantom", "data.image_size=[16,16]", "data.num_slices=8", "data.phantom.num_subjects=12",
    "data.phantom.shape=[24,24,12]", "data.split.val_fraction=0.25", "data.split.test_fraction=0.125",
    "model.base_channels=8", "model.channel_mults=[1,2]", "model.groups=4", "model.attention_levels=[]",
    "method.paired_distance=l2", "data.pairing_ratio=1.0",
    "train.num_workers=2", "train.cpus_per_worker=0.5", "train.torch_threads=1", f"train.epochs={EPOCHS}",
    "train.batch_size=8", "train.lr=3e-3", f"train.max_steps_per_epoch={STEPS}", f"train.checkpoint_keep={EPOCHS}",
    "train.val_batches=1", "train.sample_grid_rows=1",
]
# whole epochs (no step cap) of batch-4 micro-batches, 3 per optimizer step: 7 or 8 per worker leave 1 or 2 over
ACCUM = {"vpcfm": 3}
METHODS = {"icfm": ["method.cfm_sigma=0.05"], "otcfm": ["method.cfm_sigma=0.05"],
           "vpcfm": [f"train.grad_accum={ACCUM['vpcfm']}", "train.batch_size=4", "train.max_steps_per_epoch=null"],
           "cyclegan": ["model.kind=cyclegan"], "shortcut": [], "meanflow": []}
FALLING = {"cyclegan": "train/loss/cycle",      # its total mixes adversarial terms that need not fall in 8 steps
           "meanflow": "train/loss/mse"}        # its total is adaptively weighted (near 1 while errors >> 1e-3)


@pytest.fixture(scope="module")
def make_cfg(ray_session, tmp_path_factory):
    from bidpm.config import load_config
    from bidpm.data.shards import prepare_shards

    out = tmp_path_factory.mktemp("methods")
    prepare_shards(load_config(None, BASE + [f"output_dir={out}"]))
    return lambda *extra: load_config(None, BASE + [f"output_dir={out}", *extra])


@pytest.mark.parametrize("name", list(METHODS))
def test_method_trains_with_ddp_checkpoints_a_resumable_state_and_scores(name, make_cfg):
    from bidpm.evaluation import GridSpec, evaluate_split
    from bidpm.method import Batch, build_method
    from bidpm.model import EMA, build_velocity_field, runtime
    from bidpm.train import run_training
    from bidpm.train.checkpoint import load_checkpoint, restore_state
    from bidpm.trained import TrainedModel

    cfg = make_cfg(f"method.name={name}", f"train.run_name=m-{name}", *METHODS[name])
    result = run_training(cfg, resume=False)
    table = result.metrics_dataframe.sort_values("epoch").reset_index(drop=True)
    steps = int(table["train/steps"][0])
    assert table["epoch"].tolist() == [1, 2] and table["step"].tolist() == [steps, 2 * steps] and steps >= 3
    if name in ACCUM:            # every micro-batch of the epoch trained: the leftover ones in one last step
        from bidpm.data.readers import read_split

        micro = read_split(cfg, "train").count() // cfg.train.num_workers // cfg.train.batch_size  # equal split, full batches
        assert micro % ACCUM[name], f"fixture change: {micro} micro-batches divide by {ACCUM[name]}; pick another grad_accum"
        assert steps == math.ceil(micro / ACCUM[name]), (steps, micro)
    key = FALLING.get(name, "train/loss")
    losses = table[key].tolist()
    assert all(math.isfinite(v) for v in table["train/loss"]) and losses[1] < losses[0], (key, losses)
    assert -1.0 <= result.metrics["val/ssim_mean"] <= 1.0          # SSIM's range: 8 steps need not beat 0

    # the checkpoint holds a resume: weights, EMA, the optimizer over every parameter, into fresh objects
    state = load_checkpoint(result.checkpoint.path)
    model = build_velocity_field(cfg.model, tuple(cfg.data.image_size))
    ema = EMA(build_velocity_field(cfg.model, tuple(cfg.data.image_size)), decay=cfg.train.ema_decay)
    opt_state, step, epoch = restore_state(state, model, ema, runtime.grad_scaler(cfg.train.precision, "cpu"))
    assert (step, epoch) == (2 * steps, EPOCHS)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    optimizer.load_state_dict(opt_state)
    n_params = sum(1 for _ in model.parameters())
    assert len(opt_state["state"]) == n_params                   # every parameter has moments (discriminators too)
    if name == "cyclegan":
        assert any(k.startswith(("d_s.", "d_t.")) for k in state["model"]), "the discriminators are in the checkpoint"
    torch.manual_seed(0)
    x0, x1 = torch.randn(4, 1, 16, 16), torch.randn(4, 1, 16, 16)
    out = build_method(cfg.method).loss(model, Batch.fully_paired(x0, x1))
    optimizer.zero_grad()
    out.total.backward()
    optimizer.step()
    assert math.isfinite(out.total.item())

    # ... and scores through the one evaluation, on the test split, at 1 and 2 Euler steps
    trained = TrainedModel.from_checkpoint(result.checkpoint.path)
    grids = [GridSpec("N=1", (0.0, 1.0), True)] + ([] if name == "cyclegan" else [GridSpec("N=2", (0.0, 0.5, 1.0), False)])
    ev = evaluate_split(trained, cfg, "test", grids)
    for g in ev.grids:
        s = g.summary("test")
        assert -1.0 <= s["test/ssim_mean"] <= 1.0 and math.isfinite(s["test/psnr_mean"]), (g.spec.label, s)
