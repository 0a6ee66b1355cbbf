"""The Chat benchmark in the chain: the chat preset's gpt_review metric on a LLaVA-Bench-COCO-style review set,
judged by a real HTTP endpoint on loopback (tests/judge_server.py) whose scores follow from the answers.

Fast tests cover the configuration (preset, form, review set checks, the judge's key before any training) and
the score stage against a judge that fails midway. One module-scoped run trains the toy Chat-form chain
(alone:, mini-alone: and the final VisATB model) end to end at reduced size, through run_visatb.sh.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from judge_server import OverlapJudge, overlap_score

from llava.answers.jsonio import read_jsonl
from llava.visatb.chain import cli as chain_cli
from llava.visatb.chain import config as chain_config
from llava.visatb.chain import runner as chain_runner
from llava.visatb.metrics.review_set import QA90_NAMES

REPO = Path(__file__).resolve().parents[1]
CHAT_TASKS = ["conversation", "detail", "complex_reasoning"]

# The review set: qa90's layout and category names (conv, detail, complex), COCO contexts with boxes.
QUESTIONS = [
    {"question_id": 0, "image": "a.jpg", "text": "What is on the table?", "category": "conv"},
    {"question_id": 1, "image": "a.jpg", "text": "Describe the image in detail.", "category": "detail"},
    {"question_id": 2, "image": "b.jpg", "text": "Why is this funny?", "category": "complex"},
    {"question_id": 3, "image": "b.jpg", "text": "What color is the cat?", "category": "conv"},
]
REFERENCES = {0: "a red apple on a wooden table", 1: "a wooden table with one red apple",
              2: "the cat wears sunglasses on a beach", 3: "the cat is black"}  # fmt: skip
CONTEXTS = [
    {"id": "a", "image": "a.jpg", "captions": ["An apple on a table."], "instances": [{"category": "apple", "bbox": [0.1, 0.2, 0.3, 0.4]}]},
    {"id": "b", "image": "b.jpg", "captions": ["A cat with sunglasses."], "instances": [{"category": "cat", "bbox": [0.0, 0.0, 1.0, 1.0]}]},
]  # fmt: skip
# Two models' answers by question id, and their overlap scores worked out by hand (reference words: 6, 7, 7, 4):
#   conversation-alone: q0 3/6 -> 6, q3 4/4 -> 10, q1 2/7 -> 4, q2 2/7 -> 4
#   detail-alone:       q0 0/6 -> 1, q3 2/4 -> 6,  q1 7/7 -> 10, q2 1/7 -> 2
# Relative score = 100 * mean(model) / mean(reference = 10): conversation (q0, q3), detail (q1), complex (q2).
ANSWERS = {"alone:conversation": {0: "a red apple", 3: "the cat is black", 1: "a table", 2: "a cat"},
           "alone:detail": {0: "nothing", 3: "black cat", 1: "a wooden table with one red apple", 2: "sunglasses"}}  # fmt: skip
EXPECTED = {"alone:conversation": {"conversation": 80.0, "detail": 40.0, "complex_reasoning": 40.0},
            "alone:detail": {"conversation": 35.0, "detail": 100.0, "complex_reasoning": 20.0}}  # fmt: skip


def write_jsonl(path: Path, records) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def write_review_set(folder: Path, questions=QUESTIONS) -> Path:
    (folder / "images").mkdir(parents=True)
    for name in ("a.jpg", "b.jpg"):
        (folder / "images" / name).write_bytes(b"not read by these tests")
    write_jsonl(folder / QA90_NAMES[0], questions)
    write_jsonl(folder / QA90_NAMES[1], CONTEXTS)
    write_jsonl(folder / QA90_NAMES[2], [{"question_id": q, "text": t} for q, t in REFERENCES.items()])
    return folder


@pytest.fixture
def chat_inputs(tmp_path, monkeypatch):
    """Chat-preset training data, a qa90-layout review set, a finetune script that only writes config.json,
    and a judge key in the environment (no proxy: the judge is on loopback)."""
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-local")
    monkeypatch.delenv("JUDGE_MODEL", raising=False)
    data = tmp_path / "data.json"
    data.write_text(json.dumps([{"id": f"{t}-{k}", "task": t, "conversations": [
        {"from": "human", "value": f"q{k}"}, {"from": "gpt", "value": f"a{k}"}]} for k in range(8) for t in CHAT_TASKS]))  # fmt: skip
    script = tmp_path / "finetune.sh"
    script.write_text(
        '#!/usr/bin/env bash\nset -e\nmkdir -p "$OUTPUT_DIR"\necho \'{}\' > "$OUTPUT_DIR/config.json"\n'
    )
    return {"data": data, "review": write_review_set(tmp_path / "llava-bench-coco"), "script": script,
            "work": tmp_path / "work", "tmp": tmp_path}  # fmt: skip


def chat_args(inputs: dict, *extra: str, work: Path | None = None) -> list[str]:
    return ["--work-dir", str(work or inputs["work"]), "--data", str(inputs["data"]), "--task-preset", "chat",
            "--review-set", str(inputs["review"]), "--finetune-script", str(inputs["script"]),
            "--mini-fraction", "0.25", "--judge-model", "overlap-judge", *extra]  # fmt: skip


def config(args: list[str]) -> chain_config.PipelineConfig:
    return chain_config.resolve_config(chain_cli.build_parser().parse_args(args))


# ---------------------------------------------------------------------------------------------- configuration


def test_chat_preset_judges_every_task_in_the_chat_form(chat_inputs):
    cfg = config(chat_args(chat_inputs))
    assert cfg.metrics == dict.fromkeys(CHAT_TASKS, "gpt_review") and cfg.judged_tasks == CHAT_TASKS
    assert (cfg.form, cfg.difficulty_from) == ("chat", "precise")
    assert cfg.prep_keys == [f"{p}:{t}" for p in ("alone", "mini-alone") for t in CHAT_TASKS]
    assert cfg.val_files == {} and cfg.judge_model == "overlap-judge"
    assert cfg.review_set["questions"] == str(chat_inputs["review"] / "qa90_questions.jsonl")
    # The academic form stays available when asked for by name.
    academic = config(chat_args(chat_inputs, "--form", "academic"))
    assert academic.form == "academic" and academic.prep_keys == ["mini", *CHAT_TASKS]


def test_judge_model_defaults_to_the_environment_then_llavas_judge(chat_inputs, monkeypatch):
    args = chat_args(chat_inputs)
    del args[args.index("--judge-model") : args.index("--judge-model") + 2]
    assert config(args).judge_model == "gpt-4-0314"
    monkeypatch.setenv("JUDGE_MODEL", "local-judge")
    assert config(args).judge_model == "local-judge"


def test_missing_judge_key_stops_the_chain_before_any_training(chat_inputs, monkeypatch, capsys):
    monkeypatch.delenv("OPENAI_API_KEY")
    assert chain_cli.main(chat_args(chat_inputs)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: OPENAI_API_KEY is not set: task(s) conversation, detail, complex_reasoning")
    assert not chat_inputs["work"].exists()


def test_review_set_split_gives_each_task_its_questions(chat_inputs):
    chain = chain_runner.Pipeline(config(chat_args(chat_inputs)), out=io.StringIO())
    chain.work.mkdir(parents=True)
    _, items, _ = chain._subsets_items()
    assert [i.key for i in items] == ["subsets+alone", "review-set"]
    chain._run_items("subsets", "[test]", items, 1)
    conversation = json.loads(Path(chain.val_file("conversation")).read_text())
    assert [r["question_id"] for r in conversation] == [0, 3]
    assert conversation[0] == {
        "id": "conversation-0", "task": "conversation", "question_id": 0, "category": "conv",
        "image": str(chat_inputs["review"] / "images" / "a.jpg"),
        "conversations": [{"from": "human", "value": "<image>\nWhat is on the table?"},
                          {"from": "gpt", "value": "a red apple on a wooden table"}],
    }  # fmt: skip
    assert [r["question_id"] for r in json.loads(Path(chain.val_file("complex_reasoning")).read_text())] == [
        2
    ]
    _, infer, _ = chain._infer_items(["alone:detail"])
    command = infer[0].command
    assert command[command.index("--question-file") + 1 : command.index("--answers-folder")] == [
        chain.val_file(t) for t in CHAT_TASKS]  # fmt: skip


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("category", r"question 2 \(question_id 1\): category 'sports' is none of the judged tasks"),
        ("no_complex", r"no question of judged task\(s\) complex_reasoning"),
        ("reference", "qa90_gpt4_answer.jsonl: no reference answer for question_id 3"),
        ("image", r"question 1 \(question_id 0\): image .*a.jpg: no such file"),
        ("no_review_set", "are scored by gpt_review: give their review set with --review-set"),
        ("not_judged", "--review-set is given but no scored task has the metric gpt_review"),
    ],
)
def test_review_set_errors_name_the_file_and_question(chat_inputs, change, message):
    folder = chat_inputs["review"]
    args = chat_args(chat_inputs)
    if change == "category":
        write_jsonl(
            folder / QA90_NAMES[0],
            [{**q, "category": "sports"} if q["question_id"] == 1 else q for q in QUESTIONS],
        )
    elif change == "no_complex":
        write_jsonl(folder / QA90_NAMES[0], [q for q in QUESTIONS if q["category"] != "complex"])
    elif change == "reference":
        write_jsonl(
            folder / QA90_NAMES[2], [{"question_id": q, "text": t} for q, t in REFERENCES.items() if q != 3]
        )
    elif change == "image":
        (folder / "images" / "a.jpg").unlink()
    elif change == "no_review_set":
        del args[args.index("--review-set") : args.index("--review-set") + 2]
    elif change == "not_judged":
        args += ["--task-metrics", "conversation=qa,detail=qa", "--val-files",
                 f"conversation={chat_inputs['data']},detail={chat_inputs['data']}"]  # fmt: skip
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        config(args)


@pytest.mark.slow
@pytest.mark.e2e
def test_run_visatb_sh_wires_the_chat_preset_review_set_and_judge(chat_inputs):
    # A finetune script that fails stops the chain at its first training: by then the configuration is
    # recorded and the review set split, so the shell variables' effect can be read back.
    failing = chat_inputs["tmp"] / "failing.sh"
    failing.write_text("#!/usr/bin/env bash\necho 'boom' >&2\nexit 3\n")
    work = chat_inputs["work"]
    env = {**os.environ, "WORK_DIR": str(work), "TASK_PRESET": "chat", "DATA_PATH": str(chat_inputs["data"]),
           "IMAGE_FOLDER": str(chat_inputs["tmp"]), "REVIEW_SET": str(chat_inputs["review"]),
           "JUDGE_MODEL": "judge-from-env", "FINETUNE_SCRIPT": str(failing),
           "PRETRAIN_MM_MLP_ADAPTER": str(chat_inputs["data"]), "VIRTUAL_ENV": sys.prefix,  # only checked to exist
           "START_MODEL": str(chat_inputs["data"]),  # the chat form needs it; only checked to exist before training
           "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"]}  # fmt: skip
    for name in ("FORM", "VAL_DIR", "VAL_FILES", "VAL_MANIFEST", "VAL_PER_TASK", "REVIEW_IMAGE_FOLDER"):
        env.pop(name, None)
    run = subprocess.run(["bash", "scripts_visatb/run_visatb.sh"], env=env, cwd=REPO, capture_output=True,
                         text=True, check=False)  # fmt: skip
    assert run.returncode == 1 and "[stage 2/9] train failed" in run.stderr, run.stdout + run.stderr
    recorded = json.loads((work / "pipeline.json").read_text())
    assert (recorded["form"], recorded["difficulty_from"], recorded["judge_model"]) == (
        "chat",
        "precise",
        "judge-from-env",
    )
    assert recorded["metrics"] == dict.fromkeys(CHAT_TASKS, "gpt_review") and recorded["val_files"] == {}
    assert recorded["review_set"]["image_folder"] == str(chat_inputs["review"] / "images")
    assert sorted(p.name for p in (work / "subsets" / "review").glob("*.json")) == sorted(
        f"{t}_val.json" for t in CHAT_TASKS
    )
    env.pop("OPENAI_API_KEY")
    run = subprocess.run(["bash", "scripts_visatb/run_visatb.sh"], env=env, cwd=REPO, capture_output=True,
                         text=True, check=False)  # fmt: skip
    assert run.returncode == 2 and "error: OPENAI_API_KEY is not set" in run.stderr


def test_review_set_from_validation_records(tmp_path):
    from llava.visatb.metrics.review_set import locate_review_set, main, write_val_files

    val = tmp_path / "val.json"
    val.write_text(json.dumps([
        {"id": "x", "image": "i/1.png", "task": "Cap", "conversations": [
            {"from": "human", "value": "<image>\nDescribe it."}, {"from": "gpt", "value": ["red circle", "a circle"]}]},
        {"id": "y", "image": "i/1.png", "task": "Cap", "conversations": [
            {"from": "human", "value": "<image>\nWhat colour?"}, {"from": "gpt", "value": "red"}]},
    ]))  # fmt: skip
    assert main(["from-val", "--val", f"Cap={val}", "--output-dir", str(tmp_path / "review")]) == 0
    review = tmp_path / "review"
    assert read_jsonl(review / "questions.jsonl") == [
        {"question_id": 0, "image": "i/1.png", "text": "Describe it.", "category": "Cap"},
        {"question_id": 1, "image": "i/1.png", "text": "What colour?", "category": "Cap"},
    ]
    assert [a["text"] for a in read_jsonl(review / "answers_ref.jsonl")] == ["red circle", "red"]
    assert read_jsonl(review / "context.jsonl") == [
        {"image": "i/1.png", "captions": ["red circle", "red"], "instances": []}
    ]
    assert list(json.loads((review / "rule.json").read_text())) == ["Cap"]
    (tmp_path / "i").mkdir()
    (tmp_path / "i" / "1.png").write_bytes(b"png")
    files = write_val_files(locate_review_set(str(review), str(tmp_path)), ["Cap"], tmp_path / "split")
    records = json.loads(files["Cap"].read_text())
    assert [r["conversations"][1]["value"] for r in records] == ["red circle", "red"]
    assert main(["from-val", "--val", str(val), "--output-dir", str(tmp_path / "bad")]) == 1


# ---------------------------------------------------------------------------------------------- judging


def write_answers(chain: chain_runner.Pipeline, key: str, answers: dict[int, str]) -> None:
    """inference_visatb.py's answer files of one model on every judged task."""
    from llava.mm_utils import get_model_name_from_path

    name = get_model_name_from_path(chain.model_path_and_base(key)[0])
    for task in chain.cfg.judged_tasks:
        records = json.loads(Path(chain.val_file(task)).read_text())
        for r in records:
            r["conversations"][1]["generative_value"] = answers[r["question_id"]]
            r["generator"] = name
        path = chain.answers_file(key, task)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(records))


