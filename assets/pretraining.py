"""Pretraining: one asset per curriculum stage, each a DeepSpeed run in its own process group launched
through Dagster Pipes, then `base_model`, the final weights with the tokenizer in Hugging Face format."""

import json
from pathlib import Path

import dagster as dg
import torch

from assets.curriculum import curriculum
from assets.gpus import gpu_slots, gpu_step
from assets.kubernetes import run_stage_on_pods
from assets.metadata import md_image, md_table
from assets.steps import key_metadata
from assets.tokenizer import tokenizer
from assets.tokens import tokenized_corpus
from assets.resources import Kiln
from training.fsutil import write_json
from training.layout import BASE_MODEL, CURRICULUM_JSON, LOSS_PNG, METRICS_JSONL, SPEC_JSON, STAGE_MODEL, pretrain_stage_name
from training.config import TrainingConfig
from training.pretrain.launch import check_launch, launch_command, launch_env, planned_gpus, ranks_per_node, world_size
from training.release.package import assemble_model
from training.pretrain.report import read_metrics
from training.pretrain.plan import StageSpec, completed, read_summary, stage_specs


def specs(kiln: Kiln, gpus: int | None = None) -> list[StageSpec]:
    """Every stage's spec, planned for nodes of `gpus` GPUs (None: this machine's)."""
    cfg = kiln.config
    gpus = torch.cuda.device_count() if gpus is None else gpus
    plan = json.loads((kiln.layout.curriculum / CURRICULUM_JSON).read_text())
    return stage_specs(kiln.layout.root, plan, cfg.model, cfg.training, world_size(cfg.training, gpus))


