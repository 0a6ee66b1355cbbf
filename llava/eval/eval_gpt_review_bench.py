r"""GPT-judged review of LLaVA-Bench (in-the-wild) and LLaVA-Bench COCO answers against reference answers.

A judge model on any OpenAI-compatible endpoint (OPENAI_BASE_URL, OPENAI_API_KEY) compares, for every
question, the reference answer (assistant 1, text-only GPT-4 in LLaVA) with the model's (assistant 2)
given the image's textual context, and scores both from 1 to 10. Reviews are appended to the output
file as they arrive, so an interrupted run resumes where it stopped; a review is reused only while its
judge model and prompt (context, question, both answers, rule) are unchanged, so a changed answer or judge
is asked again and an unchanged one never.

The context file decides the prompt: in-the-wild records hold `caption` (rule `llava_bench_<category>`),
COCO records hold `captions` and `instances` (rule `<category>`, boxes listed after the captions).

    python -m llava.eval.eval_gpt_review_bench --question questions.jsonl --context context.jsonl \
        --answer-list answers_gpt4.jsonl answers/<model>.jsonl --output reviews/<model>.jsonl
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from llava.answers.jsonio import TruncatedFileError, read_answers, read_jsonl
from llava.utils import atomic_write_text, load_json

SYSTEM_PROMPT = "You are a helpful and precise assistant for checking the quality of the answer."
DEFAULT_RULE_FILE = Path(__file__).resolve().parent / "table" / "rule.json"
# LLaVA-1.5's published LLaVA-Bench numbers come from this judge; other judges give other numbers.
DEFAULT_JUDGE_MODEL = "gpt-4-0314"
TEMPERATURE = 0.2
MAX_BACKOFF_SECONDS = 60.0


class MissingAPIKeyError(RuntimeError):
    """OPENAI_API_KEY is not set."""


class JudgeError(RuntimeError):
    """The judge endpoint refused a request or kept failing."""


def make_judge_client(timeout: float = 120.0) -> Any:
    """An `openai.OpenAI` client for OPENAI_BASE_URL (default: OpenAI) with OPENAI_API_KEY; no built-in retries."""
    api_key = os.environ.get("OPENAI_API_KEY")
    if not api_key:
        raise MissingAPIKeyError(
            "OPENAI_API_KEY is not set: the GPT review needs a key for the judge endpoint "
            "(export OPENAI_API_KEY=..., and OPENAI_BASE_URL=... for a non-OpenAI endpoint)"
        )
    import openai

    # Retries are ours (request_review), with backoff and clear give-up messages.
    return openai.OpenAI(api_key=api_key, base_url=os.environ.get("OPENAI_BASE_URL") or None, max_retries=0, timeout=timeout)


def load_rules(rule_file: str | os.PathLike = DEFAULT_RULE_FILE) -> dict[str, dict[str, str]]:
    """Rule prompts by category, each with `role` and `prompt`."""
    rules = load_json(rule_file)
    for name, rule in rules.items():
        if not isinstance(rule, dict) or "role" not in rule or "prompt" not in rule:
            raise ValueError(f"{rule_file}: rule {name!r} needs 'role' and 'prompt'")
    return rules


def _context_block(context: dict[str, Any]) -> tuple[str, bool]:
    """The [Context] text of an image, and whether it is an in-the-wild (caption) context."""
    if "caption" in context:
        caption = context["caption"]
        return ("\n".join(caption) if isinstance(caption, list) else str(caption)), True
    if "captions" in context and "instances" in context:
        captions = "\n".join(context["captions"])
        boxes = "\n".join(f"{inst['category']}: {inst['bbox']}" for inst in context["instances"])
        return f"{captions}\n\n{boxes}", False
    raise ValueError(f"context of image {context.get('image')!r} has neither 'caption' nor 'captions'+'instances'")


def rule_category(question: dict[str, Any], context: dict[str, Any]) -> str:
    """The rule name for a question: `llava_bench_<category>` in the wild, `<category>` on COCO."""
    _, in_the_wild = _context_block(context)
    return f"llava_bench_{question['category']}" if in_the_wild else str(question["category"])


def build_review_prompt(
    question: dict[str, Any], context: dict[str, Any], answer1: str, answer2: str, rule: dict[str, str]
) -> str:
    """The judge's user message: context, question, both answers, then the rule prompt."""
    context_text, _ = _context_block(context)
    role = rule["role"]
    return (
        f"[Context]\n{context_text}\n\n"
        f"[Question]\n{question['text']}\n\n"
        f"[{role} 1]\n{answer1}\n\n[End of {role} 1]\n\n"
        f"[{role} 2]\n{answer2}\n\n[End of {role} 2]\n\n"
        f"[System]\n{rule['prompt']}\n\n"
    )