def prepared_chain(chat_inputs, work: Path) -> chain_runner.Pipeline:
    chain = chain_runner.Pipeline(config(chat_args(chat_inputs, work=work)), out=io.StringIO())
    chain.work.mkdir(parents=True)
    chain._run_items("subsets", "[test]", chain._subsets_items()[1], 1)
    for key, answers in ANSWERS.items():
        write_answers(chain, key, answers)
    return chain


def test_hand_checked_overlap_scores():
    assert overlap_score("a red apple", REFERENCES[0]) == 6
    assert overlap_score("a table", REFERENCES[1]) == 4 and overlap_score("sunglasses", REFERENCES[2]) == 2
    assert overlap_score("", REFERENCES[3]) == 1 and overlap_score(REFERENCES[3], REFERENCES[3]) == 10


@pytest.mark.slow
def test_score_stage_resumes_after_a_judge_failing_midway_with_the_uninterrupted_scores(
    chat_inputs, monkeypatch
):
    keys = list(ANSWERS)
    with OverlapJudge(fail_after=1) as judge:
        monkeypatch.setenv("OPENAI_BASE_URL", judge.base_url)
        chain = prepared_chain(chat_inputs, chat_inputs["work"])
        _, items, _ = chain._score_items(keys)
        assert [i.key for i in items][:3] == [f"alone:conversation__{t}" for t in CHAT_TASKS]
        # The judge answers one review, then refuses: the first item (two conversation questions) fails.
        with pytest.raises(chain_config.PipelineError, match=r"(?s)alone:conversation__conversation: exit code 1; log .*"
                           r"the judge endpoint refused the request"):  # fmt: skip
            chain._run_items("score", "[stage 4/9] score", items, 1)
        reviews = chain.reviews_file("alone:conversation", "conversation")
        first_run = reviews.read_text()
        assert [r["question_id"] for r in read_jsonl(reviews)] == [0] and judge.refused == 1
        assert not chain.scores_file.exists() and not chain.is_done(
            "score", "alone:conversation__conversation"
        )

        judge.fail_after = None  # the judge is back: the rerun asks only what has no review yet
        chain._run_items("score", "[stage 4/9] score", chain._score_items(keys)[1], 1)
        assert len(judge.answered) == 8  # 2 models x 4 questions, each asked once over both runs
        assert "What color is the cat?" in judge.answered[1]["messages"][1]["content"]  # q3, not q0 again
        assert reviews.read_text().startswith(first_run) and len(read_jsonl(reviews)) == 2
        log = (chain.log_dir / "score" / "alone_conversation__conversation.log").read_text()
        assert "1 review(s) reused, 1 asked of overlap-judge" in log
        resumed = json.loads(chain.scores_file.read_text())

    with OverlapJudge() as judge:
        monkeypatch.setenv("OPENAI_BASE_URL", judge.base_url)
        other = prepared_chain(chat_inputs, chat_inputs["tmp"] / "uninterrupted")
        other._run_items("score", "[test]", other._score_items(keys)[1], 1)
        assert len(judge.answered) == 8
    assert json.loads(other.scores_file.read_text()) == resumed
    assert sorted(resumed) == sorted(EXPECTED)
    for key, row in EXPECTED.items():
        assert resumed[key] == pytest.approx(row), key
    marker = json.loads(chain.marker("score", "alone:detail__detail").read_text())
    assert marker["summary"] == "gpt_review_relative 100.0000"


