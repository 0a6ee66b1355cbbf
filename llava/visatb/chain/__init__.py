"""The chained VisATB method: subsets -> N+1 models -> answers -> scores -> weights -> final models -> report.

Every stage runs the project's own commands (`python -m llava.visatb.subsets`, the finetune script,
`inference_visatb.py`, `eval/*.py`, `weighting_visatb.py`, `python -m llava.visatb.results.report`) and writes
each command's output to WORK_DIR/logs/<stage>/<item>.log. An item (one model to train, one model answering
every validation set in one process, one score) is marked done in WORK_DIR/.done/ only after its command
succeeded and its outputs exist, so running the chain again skips everything finished and resumes a crashed or
killed run where it stopped (inference also resumes inside a validation set). A failed command stops the chain
with the stage, the item and the log named. With `--executor slurm` every item is an sbatch job instead,
waited on through squeue under the same rules.

    bash scripts_visatb/run_visatb.sh                       # configured by the variables at its top
    python -m llava.visatb.chain --work-dir work/academic --data data/Academic_train-475k.json \
        --image-folder data --task-preset academic --val-dir data ...

Tasks scored by `gpt_review` (the Chat preset's) are validated on one review set in LLaVA-Bench-COCO's layout
(--review-set; a question's category decides its task, llava/visatb/metrics/review_set.py): the subsets stage
writes subsets/review/<task>_val.json from it, every model answers those as any validation set, and the score
stage has the judge on OPENAI_BASE_URL (OPENAI_API_KEY, checked before anything runs) review each (model,
task) into reviews/<model>/<task>.jsonl, reused on reruns while answer and judge are unchanged.

Modules, each importing only those above it:

    config.py     the command line resolved into a checked PipelineConfig; the chain's vocabulary
    workdir.py    the work directory's paths and done-markers
    stages.py     each stage's work items (commands, environments, expected outputs)
    costs.py      what each command took and which part of the method it belongs to
    executors.py  the local executor (subprocesses)
    slurm.py      Slurm settings, job files, sbatch/squeue, and the Slurm executor
    runner.py     Pipeline: the stage loop
    cli.py        the argparse front end (`python -m llava.visatb.chain`)
    driver.py     the chain's driver as a Slurm job (submit and log out) and the items' status table
"""
