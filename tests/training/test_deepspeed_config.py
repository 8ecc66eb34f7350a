"""The stage plan and the generated DeepSpeed JSON: one typed config, every option checked."""

import math

import pytest

from training.config import TrainingConfig
from training.pretrain.deepspeed_config import deepspeed_config, per_stage, plan_stages, resolve_precision, trainer_clips


def _plan(cfg: TrainingConfig, stages=((1, 64 * 100), (2, 64 * 400), (3, 64 * 1000)), seq=64, world=2):
    return plan_stages(list(stages), seq, cfg, world)


def test_per_stage_values_repeat_the_last():
    assert [per_stage((32, 64, 128), i) for i in range(1, 6)] == [32, 64, 128, 128, 128]
    with pytest.raises(ValueError):
        per_stage((), 1)


def test_progressive_batch_sets_accumulation_and_sqrt_scaled_learning_rate():
    cfg = TrainingConfig(learning_rate=6e-4, global_batch=(32, 64, 128), micro_batch=8)
    plans = _plan(cfg)
    assert [p.global_batch for p in plans] == [32, 64, 128]
    assert [p.grad_accum for p in plans] == [2, 4, 8]  # 8 per rank x 2 ranks x accumulation
    assert [p.learning_rate for p in plans] == pytest.approx([6e-4 * math.sqrt(b / 256) for b in (32, 64, 128)])
    assert plans[2].learning_rate == pytest.approx(6e-4 / math.sqrt(2))


@pytest.mark.parametrize(
    ("overrides", "steps"),
    [
        ({}, [100 // 32, 400 // 64, 1000 // 128]),  # one pass over each stage's sequences
        ({"epochs_per_stage": 2.0}, [200 // 32, 800 // 64, 2000 // 128]),
        ({"max_steps_per_stage": 5}, [3, 5, 5]),
        ({"global_batch": (256,)}, [1, 1, 3]),  # a stage smaller than one batch still takes a step
    ],
)
def test_steps_per_stage_and_the_chained_step_offsets(overrides, steps):
    plans = _plan(TrainingConfig(micro_batch=8, **overrides))
    assert [p.steps for p in plans] == steps
    assert [p.first_step for p in plans] == [0, steps[0], steps[0] + steps[1]]
    assert [p.sequences for p in plans] == [100, 400, 1000]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"global_batch": (24,), "micro_batch": 8}, "not a multiple"),
    ],
)
def test_plan_rejects_inconsistent_batches(overrides, message):
    with pytest.raises(ValueError, match=message):
        _plan(TrainingConfig(**overrides))


def test_plan_rejects_a_stage_shorter_than_one_sequence():
    with pytest.raises(ValueError, match="do not fill one sequence"):
        _plan(TrainingConfig(micro_batch=8), stages=((1, 10),))


def test_frozen_layers_follow_the_schedule():
    plans = _plan(TrainingConfig(micro_batch=8, frozen_layers=((), (0,), (0, 1))))
    assert [p.frozen_layers for p in plans] == [(), (0,), (0, 1)]


@pytest.mark.parametrize(
    ("overrides", "cuda", "expected_zero", "expected_optimizer"),
    [
        ({"zero_stage": 0}, False, {"stage": 0}, {"torch_adam": True}),
        ({"zero_stage": 1}, True, {"stage": 1}, {"torch_adam": True, "fused": True}),
        ({"zero_stage": 2, "offload_optimizer": True}, False,
         {"stage": 2, "offload_optimizer": {"device": "cpu", "pin_memory": False}}, {}),
        ({"zero_stage": 3, "offload_optimizer": True, "offload_params": True}, True,
         {"stage": 3, "offload_optimizer": {"device": "cpu", "pin_memory": True},
          "offload_param": {"device": "cpu", "pin_memory": True}}, {}),
    ],
)
def test_zero_stages_and_offload(overrides, cuda, expected_zero, expected_optimizer):
    cfg = TrainingConfig(micro_batch=8, **overrides)
    plan = _plan(cfg)[1]
    ds = deepspeed_config(cfg, plan, total_steps=200, precision="bf16" if cuda else "fp32", cuda=cuda)
    assert ds["zero_optimization"] == expected_zero
    params = ds["optimizer"]["params"]
    assert ds["optimizer"]["type"] == "AdamW"
    assert {k: params[k] for k in ("torch_adam", "fused") if k in params} == expected_optimizer
    assert params["lr"] == pytest.approx(plan.learning_rate) and params["weight_decay"] == cfg.weight_decay
    assert params["betas"] == [0.9, 0.95]
    assert ds["train_batch_size"] == plan.global_batch == plan.micro_batch * 2 * ds["gradient_accumulation_steps"]
    assert ds["fp16"]["enabled"] is False