@pytest.mark.slow
def test_unchanged_answers_are_never_judged_twice_across_a_redo(chat_inputs, monkeypatch):
    with OverlapJudge() as judge:
        monkeypatch.setenv("OPENAI_BASE_URL", judge.base_url)
        chain = prepared_chain(chat_inputs, chat_inputs["work"])
        chain._run_items("score", "[test]", chain._score_items(["alone:detail"])[1], 1)
        assert len(judge.answered) == 4
        # --redo score forgets the stage but keeps the reviews: unchanged answers are not asked again,
        # a changed one is.
        chain.redo("score")
        write_answers(chain, "alone:detail", {**ANSWERS["alone:detail"], 2: "a cat wears sunglasses"})
        chain._run_items("score", "[test]", chain._score_items(["alone:detail"])[1], 1)
        assert (
            len(judge.answered) == 5
            and "a cat wears sunglasses" in judge.answered[4]["messages"][1]["content"]
        )
    scores = json.loads(chain.scores_file.read_text())["alone:detail"]
    # q2 now has 4 of 7 reference words: 1 + int(9 * 4 / 7 + 0.5) = 6 -> 60.0
    assert scores == pytest.approx({"conversation": 35.0, "detail": 100.0, "complex_reasoning": 60.0})


# ---------------------------------------------------------------------------------------------- toy, end to end

