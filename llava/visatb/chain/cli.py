"""The chain's command line: `python -m llava.visatb.chain` (run_visatb.sh passes its variables to it).

    bash scripts_visatb/run_visatb.sh                       # configured by the variables at its top
    python -m llava.visatb.chain --work-dir work/academic --data data/Academic_train-475k.json \
        --image-folder data --task-preset academic --val-dir data ...

Configuration errors exit with code 2 before anything runs, a failed stage with code 1; both print one
`error:` line naming the flag, file, stage or item at fault.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from llava.visatb.chain.config import (
    ABLATIONS,
    DEFAULT_FINETUNE_SCRIPT,
    METHODS,
    STAGES,
    PipelineError,
    resolve_config,
)
from llava.visatb.chain.runner import Pipeline
from llava.visatb.chain.slurm import SlurmError, SlurmSettings
from llava.visatb.defaults import (
    DEFAULT_ALPHA,
    DEFAULT_GAIN_TOLERANCE,
    DEFAULT_MAX_CONTRIBUTION,
    DEFAULT_MINI_FRACTION,
    DEFAULT_TEMPERATURE,
)


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise argparse.ArgumentTypeError(f"expected a yes/no value (1/0, true/false), got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m llava.visatb.chain",
        description="Run the whole VisATB method as one resumable chain (see scripts_visatb/run_visatb.sh).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--work-dir", required=True, help="where every stage writes; reruns resume here")
    parser.add_argument("--data", required=True, help="the entire multi-task training file (JSON list)")
    parser.add_argument("--image-folder", help="root of the records' image paths")
    tasks = parser.add_argument_group("tasks and metrics")
    tasks.add_argument("--task-preset", help="academic, toy, ... (task order = task ids)")
    tasks.add_argument("--tasks", help="task names A,B,... instead of a preset")
    tasks.add_argument("--task-metrics", help="A=caption,B=qa,...: metric per scored task (default: preset/manifest)")
    tasks.add_argument("--unscored-tasks", help="tasks trained but not scored (weight 1.0); default: the preset's")
    tasks.add_argument("--task-groups", help="G1=A,B;G2=C,D: balance task groups (M3IT): one preparation model, "
                       "score (the mean of its tasks') and weight per group; default: the preset's groups")  # fmt: skip
    val = parser.add_argument_group("validation sets (exactly one)")
    val.add_argument("--val-files", help="A=path,B=path,...: one validation file per scored task")
    val.add_argument("--val-manifest", help="toy_benchmark.json, or a subsets.json with carved validation sets")
    val.add_argument("--val-dir", help="folder with {task}_val-{size}.json files (the release's naming)")
    val.add_argument("--val-per-task", type=int, help="carve K records per task out of --data as validation sets")
    review = parser.add_argument_group("GPT-judged tasks (metric gpt_review: the Chat preset)")
    review.add_argument("--review-set", help="the review set of every gpt_review task (LLaVA-Bench-COCO's layout): a "
                        "folder with qa90_questions.jsonl, caps_boxes_coco2014_val_80.jsonl, qa90_gpt4_answer.jsonl "
                        "(or questions.jsonl, context.jsonl, answers_ref.jsonl) [and rule.json], or "
                        "QUESTIONS,CONTEXT,REFERENCE[,RULES]; a question's category decides its task")  # fmt: skip
    review.add_argument("--review-image-folder", help="the review set's images (default: images/ beside its questions)")
    review.add_argument("--judge-model", help="judge model on OPENAI_BASE_URL (default: $JUDGE_MODEL, else gpt-4-0314)")
    model = parser.add_argument_group("starting point (passed to the finetune script)")
    model.add_argument("--base-model", help="BASE_MODEL_PATH, e.g. lmsys/vicuna-7b-v1.5")
    model.add_argument("--vision-tower", help="VISION_TOWER, e.g. openai/clip-vit-large-patch14-336")
    model.add_argument("--projector", help="PRETRAIN_MM_MLP_ADAPTER: the pretrained mm_projector.bin")
    model.add_argument("--start-model", help="also score the starting point: a LLaVA checkpoint (model key 'start')")
    model.add_argument("--start-model-base", help="its --model-base (projector-only or LoRA checkpoints)")
    run = parser.add_argument_group("training and inference")
    run.add_argument("--finetune-script", default=DEFAULT_FINETUNE_SCRIPT)
    run.add_argument("--mini-fraction", type=float, default=DEFAULT_MINI_FRACTION, help="share of every task in the mini set")
    run.add_argument("--large-fraction", type=float, default=1.0,
                     help="share of its task(s) in each task-plus-mini set (M3IT: 0.25); the minis come from it")  # fmt: skip
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--train-args", help="extra flags for every training run (quoted string)")
    run.add_argument("--prep-train-args", help="extra flags for the mini and task-plus-mini runs")
    run.add_argument("--final-train-args", help="extra flags for the final VisATB and EW runs")
    run.add_argument("--infer-args", help="extra flags for inference_visatb.py (e.g. '--batch-size 16')")
    run.add_argument("--max-new-tokens", help="per metric type or task, e.g. qa=16,caption=512 (default: the CLI's)")
    run.add_argument("--conv-mode", default="vicuna_v1")
    run.add_argument("--temperature", default=DEFAULT_TEMPERATURE,
                     help="softmax temperature of the weights, or 'auto': the smallest of 2, 1, 0.5, 0.25, 0.125 "
                     "keeping every final weight in [0.5, 2.0]")
    run.add_argument("--alpha", type=float, nargs=3, default=list(DEFAULT_ALPHA), metavar=("A_OUT", "A_IN", "A_D"),
                     help="Eq. 8: final weight = A_OUT * w_out + A_IN * w_in + A_D * w_diff (>= 0, summing to 1)")
    run.add_argument("--form", choices=("academic", "chat"),
                     help="contributions from the mini and task-plus-mini models (academic) or from start and "
                     "alone:<task> models (chat, App. C; the chain trains those); default: chat for the chat "
                     "preset, academic otherwise")
    run.add_argument("--difficulty-from", choices=("real", "precise"),
                     help="D from mini and task-plus-mini (real) or from mini-alone:<task> and alone:<task> (precise, "
                     "App. F; the chain trains those); default: real for the academic form, precise for chat")
    run.add_argument("--gain-tolerance", type=float, default=DEFAULT_GAIN_TOLERANCE,
                     help="relative own-data gain at or below which a task counts as without gain (weighting_visatb.py)")
    run.add_argument("--max-contribution", type=float, default=DEFAULT_MAX_CONTRIBUTION,
                     help="an own gain so small that some |C[i->j]| exceeds this also counts as no gain")
    run.add_argument("--strict", type=_bool, default=False,
                     help="a task without own-data gain stops the chain at the weights stage (default: neutral weight)")
    run.add_argument("--ew-baseline", type=_bool, default=True, help="also train the EW baseline on the entire data")
    run.add_argument("--methods", help=f"final models, by weighting method: any of {', '.join(METHODS)} "
                     "(default VisATB,EW, or VisATB with --ew-baseline false)")
    run.add_argument("--stl", type=_bool, default=False,
                     help="also train each task alone (alone:<task>, the STL baseline) and compare every final "
                     "model against it (comparison.json: dI, dE)")
    run.add_argument("--ablations", help=f"Table 8's rows, any of {', '.join(ABLATIONS)}: more VisATB final models "
                     "with other alpha, temperature or difficulty")
    run.add_argument("--eval-final", type=_bool, default=True, help="score the final model(s) on every validation set")
    run.add_argument("--jobs", type=int, default=1, help="inference/metric commands run at the same time")
    run.add_argument("--train-jobs", type=int, default=1, help="training runs at the same time (CPU only; 1 on GPUs)")
    run.add_argument("--run-name", default="visatb", help="checkpoint names: llava-<run-name>-<model>")
    run.add_argument("--redo", help=f"recompute this stage ({', '.join(STAGES)}); a later item is redone only where "
                     "what it reads changes (a trained model that does not depend on the stage is kept)")
    run.add_argument("--strict-reuse", type=_bool, default=False,
                     help="stop instead of redoing an item whose inputs or parameters changed since it finished")
    cluster = parser.add_argument_group(
        "executor (each --slurm-* value: VALUE for every stage, or STAGE=VALUE pairs, e.g. '1,train=4'; STAGE is "
        "train, infer, score (both stages of that kind) or a stage name such as final-train)")
    cluster.add_argument("--executor", choices=("local", "slurm"), default="local",
                         help="local: every item a subprocess here; slurm: every item an sbatch job, waited on "
                         "through squeue (a rerun waits on jobs still in flight)")
    cluster.add_argument("--slurm-partition", help="partition (default: the cluster's default partition)")
    cluster.add_argument("--slurm-nodes", help="nodes per job (more than 1: training only; launched with srun)")
    cluster.add_argument("--slurm-gpus-per-node", help="GPUs per node (default 0: none requested)")
    cluster.add_argument("--slurm-cpus", help="CPUs per job, also the OMP_NUM_THREADS of a job without GPUs unless "
                         "that is set (default: what a local item of the stage uses: the CPUs here / --jobs or "
                         "--train-jobs, at most the CPUs of the partition's largest node)")
    cluster.add_argument("--slurm-time", help="time limit per job (minutes, HH:MM:SS, D-HH:MM:SS)")
    cluster.add_argument("--slurm-args", help="more sbatch flags for every job, e.g. '--account=x --mem=64G'")
    cluster.add_argument("--slurm-train-args", help="more sbatch flags for training jobs only, e.g. '--exclusive'")
    return parser


SLURM_FLAGS = ("slurm_partition", "slurm_nodes", "slurm_gpus_per_node", "slurm_cpus", "slurm_time", "slurm_args",
               "slurm_train_args")  # fmt: skip


def resolve_slurm(args: argparse.Namespace) -> SlurmSettings | None:
    """The Slurm settings of --executor slurm (None for local); --slurm-* flags without it are an error."""
    given = [f"--{name.replace('_', '-')}" for name in SLURM_FLAGS if getattr(args, name)]
    if args.executor != "slurm":
        if given:
            raise ValueError(f"{', '.join(given)} need(s) --executor slurm (the executor is {args.executor})")
        return None
    return SlurmSettings.from_flags(
        partition=args.slurm_partition, nodes=args.slurm_nodes, gpus_per_node=args.slurm_gpus_per_node,
        cpus=args.slurm_cpus, time_limit=args.slurm_time, args=args.slurm_args, train_args=args.slurm_train_args)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = resolve_config(args)
        slurm_settings = resolve_slurm(args)
        if slurm_settings is not None:
            slurm_settings.check_cluster()  # before the first job, not after the first stage
        pipeline = Pipeline(cfg, slurm_settings=slurm_settings)
        if args.redo:
            pipeline.redo(args.redo)
    except (ValueError, FileNotFoundError, SlurmError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        pipeline.run()
    except (PipelineError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
