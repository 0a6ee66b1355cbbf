"""The GPT review against a local fake OpenAI-compatible server (real `openai` client, loopback only),
its resumption, retries and key check, and the summary numbers worked out by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from judge_server import LoopbackChatServer, completion

from llava.answers.jsonio import read_jsonl
from llava.eval import eval_gpt_review_bench as review
from llava.eval import summarize_gpt_review as summary

JUDGE = "fake-judge-1"
MAX_REQUESTS = 20


class FakeJudge(LoopbackChatServer):
    """A chat-completions endpoint on 127.0.0.1 that scores by a marker in the question text."""

    def __init__(self, scores: dict[str, str], fail_first: int = 0, fail_status: int = 500):
        super().__init__()
        self.scores = scores
        self.fail_first = fail_first
        self.fail_status = fail_status
        self.requests: list[dict] = []

    def respond(self, body: dict, path: str, headers) -> tuple[int, dict]:
        with self.lock:
            self.requests.append({"path": path, "body": body, "auth": headers.get("Authorization")})
            count = len(self.requests)
        if count > MAX_REQUESTS:
            return 400, {"error": {"message": "too many requests in this test"}}
        if count <= self.fail_first:
            return self.fail_status, {"error": {"message": "try again", "type": "server_error"}}
        user = body["messages"][1]["content"]
        reply = next((text for marker, text in self.scores.items() if marker in user), "no idea")
        return 200, completion(body, count, reply)


# Canned judge replies, keyed by a marker in each question. By category:
#   conv:    (8, 6) and (6, 6) -> reference mean 7, model mean 6: relative 6/7 = 85.7%, 70.0, 60.0
#   detail:  (10, 5)           -> 50.0%, 100.0, 50.0
#   complex: (8, 8)            -> 100.0%, 80.0, 80.0
#   all:     reference (8+6+10+8)/4 = 8, model (6+6+5+8)/4 = 6.25 -> 78.1%, 80.0, 62.5
SCORES = {
    "Q-ONE": "8 6\nAssistant 2 misses a detail.",
    "Q-TWO": "10, 5\nAssistant 1 is far more thorough.",
    "Q-THREE": "8 8\nBoth are fine.",
    "Q-FOUR": "6 6\nEqual.",
}


def bench_fixture(tmp_path: Path) -> dict[str, Path]:
    """LLaVA-Bench in-the-wild files: questions, contexts (caption), GPT-4 reference and model answers."""
    questions = [
        {"question_id": 0, "image": "001.jpg", "text": "Q-ONE What is on the table?", "category": "conv"},
        {"question_id": 1, "image": "001.jpg", "text": "Q-TWO Describe the image in detail.", "category": "detail"},
        {"question_id": 2, "image": "002.jpg", "text": "Q-THREE Why is this funny?", "category": "complex"},
        {"question_id": 3, "image": "002.jpg", "text": "Q-FOUR What color is the cat?", "category": "conv"},
    ]
    contexts = [{"id": "001", "image": "001.jpg", "caption": "A wooden table with a red apple on it."},
                {"id": "002", "image": "002.jpg", "caption": ["A cat wearing sunglasses.", "It sits on a beach."]}]  # fmt: skip
    reference = [{"question_id": q["question_id"], "text": f"reference {q['question_id']}", "answer_id": f"r{q['question_id']}"} for q in questions]
    model = [{"question_id": q["question_id"], "text": f"model {q['question_id']}", "answer_id": f"m{q['question_id']}",
              "prompt": q["text"], "model_id": "m", "metadata": {}} for q in reversed(questions)]  # fmt: skip
    files = {}
    for name, records in (("questions", questions), ("context", contexts), ("answers_gpt4", reference), ("model", model)):
        files[name] = tmp_path / f"{name}.jsonl"
        files[name].write_text("".join(json.dumps(r) + "\n" for r in records))
    files["output"] = tmp_path / "reviews" / "model.jsonl"
    return files


def cli_args(files: dict[str, Path], *extra: str) -> list[str]:
    return ["--question", str(files["questions"]), "--context", str(files["context"]),
            "--answer-list", str(files["answers_gpt4"]), str(files["model"]),
            "--output", str(files["output"]), "--judge-model", JUDGE, "--timeout", "20", *extra]  # fmt: skip


@pytest.fixture
def endpoint_env(monkeypatch):
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-local")

    def point_to(judge: FakeJudge):
        monkeypatch.setenv("OPENAI_BASE_URL", judge.base_url)

    return point_to


def test_review_and_summary_numbers(tmp_path, endpoint_env, capsys):
    files = bench_fixture(tmp_path)
    with FakeJudge(SCORES) as judge:
        endpoint_env(judge)
        assert review.main(cli_args(files)) == 0
    assert len(judge.requests) == 4
    first = judge.requests[0]
    assert first["path"] == "/v1/chat/completions"
    assert first["auth"] == "Bearer sk-test-local"
    body = first["body"]
    assert (body["model"], body["temperature"], body["max_tokens"]) == (JUDGE, 0.2, 1024)
    assert body["messages"][0] == {"role": "system", "content": review.SYSTEM_PROMPT}
    rule = review.load_rules()["llava_bench_conv"]["prompt"]
    assert body["messages"][1]["content"] == (
        "[Context]\nA wooden table with a red apple on it.\n\n"
        "[Question]\nQ-ONE What is on the table?\n\n"
        "[Assistant 1]\nreference 0\n\n[End of Assistant 1]\n\n"
        "[Assistant 2]\nmodel 0\n\n[End of Assistant 2]\n\n"
        f"[System]\n{rule}\n\n"
    )
    # a list caption is one sentence per line
    assert "[Context]\nA cat wearing sunglasses.\nIt sits on a beach.\n\n" in judge.requests[2]["body"]["messages"][1]["content"]

    reviews = read_jsonl(files["output"])
    assert [(r["question_id"], r["category"], r["tuple"]) for r in reviews] == [
        (0, "llava_bench_conv", [8.0, 6.0]),
        (1, "llava_bench_detail", [10.0, 5.0]),
        (2, "llava_bench_complex", [8.0, 8.0]),
        (3, "llava_bench_conv", [6.0, 6.0]),
    ]
    assert (reviews[0]["answer1_id"], reviews[0]["answer2_id"], reviews[0]["judge_model"]) == ("r0", "m0", JUDGE)

    result = summary.summarize_reviews(summary.load_reviews(files["output"]))
    assert result["llava_bench_conv"]["relative"] == pytest.approx(600 / 7)
    assert (result["llava_bench_conv"]["reference"], result["llava_bench_conv"]["model"]) == pytest.approx((70.0, 60.0))
    assert result["llava_bench_detail"]["relative"] == pytest.approx(50.0)
    assert result["llava_bench_complex"]["relative"] == pytest.approx(100.0)
    assert result["all"]["relative"] == pytest.approx(78.125)
    assert (result["all"]["reference"], result["all"]["model"], result["all"]["count"]) == pytest.approx((80.0, 62.5, 4))

    capsys.readouterr()
    assert summary.main(["-f", str(files["output"])]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "all 78.1 80.0 62.5 4" in lines
    assert "llava_bench_conv 85.7 70.0 60.0 2" in lines


def test_coco_context_lists_boxes_and_uses_plain_category_rules(tmp_path, endpoint_env):
    files = bench_fixture(tmp_path)
    coco = {"id": "000000441147", "image": "001.jpg", "captions": ["Two suitcases.", "Old luggage."],
            "instances": [{"category": "suitcase", "bbox": [0.1, 0.2, 0.5, 0.9]}]}  # fmt: skip
    files["context"].write_text(json.dumps(coco) + "\n")
    first_question = files["questions"].read_text().splitlines()[0]
    files["questions"].write_text(first_question + "\n")
    with FakeJudge(SCORES) as judge:
        endpoint_env(judge)
        reviews = review.run_review(files["questions"], files["context"], [files["answers_gpt4"], files["model"]],
                                    files["output"], judge_model=JUDGE)  # fmt: skip
    content = judge.requests[0]["body"]["messages"][1]["content"]
    assert content.startswith("[Context]\nTwo suitcases.\nOld luggage.\n\nsuitcase: [0.1, 0.2, 0.5, 0.9]\n\n[Question]\n")
    assert content.endswith(f"[System]\n{review.load_rules()['conv']['prompt']}\n\n")
    assert reviews[0]["category"] == "conv"


def test_missing_key_is_a_clear_error_before_anything_else(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with FakeJudge(SCORES) as judge:
        monkeypatch.setenv("OPENAI_BASE_URL", judge.base_url)
        # the input files do not even exist: the key is checked first
        code = review.main(cli_args({k: tmp_path / "nope" for k in ("questions", "context", "answers_gpt4", "model", "output")}))
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: OPENAI_API_KEY is not set")
    assert judge.requests == []
    with pytest.raises(review.MissingAPIKeyError):
        review.make_judge_client()


def test_resumed_review_does_not_ask_again_for_done_items(tmp_path, endpoint_env):
    files = bench_fixture(tmp_path)
    with FakeJudge(SCORES) as judge:
        endpoint_env(judge)
        assert review.main(cli_args(files)) == 0
        finished = files["output"].read_text()
        assert review.main(cli_args(files)) == 0  # everything done: no request
        assert len(judge.requests) == 4
        assert files["output"].read_text() == finished

        # an interrupted run: two reviews written, the third cut off mid-line
        lines = finished.splitlines(keepends=True)
        files["output"].write_text(lines[0] + lines[1] + lines[2][:25])
        assert review.main(cli_args(files)) == 0
    assert len(judge.requests) == 6  # only questions 2 and 3 were asked again
    asked_again = [r["body"]["messages"][1]["content"] for r in judge.requests[4:]]
    assert "Q-THREE" in asked_again[0] and "Q-FOUR" in asked_again[1]
    assert [r["question_id"] for r in read_jsonl(files["output"])] == [0, 1, 2, 3]


def test_unparseable_review_is_kept_unscored_and_redone_on_resume(tmp_path, endpoint_env):
    files = bench_fixture(tmp_path)
    with FakeJudge({**SCORES, "Q-FOUR": "Both answers are equally good."}) as judge:
        endpoint_env(judge)
        assert review.main(cli_args(files)) == 0
        assert read_jsonl(files["output"])[3]["tuple"] is None
        assert review.main(cli_args(files)) == 0
    assert len(judge.requests) == 5  # the unscored one is asked again
    result = summary.summarize_reviews(summary.load_reviews(files["output"]))
    # without question 3: reference (8+10+8)/3, model (6+5+8)/3 -> 19/26 = 73.1%
    assert result["all"]["relative"] == pytest.approx(1900 / 26)
    assert (result["all"]["count"], result["all"]["unscored"]) == (3, 1)


def test_server_errors_are_retried_with_backoff(tmp_path, endpoint_env):
    files = bench_fixture(tmp_path)
    with FakeJudge(SCORES, fail_first=2) as judge:
        endpoint_env(judge)
        assert review.main(cli_args(files, "--retry-delay", "0.01")) == 0
    assert len(judge.requests) == 6  # two 500s, then the four reviews
    assert len(read_jsonl(files["output"])) == 4


def test_backoff_doubles_and_gives_up(endpoint_env):
    delays = []
    with FakeJudge(SCORES, fail_first=MAX_REQUESTS) as judge:
        endpoint_env(judge)
        client = review.make_judge_client(timeout=20)
        with pytest.raises(review.JudgeError, match="failed 4 times"):
            review.request_review(client, "Q-ONE", JUDGE, max_retries=3, retry_delay=0.5, sleep=delays.append)
    assert delays == [0.5, 1.0, 2.0]
    assert len(judge.requests) == 4


def test_refused_request_is_not_retried(tmp_path, endpoint_env, capsys):
    files = bench_fixture(tmp_path)
    with FakeJudge(SCORES, fail_first=1, fail_status=401) as judge:
        endpoint_env(judge)
        assert review.main(cli_args(files)) == 1
    assert len(judge.requests) == 1
    assert "refused the request" in capsys.readouterr().err


@pytest.mark.parametrize("text, scores", [("8 6\nwhy", [8.0, 6.0]), ("7.5, 9", [7.5, 9.0]), ("Score: 8 6", None), ("", None)])
def test_score_parsing(text, scores):
    assert review.parse_score(text) == scores


def test_a_changed_answer_or_judge_is_asked_again_an_unchanged_one_never(tmp_path, endpoint_env, capsys):
    files = bench_fixture(tmp_path)
    original = files["model"].read_text()

    def bench_model_answers(files):
        return [json.loads(line) for line in original.splitlines()]

    with FakeJudge(SCORES) as judge:
        endpoint_env(judge)
        assert review.main(cli_args(files)) == 0
        assert len(judge.requests) == 4
        # the model's answer to question 1 changes: only that one is asked again, and its new review wins
        model = read_jsonl(files["model"])
        for answer in model:
            if answer["question_id"] == 1:
                answer["text"] = "a new answer"
        files["model"].write_text("".join(json.dumps(a) + "\n" for a in model))
        capsys.readouterr()
        assert review.main(cli_args(files)) == 0
        assert len(judge.requests) == 5
        assert "[Assistant 2]\na new answer\n" in judge.requests[4]["body"]["messages"][1]["content"]
        assert "3 review(s) reused, 1 asked of fake-judge-1 (1 of them because" in capsys.readouterr().err
        assert review.main(cli_args(files)) == 0  # unchanged now: nothing asked
        assert len(judge.requests) == 5
        # back to the first answer: its earlier review is reused, and made the question's last line again
        files["model"].write_text("".join(json.dumps(a) + "\n" for a in bench_model_answers(files)))
        assert review.main(cli_args(files)) == 0
        assert len(judge.requests) == 5
        assert read_jsonl(files["output"])[-1] == read_jsonl(files["output"])[1]
        assert summary.summarize_reviews(summary.load_reviews(files["output"]))["all"]["relative"] == pytest.approx(78.125)
        # another judge model: every question is asked again
        args = cli_args(files)
        args[args.index("--judge-model") + 1] = "fake-judge-2"
        assert review.main(args) == 0
    assert len(judge.requests) == 9
    assert {r["body"]["model"] for r in judge.requests[5:]} == {"fake-judge-2"}
    latest = summary.load_reviews(files["output"])
    assert {r["judge_model"] for r in latest} == {"fake-judge-2"} and len(latest) == 4


def test_review_key_covers_judge_question_and_prompt():
    key = review.review_key("prompt", "judge-a", 1)
    assert key == review.review_key("prompt", "judge-a", 1)
    assert key != review.review_key("prompt", "judge-b", 1) and key != review.review_key("prompt 2", "judge-a", 1)
    assert key != review.review_key("prompt", "judge-a", 2)