# The toy Chat form: three toy tasks judged on a review set made from their validation records (the category
# of a question is its task's name), trained at reduced size: scale 0.02 (96 training records, 13 questions),
# a 30-step alignment pretraining, mini-alone sets of a quarter of each task.
TOY_CHAT = ["ToyCaption", "ToyCaptionList", "ToyCellQA"]
TOY_MODELS = ["start", *(f"alone:{t}" for t in TOY_CHAT), *(f"mini-alone:{t}" for t in TOY_CHAT), "VisATB"]
FAIL_AFTER = 20  # the judge refuses from its 21st review on, in the middle of the preparation's score stage


def _run(command: list[str], env: dict, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, check=False, **kwargs)


def _chain_env(out: Path, judge: OverlapJudge) -> dict:
    toy = out / "toy_model"
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env.update({
        "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
        "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"],
        "OPENAI_API_KEY": "sk-test-local", "OPENAI_BASE_URL": judge.base_url, "JUDGE_MODEL": "overlap-judge",
        "WORK_DIR": str(out / "work"), "RUN_NAME": "toy", "TASK_PRESET": "", "TASK_NAMES": ",".join(TOY_CHAT),
        "TASK_METRICS": ",".join(f"{t}=gpt_review" for t in TOY_CHAT), "UNSCORED_TASKS": "", "FORM": "chat",
        "REVIEW_SET": str(out / "review"), "REVIEW_IMAGE_FOLDER": str(out / "data"),
        "DATA_PATH": str(out / "train.json"), "IMAGE_FOLDER": str(out / "data"),
        "VAL_FILES": "", "VAL_DIR": "", "VAL_MANIFEST": "", "VAL_PER_TASK": "",
        "BASE_MODEL_PATH": str(toy / "base"), "VISION_TOWER": str(toy / "vision_tower"),
        "PRETRAIN_MM_MLP_ADAPTER": str(toy / "projector" / "mm_projector.bin"),
        "START_MODEL": str(toy / "llava-toy-start"), "START_MODEL_BASE": str(toy / "base"),
        "FINETUNE_SCRIPT": "scripts_visatb/finetune_academic.sh", "MINI_FRACTION": "0.25", "SEED": "0",
        "NUM_GPUS": "0", "LEARNING_RATE": "2e-3", "PER_DEVICE_BATCH_SIZE": "4", "MODEL_MAX_LENGTH": "256",
        "TRAIN_ARGS": "--num_train_epochs 1 --freeze_mm_mlp_adapter True --gradient_checkpointing False "
                      "--save_strategy no --logging_steps 10 --disable_tqdm True --seed 0",
        "PREP_TRAIN_ARGS": "", "FINAL_TRAIN_ARGS": "", "INFER_ARGS": "--batch-size 64 --quiet",
        "MAX_NEW_TOKENS": "gpt_review=16", "JOBS": "2", "TRAIN_JOBS": "2", "EW_BASELINE": "0", "EVAL_FINAL": "1",
        "METHODS": "", "STL": "0", "ABLATIONS": "", "DIFFICULTY_FROM": "", "TASK_GROUPS": "", "LARGE_FRACTION": "1",
        "VIRTUAL_ENV": sys.prefix,
    })  # fmt: skip
    return env