def parse_score(review: str) -> list[float] | None:
    """The two scores on the review's first line ('8 6' or '8, 6'); None when it does not hold exactly two numbers."""
    first_line = review.strip().split("\n")[0] if review else ""
    fields = first_line.replace(",", " ").split()
    if len(fields) != 2:
        return None
    try:
        return [float(fields[0]), float(fields[1])]
    except ValueError:
        return None


def _retryable(error: Exception) -> bool:
    import openai

    if isinstance(error, openai.APIConnectionError | openai.RateLimitError | openai.InternalServerError):
        return True
    return isinstance(error, openai.APIStatusError) and error.status_code in (408, 409)


def request_review(
    client: Any,
    content: str,
    judge_model: str,
    max_tokens: int = 1024,
    max_retries: int = 6,
    retry_delay: float = 1.0,
    sleep: Callable[[float], None] = time.sleep,
) -> str:
    """One judge completion; connection, rate-limit and server errors are retried with exponential backoff."""
    import openai

    for attempt in range(max_retries + 1):
        try:
            response = client.chat.completions.create(
                model=judge_model,
                messages=[{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": content}],
                temperature=TEMPERATURE,
                max_tokens=max_tokens,
            )
            return response.choices[0].message.content or ""
        except openai.OpenAIError as e:
            if not _retryable(e):
                raise JudgeError(f"the judge endpoint refused the request: {e}") from e
            if attempt == max_retries:
                raise JudgeError(f"the judge endpoint failed {max_retries + 1} times; last error: {e}") from e
            delay = min(MAX_BACKOFF_SECONDS, retry_delay * 2**attempt)
            print(f"warning: judge request failed ({type(e).__name__}); retrying in {delay:.1f}s", file=sys.stderr)
            sleep(delay)
    raise AssertionError("unreachable")


def review_key(content: str, judge_model: str, question_id: Any = None) -> str:
    """What a review depends on: the judge model, the question and the whole prompt (context, question text,
    both answers, rule)."""
    payload = json.dumps([judge_model, str(question_id), SYSTEM_PROMPT, content], ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def load_done_reviews(output_file: str | os.PathLike) -> tuple[dict[str, dict[str, Any]], dict[str, str | None]]:
    """(reviews already in the output file with a parsed score, by `cache_key`; the cache key of each question's
    last line). Reviews without a key (written before keys existed) are not reused.

    A truncated last line (an interrupted write) is removed from the file so that appending can go on.
    """
    path = Path(output_file)
    if not path.is_file():
        return {}, {}
    try:
        reviews = read_jsonl(path)
    except TruncatedFileError:
        lines = path.read_text(encoding="utf-8").rstrip("\n").split("\n")
        atomic_write_text(path, "".join(line + "\n" for line in lines[:-1]))
        print(f"warning: dropped the truncated last line of {path}; that review is redone", file=sys.stderr)
        reviews = read_jsonl(path)
    done, latest = {}, {}
    for review in reviews:
        key = review.get("cache_key")
        latest[str(review["question_id"])] = key
        if review.get("tuple") is not None and key:
            done[key] = review
    return done, latest


def _index_by_question(records: Sequence[dict[str, Any]], source: str | os.PathLike) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for n, record in enumerate(records, start=1):
        qid = str(record["question_id"])
        if qid in out:
            raise ValueError(f"{source}: question_id {qid} appears twice (line {n})")
        out[qid] = record
    return out


def check_questions(questions: Sequence[dict[str, Any]], source: str | os.PathLike) -> None:
    """Every question has the fields the review reads; a missing one names the file and question."""
    for n, question in enumerate(questions, start=1):
        for field in ("question_id", "image", "text", "category"):
            if field not in question:
                raise ValueError(f"{source}: question {n} has no {field!r} field")


@dataclass(frozen=True)
class ReviewSources:
    """Where the contexts, reference answers, model answers and rules came from (named in errors)."""

    context: str = "contexts"
    reference: str = "reference answers"
    candidate: str = "model answers"
    rules: str = "rules"


def run_review(
    question_file: str | os.PathLike,
    context_file: str | os.PathLike,
    answer_files: Sequence[str | os.PathLike],
    output_file: str | os.PathLike,
    rule_file: str | os.PathLike = DEFAULT_RULE_FILE,
    judge_model: str = DEFAULT_JUDGE_MODEL,
    max_tokens: int = 1024,
    max_retries: int = 6,
    retry_delay: float = 1.0,
    client: Any = None,
) -> list[dict[str, Any]]:
    """Review every question not yet reviewed in `output_file`; returns all reviews in question order."""
    if client is None:
        client = make_judge_client()
    if len(answer_files) != 2:
        raise ValueError(f"--answer-list takes two files (reference answers, model answers), got {len(answer_files)}")
    questions = read_jsonl(question_file)
    check_questions(questions, question_file)
    sources = ReviewSources(str(context_file), str(answer_files[0]), str(answer_files[1]), str(rule_file))
    return review_answers(
        questions, read_jsonl(context_file), read_answers(answer_files[0]), read_answers(answer_files[1]),
        output_file, load_rules(rule_file), judge_model, max_tokens, max_retries, retry_delay, client, sources,
    )  # fmt: skip


def review_answers(
    questions: Sequence[dict[str, Any]],
    contexts: Sequence[dict[str, Any]],
    reference_answers: Sequence[dict[str, Any]],
    model_answers: Sequence[dict[str, Any]],
    output_file: str | os.PathLike,
    rules: dict[str, dict[str, str]],
    judge_model: str = DEFAULT_JUDGE_MODEL,
    max_tokens: int = 1024,
    max_retries: int = 6,
    retry_delay: float = 1.0,
    client: Any = None,
    sources: ReviewSources = ReviewSources(),
) -> list[dict[str, Any]]:
    """Review `questions`, reusing a review in `output_file` only when its judge and prompt (so both answers)
    are unchanged (`review_key`); new reviews are appended as they arrive, and a reused review that is not a
    question's last line is appended again, so the file's last line per question is always the current one.
    Returns the reviews in question order."""
    if client is None:
        client = make_judge_client()
    by_image = {c["image"]: c for c in contexts if "image" in c}
    reference = _index_by_question(reference_answers, sources.reference)
    candidate = _index_by_question(model_answers, sources.candidate)
    done, latest = load_done_reviews(output_file)
    Path(output_file).parent.mkdir(parents=True, exist_ok=True)
    reviews = []
    asked = stale = 0
    with open(output_file, "a", encoding="utf-8") as out:
        for idx, question in enumerate(tqdm(questions, desc=f"review ({judge_model})")):
            qid = str(question["question_id"])
            for answers, source in ((reference, sources.reference), (candidate, sources.candidate)):
                if qid not in answers:
                    raise ValueError(f"{source}: no answer for question_id {qid}")
            context = by_image.get(question["image"])
            if context is None:
                raise ValueError(f"{sources.context}: no context for image {question['image']!r} (question_id {qid})")
            category = rule_category(question, context)
            if category not in rules:
                raise ValueError(f"{sources.rules}: no rule {category!r} (question_id {qid}); rules: {', '.join(rules)}")
            ans1, ans2 = reference[qid], candidate[qid]
            content = build_review_prompt(question, context, ans1["text"], ans2["text"], rules[category])
            key = review_key(content, judge_model, question["question_id"])
            if key in done:
                if latest.get(qid) != key:  # an earlier review of this same answer: make it current again
                    out.write(json.dumps(done[key], ensure_ascii=False) + "\n")
                    out.flush()
                reviews.append(done[key])
                continue
            stale += qid in latest and latest[qid] != key
            text = request_review(client, content, judge_model, max_tokens, max_retries, retry_delay)
            asked += 1
            scores = parse_score(text)
            if scores is None:
                print(f"warning: no two scores on the first line of the review of question {qid}", file=sys.stderr)
            review = {
                "id": idx + 1,
                "question_id": question["question_id"],
                "answer1_id": ans1.get("answer_id", ans1["question_id"]),
                "answer2_id": ans2.get("answer_id", ans2["question_id"]),
                "category": category,
                "judge_model": judge_model,
                "cache_key": key,
                "content": text,
                "tuple": scores,
            }
            out.write(json.dumps(review, ensure_ascii=False) + "\n")
            out.flush()
            reviews.append(review)
    changed = f" ({stale} of them because the answers, prompt or judge changed)" if stale else ""
    print(f"{output_file}: {len(reviews) - asked} review(s) reused, {asked} asked of {judge_model}{changed}",
          file=sys.stderr)
    return reviews


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-q", "--question", required=True, help="questions jsonl (question_id, image, text, category)")
    parser.add_argument("-c", "--context", required=True, help="image contexts jsonl")
    parser.add_argument("-a", "--answer-list", nargs=2, required=True, metavar=("REFERENCE", "MODEL"))
    parser.add_argument("-r", "--rule", default=str(DEFAULT_RULE_FILE), help="rule prompts (default: %(default)s)")
    parser.add_argument("-o", "--output", required=True, help="reviews jsonl (appended to; resumable)")
    parser.add_argument("--judge-model", default=DEFAULT_JUDGE_MODEL, help="judge model name (default: %(default)s)")
    parser.add_argument("--max-tokens", type=int, default=1024, help="maximum number of tokens of a review")
    parser.add_argument("--max-retries", type=int, default=6, help="retries of a failed request")
    parser.add_argument("--retry-delay", type=float, default=1.0, help="first backoff delay in seconds (doubles)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for one judge response")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        client = make_judge_client(args.timeout)
        reviews = run_review(
            args.question, args.context, args.answer_list, args.output, args.rule,
            args.judge_model, args.max_tokens, args.max_retries, args.retry_delay, client=client,
        )  # fmt: skip
    except MissingAPIKeyError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError, JudgeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    unscored = sum(r.get("tuple") is None for r in reviews)
    print(f"{len(reviews)} reviews in {args.output}" + (f" ({unscored} without scores)" if unscored else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
