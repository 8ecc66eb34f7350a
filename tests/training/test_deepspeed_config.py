"""The stage plan and the generated DeepSpeed JSON: one typed config, every option checked."""

import math
from dataclasses import replace

import pytest

from training.config import TrainingConfig
from training.pretrain.deepspeed_config import deepspeed_config, per_stage, plan_stages, resolve_precision


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
