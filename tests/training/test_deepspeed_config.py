"""The stage plan and the generated DeepSpeed JSON: one typed config, every option checked."""

from dataclasses import replace

import pytest
import torch

from training.config import TrainingConfig
from training.pretrain.deepspeed_config import deepspeed_config, per_stage, plan_stages, resolve_precision


def _plan(cfg: TrainingConfig, stages=((1, 64 * 100), (2, 64 * 400), (3, 64 * 1000)), seq=64, world=2):
    return plan_stages(list(stages), seq, cfg, world)


def test_per_stage_values_repeat_the_last():
    assert [per_stage((32, 64, 128), i) for i in range(1, 6)] == [32, 64, 128, 128, 128]
    with pytest.raises(ValueError):
        per_stage((), 1)


def test_each_stage_accumulates_up_to_its_global_batch():
    plans = _plan(TrainingConfig(global_batch=(32, 64, 128), micro_batch=8))  # 2 ranks
    assert [p.global_batch for p in plans] == [32, 64, 128]
    assert [p.micro_batch * 2 * p.grad_accum for p in plans] == [32, 64, 128]  # per rank x ranks x accumulated
    with pytest.raises(ValueError, match="stage 1: global batch 24 is not a multiple of micro batch 8 x 2 ranks"):
        _plan(TrainingConfig(global_batch=(24,), micro_batch=8))


def test_the_peak_learning_rate_grows_with_the_square_root_of_the_batch():
    """`learning_rate` is the peak at a global batch of 256 sequences; four times the batch, twice the
    peak; a quarter, half."""
    plans = _plan(TrainingConfig(learning_rate=6e-4, global_batch=(64, 256, 1024), micro_batch=8))
    assert [p.learning_rate for p in plans] == pytest.approx([3e-4, 6e-4, 1.2e-3])


@pytest.mark.parametrize(
    ("overrides", "steps"),
    [
        ({}, [3, 6, 7]),  # one pass over each stage's 100, 400 and 1000 sequences, in batches of 32, 64, 128
        ({"epochs_per_stage": 2.0}, [6, 12, 15]),
        ({"max_steps_per_stage": 5}, [3, 5, 5]),
        ({"global_batch": (256,)}, [1, 1, 3]),  # a stage smaller than one batch still takes a step
    ],
)
def test_steps_per_stage_and_the_chained_step_offsets(overrides, steps):
    plans = _plan(TrainingConfig(micro_batch=8, **overrides))
    assert [p.steps for p in plans] == steps
    assert [p.first_step for p in plans] == [0, steps[0], steps[0] + steps[1]]
    assert [p.sequences for p in plans] == [100, 400, 1000]


def _lr_by_step(total_steps: int) -> tuple[float, list[float]]:
    """The stage's peak, and the learning rate of each of `total_steps` optimizer steps under the
    DeepSpeed scheduler the stage's config names, stepped as train.py steps it."""
    from deepspeed.runtime import lr_schedules

    cfg = TrainingConfig(micro_batch=8, min_lr_ratio=0.2)
    plan = _plan(cfg)[0]
    scheduler_config = deepspeed_config(cfg, plan, total_steps, "fp32", cuda=False)["scheduler"]
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=plan.learning_rate)
    scheduler = getattr(lr_schedules, scheduler_config["type"])(optimizer, **scheduler_config["params"])
    rates = []
    for step in range(1, total_steps + 1):
        scheduler.step(step)  # the schedule sits at iteration g for global step g
        rates.append(optimizer.param_groups[0]["lr"])
    return plan.learning_rate, rates


@pytest.mark.parametrize(("total_steps", "warmup"), [(40, 2), (200, 10), (1000, 50)])
def test_the_learning_rate_warms_up_over_5_percent_of_all_steps_then_decays_to_its_floor(total_steps, warmup):
    peak, rates = _lr_by_step(total_steps)
    top = rates.index(max(rates))
    assert top + 1 == warmup and rates[top] == pytest.approx(peak, rel=0.01)
    assert 0 < rates[0] and all(a < b for a, b in zip(rates[:top], rates[1 : top + 1]))  # step 1 already learns
    assert all(a >= b for a, b in zip(rates[top:], rates[top + 1 :]))
    assert rates[-1] == pytest.approx(0.2 * peak)  # min_lr_ratio of the peak at the very last step


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"zero_stage": 4}, "zero_stage is 0, 1, 2 or 3, not 4"),
        ({"zero_stage": 0, "offload_optimizer": True}, "offload_optimizer needs zero_stage 1 or higher"),
        ({"zero_stage": 2, "offload_params": True}, "offload_params needs zero_stage=3"),
        ({"zero_stage": 1, "gradient_compression": True}, "gradient_compression is ZeRO.., .*set zero_stage=3 .it is 1."),
        ({"nodes": 0}, "must be at least 1"),
        ({"gpus_per_node": 0}, "must be at least 1"),
        ({"cpu_ranks": 0}, "must be at least 1"),
        ({"precision": "bf32"}, r"precision must be one of \('auto', 'bf16', 'fp16', 'fp32'\), not 'bf32'"),
    ],
)
def test_invalid_training_settings_are_rejected_when_configured(overrides, message):
    with pytest.raises(ValueError, match=message):
        TrainingConfig(micro_batch=8, **overrides)


def test_gradient_compression_turns_on_zeropp_with_the_node_as_the_secondary_partition():
    cfg = TrainingConfig(micro_batch=8, zero_stage=3, gradient_compression=True)
    zero = deepspeed_config(cfg, _plan(cfg)[0], 100, "bf16", cuda=True, node_ranks=4)["zero_optimization"]
    assert zero == {"stage": 3, "zero_quantized_gradients": True, "zero_quantized_weights": True, "zero_hpz_partition_size": 4}
    plain = deepspeed_config(replace(cfg, gradient_compression=False), _plan(cfg)[0], 100, "bf16", cuda=True, node_ranks=4)
    assert plain["zero_optimization"] == {"stage": 3}
    # DeepSpeed's own schema accepts the block (its pydantic model of zero_optimization).
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig

    parsed = DeepSpeedZeroConfig(**zero)
    assert parsed.zero_quantized_gradients and parsed.zero_quantized_weights and parsed.zero_hpz_partition_size == 4


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
