r"""MME: per-subtask accuracy and accuracy+ (both questions of an image right), perception and cognition totals.

Ground truth comes from the benchmark folder (MME_Benchmark_release_version): one folder per subtask
holding `<image>.txt` files of `question<TAB>Yes|No` lines, either beside the images or under
`questions_answers_YN/`. Answers are LLaVA's jsonl with question_id `<subtask>/<image file>`.

    python -m llava.eval.eval_mme --answers-file answers.jsonl --data-dir MME_Benchmark_release_version \
        --results-dir eval_tool/answers/<model>
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llava.answers.jsonio import read_answers
from llava.utils import atomic_write_json, atomic_write_text

EVAL_TYPES: dict[str, tuple[str, ...]] = {
    "Perception": (
        "existence", "count", "position", "color", "posters",
        "celebrity", "scene", "landmark", "artwork", "OCR",
    ),
    "Cognition": ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning"),
}  # fmt: skip

# LLaVA-1.5 asks MME questions with its short-answer instruction in place of MME's own.
LLAVA_INSTRUCTION = "Answer the question using a single word or phrase."
MME_INSTRUCTION = "Please answer yes or no."

GroundTruth = dict[tuple[str, str, str], tuple[str, str]]


def question_key(text: str) -> str:
    """A question with either instruction removed and whitespace collapsed (MME's files hold stray double spaces)."""
    text = text.replace(LLAVA_INSTRUCTION, " ").replace(MME_INSTRUCTION, " ")
    return re.sub(r"\s+", " ", text).strip()


def load_ground_truth(data_dir: str | os.PathLike) -> GroundTruth:
    """(subtask, image stem, question key) -> (question as written, 'yes'|'no') for every MME question."""
    root = Path(data_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder (MME_Benchmark_release_version goes there)")
    truth: GroundTruth = {}
    for subtask_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        qa_dir = subtask_dir / "questions_answers_YN"
        if not qa_dir.is_dir():
            qa_dir = subtask_dir
        for txt in sorted(qa_dir.glob("*.txt")):
            for lineno, line in enumerate(txt.read_text(encoding="utf-8").splitlines(), start=1):
                if not line.strip():
                    continue
                fields = line.strip().split("\t")
                if len(fields) != 2 or fields[1].strip().lower() not in ("yes", "no"):
                    raise ValueError(f"{txt}: line {lineno} is not 'question<TAB>Yes|No': {line!r}")
                question, answer = fields
                truth[(subtask_dir.name, txt.stem, question_key(question))] = (question, answer.strip().lower())
    if not truth:
        raise ValueError(f"{root}: no MME question files (<subtask>/[questions_answers_YN/]<image>.txt)")
    return truth


def parse_prediction(text: str) -> str:
    """MME's reading of an answer: exactly yes/no, else yes/no within its first four characters, else 'other'."""
    text = text.strip().lower()
    if text in ("yes", "no"):
        return text
    head = text[:4]
    if "yes" in head:
        return "yes"
    if "no" in head:
        return "no"
    return "other"


def _locate(answer: dict[str, Any], n: int) -> tuple[str, str]:
    for field in ("question_id", "prompt", "text"):
        if field not in answer:
            raise ValueError(f"answer {n} has no {field!r} field")
    parts = str(answer["question_id"]).split("/")
    if len(parts) < 2:
        raise ValueError(f"answer {n}: question_id {answer['question_id']!r} is not '<subtask>/<image file>'")
    return parts[0], os.path.splitext(parts[-1])[0]


def match_answers(answers: Sequence[dict[str, Any]], truth: GroundTruth) -> list[dict[str, str]]:
    """Each answer with its subtask, image, MME question, ground truth and parsed prediction."""
    matched = []
    for n, answer in enumerate(answers, start=1):
        subtask, image = _locate(answer, n)
        key = (subtask, image, question_key(answer["prompt"]))
        if key not in truth:
            raise ValueError(f"answer {n} ({answer['question_id']}): question {answer['prompt']!r} is not in the MME files")
        question, gt = truth[key]
        matched.append(
            {"subtask": subtask, "image": image, "question": question, "gt": gt, "text": answer["text"],
             "pred": parse_prediction(answer["text"])}
        )  # fmt: skip
    return matched


def evaluate_mme(answers: Sequence[dict[str, Any]], truth: GroundTruth) -> dict[str, Any]:
    """Per-subtask acc, acc+ and score (acc + acc+, in percent points), and the Perception/Cognition sums."""
    questions_per_image: dict[tuple[str, str], int] = defaultdict(int)
    for subtask, image, _ in truth:
        questions_per_image[(subtask, image)] += 1

    by_image: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    other: dict[str, int] = defaultdict(int)
    for item in match_answers(answers, truth):
        by_image[item["subtask"]][item["image"]].append(item["pred"] == item["gt"])
        other[item["subtask"]] += item["pred"] == "other"

    subtasks = {}
    for subtask, images in by_image.items():
        for image, results in images.items():
            if len(results) != questions_per_image[(subtask, image)]:
                raise ValueError(
                    f"{subtask}/{image}: {len(results)} answer(s) for its {questions_per_image[(subtask, image)]} "
                    "questions; acc+ needs every question of an image answered exactly once"
                )
        flat = [ok for results in images.values() for ok in results]
        acc = 100.0 * sum(flat) / len(flat)
        acc_plus = 100.0 * sum(all(results) for results in images.values()) / len(images)
        subtasks[subtask] = {
            "acc": acc, "acc_plus": acc_plus, "score": acc + acc_plus,
            "questions": len(flat), "images": len(images), "other": other[subtask],
        }  # fmt: skip

    result: dict[str, Any] = {"subtasks": subtasks}
    for eval_type, names in EVAL_TYPES.items():
        result[eval_type] = sum(subtasks[name]["score"] for name in names if name in subtasks)
    result["missing_subtasks"] = [n for names in EVAL_TYPES.values() for n in names if n not in subtasks]
    return result


def write_official_results(answers: Sequence[dict[str, Any]], truth: GroundTruth, results_dir: str | os.PathLike) -> None:
    """One `<subtask>.txt` per subtask in the format of MME's eval_tool: file, question, ground truth, answer."""
    lines: dict[str, list[str]] = defaultdict(list)
    for item, answer in zip(match_answers(answers, truth), answers):
        text = " ".join(str(answer["text"]).split())  # a tab or newline would break the official reader
        lines[item["subtask"]].append("\t".join((item["image"] + ".txt", item["question"], item["gt"].capitalize(), text)))
    for subtask, rows in lines.items():
        atomic_write_text(Path(results_dir) / f"{subtask}.txt", "".join(row + "\n" for row in rows))


def format_results(result: dict[str, Any]) -> str:
    """Readable per-type blocks: each subtask's acc, acc+ and score, then the type's total score."""
    out = []
    for eval_type, names in EVAL_TYPES.items():
        out.append(f"=========== {eval_type} ===========")
        out.append(f"total score: {result[eval_type]:.2f}")
        for name in names:
            if name in result["subtasks"]:
                s = result["subtasks"][name]
                out.append(f"  {name:<22} acc {s['acc']:6.2f}  acc+ {s['acc_plus']:6.2f}  score {s['score']:7.2f}")
    if result["missing_subtasks"]:
        out.append(f"(no answers for: {', '.join(result['missing_subtasks'])})")
    return "\n".join(out)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--answers-file", required=True, help="answers jsonl (question_id '<subtask>/<image>')")
    parser.add_argument("--data-dir", required=True, help="MME_Benchmark_release_version")
    parser.add_argument("--results-dir", help="also write eval_tool-format <subtask>.txt files here")
    parser.add_argument("--output-result", help="also write the scores as JSON here")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        answers = read_answers(args.answers_file, ("question_id", "prompt", "text"))
        truth = load_ground_truth(args.data_dir)
        result = evaluate_mme(answers, truth)
        if args.results_dir:
            write_official_results(answers, truth, args.results_dir)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(format_results(result))
    if args.output_result:
        atomic_write_json(args.output_result, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