@pytest.mark.parametrize(
    ("overrides", "precision", "autocast", "ds_bf16", "trainer_clips_"),
    [
        # One GPU: torch.autocast over fp32 weights, the trainer clips with torch's foreach kernels.
        ({"zero_stage": 0}, "bf16", True, False, True),
        ({"zero_stage": 0}, "fp32", False, False, True),
        # DeepSpeed's bf16 and fp16 optimizers, and ZeRO's partitioned gradients, clip themselves.
        ({"zero_stage": 0, "autocast": False}, "bf16", False, True, False),
        ({"zero_stage": 0}, "fp16", False, False, False),
        ({"zero_stage": 1}, "bf16", True, False, False),
        ({"zero_stage": 2}, "fp32", False, False, False),
    ],
)
def test_mixed_precision_and_who_clips(overrides, precision, autocast, ds_bf16, trainer_clips_):
    cfg = TrainingConfig(micro_batch=8, grad_clip=0.5, **overrides)
    ds = deepspeed_config(cfg, _plan(cfg)[0], 100, precision, cuda=precision != "fp32")
    assert ds["torch_autocast"]["enabled"] is autocast and ds["bf16"]["enabled"] is ds_bf16
    assert ds["fp16"]["enabled"] is (precision == "fp16")
    assert trainer_clips(cfg, precision) is trainer_clips_
    # Never both, never neither: DeepSpeed clips exactly when the trainer does not.
    assert ds["gradient_clipping"] == (0.0 if trainer_clips_ else 0.5)


def test_one_schedule_warms_up_peaks_and_decays_to_the_floor_over_all_stages():
    """Each stage's scheduler section, as DeepSpeed builds it and train.py steps it (the rate of global
    step g is the scheduler's at iteration g), gives each global step of the curriculum a share of its
    stage's peak rate: rising over the first 5% of all steps, reaching the peak, then never rising
    again down to `min_lr_ratio` at the last step of the last stage."""
    import torch
    from deepspeed.runtime import lr_schedules

    cfg = TrainingConfig(micro_batch=8, min_lr_ratio=0.1)
    plans = _plan(cfg, stages=((1, 64 * 800), (2, 64 * 3200), (3, 64 * 8000)))
    total = sum(p.steps for p in plans)
    ratios = []
    for plan in plans:
        ds = deepspeed_config(cfg, plan, total_steps=total, precision="fp32", cuda=False)
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=ds["optimizer"]["params"]["lr"])
        scheduler = getattr(lr_schedules, ds["scheduler"]["type"])(optimizer, **ds["scheduler"]["params"])
        for step in range(plan.first_step + 1, plan.first_step + plan.steps + 1):
            scheduler.step(step)
            ratios.append(scheduler.get_lr()[0] / plan.learning_rate)
    assert len(ratios) == total > 100
    top = max(range(total), key=ratios.__getitem__)
    assert top + 1 == round(0.05 * total)  # the warmup ends after 5% of all steps
    # A linear rise in equal steps from 1/warmup at step 1 (not from zero: step 1 learns), then the peak.
    rises = [b - a for a, b in zip(ratios[:top], ratios[1 : top + 1])]
    assert ratios[0] == pytest.approx(1 / (top + 1)) and rises[:-1] == pytest.approx([ratios[0]] * (top - 1))
    assert min(rises) > 0 and ratios[top] == pytest.approx(1.0, abs=1e-3) and ratios[top] <= 1.0
    # The decay crosses the stage boundaries without a jump back up.
    assert all(a >= b for a, b in zip(ratios[top:], ratios[top + 1 :]))
    assert ratios[-1] == pytest.approx(cfg.min_lr_ratio) and min(ratios[top:]) == ratios[-1]


def test_fp16_uses_dynamic_loss_scaling():
    cfg = TrainingConfig(micro_batch=8, precision="fp16")
    ds = deepspeed_config(cfg, _plan(cfg)[0], 100, resolve_precision(cfg, cuda=True), cuda=True)
    assert ds["fp16"]["enabled"] is True and ds["fp16"]["loss_scale"] == 0 and ds["bf16"]["enabled"] is False


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"zero_stage": 4}, "ZeRO stage must be 0-3"),
        ({"zero_stage": 0, "offload_optimizer": True}, "optimizer offload needs ZeRO"),
        ({"zero_stage": 2, "offload_params": True}, "parameter offload needs ZeRO stage 3"),
    ],
)
def test_invalid_zero_options_are_rejected(overrides, message):
    cfg = TrainingConfig(micro_batch=8, **overrides)
    with pytest.raises(ValueError, match=message):
        deepspeed_config(cfg, _plan(cfg)[0], 100, "fp32", cuda=False)


@pytest.mark.parametrize(
    ("precision", "cuda", "expected"),
    [("auto", False, "fp32"), ("auto", True, "bf16"), ("fp16", True, "fp16"), ("fp32", True, "fp32")],
)
def test_precision(precision, cuda, expected):
    assert resolve_precision(TrainingConfig(precision=precision), cuda) == expected


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precision_needs_a_gpu(precision):
    with pytest.raises(ValueError, match="needs a GPU"):
        resolve_precision(TrainingConfig(precision=precision), cuda=False)