def stage_metadata(summary: dict, out: Path, key: str, was_reused: bool) -> dict:
    png = out / LOSS_PNG
    metrics = read_metrics(out / METRICS_JSONL)
    # Twelve evenly spaced steps, the first and last included.
    sampled = [metrics[i] for i in sorted({k * (len(metrics) - 1) // 11 for k in range(12)})] if metrics else []
    return {
        "loss_curve": md_image(png, "loss curve", "no steps"),
        "loss_curve_path": dg.MetadataValue.path(png),
        "metrics": md_table(
            ["step", "global step", "loss", "learning rate", "grad norm", "tokens/s"],
            [(m["step"], m["global_step"], m["loss"], f"{m['lr']:.3g}", f"{m['grad_norm']:.3g}", m["tokens_per_s"]) for m in sampled],
        ),
        "final_loss": summary["final_loss"],
        "steps": summary["steps"],
        "global_steps": f"{summary['global_steps'][0]}-{summary['global_steps'][1]} of {summary['total_steps']}",
        "tokens": summary["tokens"],
        "tokens_per_s": summary["tokens_per_s"],
        "mfu": summary["mfu"] if summary["mfu"] is not None else "n/a (no GPU)",
        "train_seconds": summary["train_seconds"],
        "wall_seconds": summary["wall_seconds"],
        "resumed_from_step": summary["resumed_from_step"],
        "initialised_from": summary["initialised_from"],
        "batch": f"{summary['global_batch']} sequences = {summary['micro_batch']} x {summary['ranks']} ranks x {summary['grad_accum']} accumulated",
        "peak_learning_rate": summary["peak_learning_rate"],
        "frozen_layers": str(summary["frozen_layers"]),
        "parameters": summary["parameters"],
        "device": f"{summary['device']} x {summary['ranks']} ({summary['precision']}, ZeRO {summary['zero_stage']})",
        **key_metadata(key, was_reused),
        "path": dg.MetadataValue.path(out),
    }


def pretrain_stage(stage: int, training: TrainingConfig, kubernetes: bool = False) -> dg.AssetsDefinition:
    """`kubernetes`: under the k8s_job_executor, where a multi-node stage runs as an indexed Job and
    its own step pod only follows it."""
    deps = [curriculum, tokenized_corpus, tokenizer] + ([pretrain_stage_name(stage - 1)] if stage > 1 else [])
    job_of_pods = kubernetes and training.nodes > 1

    @dg.asset(
        name=pretrain_stage_name(stage),
        group_name="model",
        deps=deps,
        kinds={"deepspeed", "pytorch"},
        **gpu_step(0 if job_of_pods else training.gpus_per_node or 1),
        description=f"Curriculum stage {stage}: DeepSpeed pretraining of the Llama model on the stage's records, "
        "resuming from the previous stage's checkpoint (torchrun through Dagster Pipes; on Kubernetes with "
        "several nodes, an indexed Job of one pod per node).",
    )
    def _stage(context: dg.AssetExecutionContext, kiln: Kiln, pipes: dg.PipesSubprocessClient) -> dg.MaterializeResult:
        cfg = kiln.config.training
        gpus = planned_gpus(cfg, kubernetes, torch.cuda.device_count())
        check_launch(cfg, gpus, kubernetes)
        spec = specs(kiln, gpus)[stage - 1]
        if summary := completed(spec):
            context.log.info(f"reused pretrain_stage_{stage} {spec.fingerprint[:12]}: trained with these inputs and config")
            return dg.MaterializeResult(metadata=stage_metadata(summary, Path(spec.out), spec.fingerprint, was_reused=True))
        spec_path = Path(spec.checkpoints) / SPEC_JSON
        spec_path.parent.mkdir(parents=True, exist_ok=True)
        write_json(spec_path, json.loads(spec.to_json()))
        per_node = ranks_per_node(cfg, gpus)
        env = launch_env(per_node, gpus)
        # The `gpu` pool counts GPUs: every GPU of every node the stage trains on.
        with gpu_slots(context, cfg.nodes * per_node if gpus else 1, kiln.gpu_slots_wait_seconds):
            if job_of_pods:
                run_stage_on_pods(context, kiln, stage, spec_path, gpus, env)
            else:
                command = launch_command(spec_path, cfg, gpus, run_id=spec.fingerprint[:16])
                context.log.info(f"launching stage {stage}: {' '.join(command)}")
                pipes.run(command=command, context=context, env=env)
        return dg.MaterializeResult(metadata=stage_metadata(read_summary(spec.out), Path(spec.out), spec.fingerprint, was_reused=False))

    return _stage


def base_model_asset(stages: int) -> dg.AssetsDefinition:
    @dg.asset(
        name=BASE_MODEL,
        group_name="model",
        deps=[pretrain_stage_name(stages), tokenizer],
        kinds={"huggingface", "safetensors"},
        description="The last stage's weights with the tokenizer, in Hugging Face format.",
    )
    def _base_model(kiln: Kiln) -> dg.MaterializeResult:
        last = kiln.layout.pretrain_stage(stages)
        files = assemble_model(last / STAGE_MODEL, kiln.layout.tokenizer, kiln.layout.base_model)
        summary = read_summary(last)
        return dg.MaterializeResult(
            metadata={
                "files": files,
                "parameters": summary["parameters"],
                "final_loss": summary["final_loss"],
                "global_steps": summary["global_steps"][1],
                "path": dg.MetadataValue.path(kiln.layout.base_model),
            }
        )

    return _base_model


@dg.asset_check(asset=BASE_MODEL, blocking=True, description="Loads with AutoModelForCausalLM and AutoTokenizer and generates.")
def base_model_generates(kiln: Kiln) -> dg.AssetCheckResult:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = kiln.layout.base_model
    tok, model = AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path)
    ids = tok("def main():", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    new = out.shape[1] - ids["input_ids"].shape[1]
    return dg.AssetCheckResult(passed=new > 0, metadata={"new_tokens": new, "sample": tok.decode(out[0])})


def pretraining_assets(stages: int, training: TrainingConfig, kubernetes: bool = False) -> list[dg.AssetsDefinition]:
    return [pretrain_stage(k, training, kubernetes) for k in range(1, stages + 1)] + [base_model_asset(stages)]