@pytest.fixture(scope="module")
def toy_chat(tmp_path_factory):
    """The toy Chat-form chain through run_visatb.sh: a first run whose judge fails midway, then a rerun."""
    from llava.visatb.toy.benchmark import load_toy_manifest

    out = tmp_path_factory.mktemp("toy_chat")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    steps = [
        [sys.executable, "-m", "llava.visatb.toy.benchmark", "--output-dir", str(out / "data"), "--seed", "0",
         "--scale", "0.02", "--image-size", "48", "--quiet"],
        [sys.executable, "-m", "llava.visatb.toy.model", "--benchmark", str(out / "data"), "--output-dir",
         str(out / "toy_model"), "--seed", "0", "--pretrain-steps", "30", "--pretrain-images", "64",
         "--tower-steps", "20"],
    ]  # fmt: skip
    for command in steps:
        done = _run(command, env)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    manifest = load_toy_manifest(out / "data")
    records = json.loads((out / "data" / manifest["train_file"]).read_text())
    (out / "train.json").write_text(json.dumps([r for r in records if r["task"] in TOY_CHAT]))
    val = ",".join(f"{t}={out / 'data' / manifest['val_files'][t]}" for t in TOY_CHAT)
    made = _run([sys.executable, "-m", "llava.visatb.metrics.review_set", "from-val", "--val", val, "--output-dir",
                 str(out / "review")], env)  # fmt: skip
    assert made.returncode == 0, made.stderr
    with OverlapJudge(fail_after=FAIL_AFTER) as judge:
        first = _run(["bash", "scripts_visatb/run_visatb.sh"], _chain_env(out, judge))
        answered_first = len(judge.answered)
        judge.fail_after = None
        second = _run(["bash", "scripts_visatb/run_visatb.sh"], _chain_env(out, judge))
    return {"out": out, "work": out / "work", "first": first, "second": second, "judge": judge,
            "answered_first": answered_first}  # fmt: skip


@pytest.mark.slow
@pytest.mark.e2e
def test_toy_chat_chain_stops_when_the_judge_fails_and_completes_on_the_rerun(toy_chat):
    first, second = toy_chat["first"], toy_chat["second"]
    assert first.returncode == 1, first.stdout[-3000:] + first.stderr[-3000:]
    assert (
        "[stage 4/9] score failed" in first.stderr
        and "the judge endpoint refused the request" in first.stderr
    )
    assert toy_chat["answered_first"] == FAIL_AFTER and toy_chat["judge"].refused >= 1
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    for k, stage in enumerate(("subsets", "train", "infer"), 1):
        assert f"[stage {k}/9] {stage}: done earlier, skipped" in second.stdout
    assert "[visatb] chain complete" in second.stdout


@pytest.mark.slow
@pytest.mark.e2e
def test_toy_chat_chain_trains_the_chat_forms_models(toy_chat):
    checkpoints = sorted(p.name for p in (toy_chat["work"] / "checkpoints").iterdir())
    assert checkpoints == sorted(["llava-toy-visatb", *(f"llava-toy-{t}-alone" for t in TOY_CHAT),
                                  *(f"llava-toy-{t}-mini-alone" for t in TOY_CHAT)])  # fmt: skip
    weights = json.loads((toy_chat["work"] / "weights.json").read_text())
    assert weights["scored_tasks"] == TOY_CHAT and len(weights["visatb_weights"]) == 3
    assert sum(weights["weights"]["final"]) == pytest.approx(3.0)
    assert (
        "| model | ToyCaption (rel %) | ToyCaptionList (rel %) | ToyCellQA (rel %) |"
        in toy_chat["second"].stdout
    )


@pytest.mark.slow
@pytest.mark.e2e
def test_toy_chat_scores_are_the_judges_overlap_scores_of_the_answers(toy_chat):
    work = toy_chat["work"]
    scores = json.loads((work / "scores.json").read_text())
    assert sorted(scores) == sorted(TOY_MODELS)
    for model in TOY_MODELS:
        assert sorted(scores[model]) == sorted(TOY_CHAT), model
        for task in TOY_CHAT:
            files = [f for f in (work / "answers" / model.replace(":", "_")).glob(f"{task}-val_*.json")
                     if not f.name.endswith(".provenance.json")]  # fmt: skip
            assert len(files) == 1, (model, task)
            records = json.loads(files[0].read_text())
            points = [overlap_score(r["conversations"][1]["generative_value"], r["conversations"][1]["value"])
                      for r in records]  # fmt: skip
            assert scores[model][task] == pytest.approx(10 * sum(points) / len(points)), (model, task)


@pytest.mark.slow
@pytest.mark.e2e
def test_toy_chat_rerun_asked_only_the_unreviewed_questions(toy_chat):
    work, judge = toy_chat["work"], toy_chat["judge"]
    questions = {
        t: len(json.loads((work / "subsets" / "review" / f"{t}_val.json").read_text())) for t in TOY_CHAT
    }
    reviews = 0
    for model in TOY_MODELS:
        for task in TOY_CHAT:
            lines = read_jsonl(work / "reviews" / model.replace(":", "_") / f"{task}.jsonl")
            assert sorted(r["question_id"] for r in lines) == sorted({r["question_id"] for r in lines}), (
                model,
                task,
            )
            assert len(lines) == questions[task]
            reviews += len(lines)
    assert reviews == len(TOY_MODELS) * sum(questions.values())
    assert len(judge.answered) == reviews  # over both runs, every review was paid for exactly once
