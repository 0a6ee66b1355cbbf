"""Answer files record what made them (questions, model, settings) and are reused, resumed or scored only when it matches."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_inference_cli import MODEL_NAME, Loader, generator, read, write_questions  # noqa: F401

from llava.answers import provenance
from llava.answers import validation_answers as inference
from llava.answers.validation_answers import InferenceJob, run_inference
from llava.generation import LlavaGenerator

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def data(tmp_path):
    return write_questions(tmp_path)


@pytest.fixture
def model_copy(tmp_path, lively_checkpoint):
    """A private copy of the checkpoint under the name llava-tiny, which a test may retrain in place."""
    path = tmp_path / "ckpt" / MODEL_NAME
    shutil.copytree(lively_checkpoint, path)
    return path


def job_for(data, answers, model_path=None, generator=None, **kwargs) -> InferenceJob:  # noqa: F811
    question_file, images = data
    identity = provenance.model_identity(MODEL_NAME, model_path) if model_path else None
    settings = generator.settings if generator is not None else None
    options = dict(batch_size=3, progress=False, model_identity=identity, settings=settings)
    options.update(kwargs)
    return InferenceJob(str(question_file), str(answers), MODEL_NAME, image_folder=str(images), **options)


def crash_on(generator, monkeypatch, batch_number: int) -> None:  # noqa: F811
    real, calls = generator.generate_prepared, []

    def crashing(batch):
        calls.append(1)
        if len(calls) == batch_number:
            raise RuntimeError("killed")
        return real(batch)

    monkeypatch.setattr(generator, "generate_prepared", crashing)


def retrain_in_place(path: Path) -> None:
    """What a second training run into the same folder leaves: same config and file sizes, other weights."""
    from llava.model.language_model.llava_llama import LlavaLlamaForCausalLM

    model = LlavaLlamaForCausalLM.from_pretrained(path)
    with torch.no_grad():
        model.lm_head.weight.mul_(1.5)
    model.save_pretrained(path)


def test_a_finished_file_of_a_replaced_question_file_is_not_reused(data, tmp_path, generator):  # noqa: F811
    job = job_for(data, tmp_path / "answers", generator=generator)
    first = run_inference(job, Loader(generator))
    assert provenance.provenance_path(first.answers_file).is_file()
    records = read(data[0])
    records[3]["conversations"][0]["value"] = "Say 33 words."
    data[0].write_text(json.dumps(records))  # same name, other questions
    loader = Loader(generator)
    with pytest.raises(ValueError, match=r"exists but was made from other inputs: the question file's content.*--overwrite"):
        run_inference(job, loader)
    assert loader.calls == 0
    job.overwrite = True
    report = run_inference(job, Loader(generator))
    assert read(report.answers_file)[3]["conversations"][0]["value"] == "Say 33 words."
    job.overwrite = False
    assert run_inference(job, Loader(generator)).status == "already complete"


def test_resuming_with_another_checkpoint_of_the_same_name_is_refused(data, tmp_path, model_copy, generator,  # noqa: F811
                                                                      monkeypatch):  # fmt: skip
    job = job_for(data, tmp_path / "answers", model_path=model_copy, generator=generator, save_every=1)
    crash_on(generator, monkeypatch, 3)
    with pytest.raises(RuntimeError, match="killed"):
        run_inference(job, Loader(generator))
    monkeypatch.undo()
    retrain_in_place(model_copy)
    job = job_for(data, tmp_path / "answers", model_path=model_copy, generator=generator, save_every=1)
    loader = Loader(generator)
    with pytest.raises(ValueError, match=r"progress file .* was written with other inputs: the checkpoint's files"):
        run_inference(job, loader)
    assert loader.calls == 0
    assert not job.answers_file.exists()


def test_a_finished_file_of_other_generation_settings_is_not_reused(data, tmp_path, generator):  # noqa: F811
    run_inference(job_for(data, tmp_path / "answers", generator=generator), Loader(generator))
    longer = LlavaGenerator(generator.tokenizer, generator.model, generator.image_processor, max_new_tokens=5)
    with pytest.raises(ValueError, match=r"generation setting max_new_tokens \(4 then, 5 now\)"):
        run_inference(job_for(data, tmp_path / "answers", generator=longer), Loader(longer))


def test_overwrite_keeps_the_old_answers_until_the_new_ones_are_complete(data, tmp_path, generator,  # noqa: F811
                                                                        monkeypatch):  # fmt: skip
    job = job_for(data, tmp_path / "answers", generator=generator)
    first = run_inference(job, Loader(generator))
    before = first.answers_file.read_bytes()
    crash_on(generator, monkeypatch, 2)
    job.overwrite = True
    with pytest.raises(RuntimeError, match="killed"):
        run_inference(job, Loader(generator))
    assert first.answers_file.read_bytes() == before
    assert provenance.stale_reasons(first.answers_file, job_expected(job)) == []


def job_expected(job: InferenceJob) -> dict:
    questions = inference.load_questions(job.question_file)
    return inference.expected_provenance(job, questions, 0, len(questions), job.settings)


def test_merge_refuses_chunks_of_different_models(data, tmp_path, model_copy, generator):  # noqa: F811
    answers = tmp_path / "answers"
    run_inference(job_for(data, answers, model_path=model_copy, generator=generator, num_chunks=2, chunk_idx=0),
                  Loader(generator))  # fmt: skip
    retrain_in_place(model_copy)
    report = None
    with pytest.raises(ValueError, match=r"chunk 1 of 2 .* other inputs than chunk 0: the checkpoint's files"):
        report = run_inference(job_for(data, answers, model_path=model_copy, generator=generator, num_chunks=2,
                                       chunk_idx=1), Loader(generator))  # fmt: skip
    assert report is None and not (answers / "GQA-val-11_llava-tiny.json").exists()


def test_empty_question_file_is_an_error(tmp_path, generator):  # noqa: F811
    empty = tmp_path / "GQA_val-0.json"
    empty.write_text("[]")
    loader = Loader(generator)
    with pytest.raises(ValueError, match=r"GQA_val-0\.json: the question file is empty"):
        run_inference(InferenceJob(str(empty), str(tmp_path / "a"), MODEL_NAME, progress=False), loader)
    assert loader.calls == 0 and not (tmp_path / "a").exists()


@pytest.mark.parametrize(
    ("fields", "question", "message"),
    [
        ({}, "<image>\nWhat is it?", r"record 1 \(id 'q1'\): the question has an <image> marker but the record has no 'image'"),
        ({"image": None}, "<image>\nWhat is it?", r"record 1 \(id 'q1'\): the question has an <image> marker but the record has no 'image'"),
        ({"image": "1.png"}, "<image>\nCompare <image>", r"record 1 \(id 'q1'\): the question has 2 <image> markers"),
    ],
)
def test_image_markers_must_match_the_image_field(data, fields, question, message):
    records = read(data[0])
    records[1].pop("image", None)
    records[1].update(fields)
    records[1]["conversations"][0]["value"] = question
    data[0].write_text(json.dumps(records))
    with pytest.raises(ValueError, match=message):
        inference.load_questions(data[0])


def run_qa(answers_file: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "eval" / "qa.py"), "-a", str(answers_file)],
                          capture_output=True, text=True, timeout=60)  # fmt: skip


def test_scorers_check_the_answers_against_their_provenance(data, tmp_path, generator):  # noqa: F811
    report = run_inference(job_for(data, tmp_path / "answers", generator=generator), Loader(generator))
    proc = run_qa(report.answers_file)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    records = read(report.answers_file)
    records[0]["conversations"][1]["generative_value"] = "answer 0"
    report.answers_file.write_text(json.dumps(records))
    proc = run_qa(report.answers_file)
    assert proc.returncode == 1
    assert "is not the file its provenance record" in proc.stderr and "regenerate it" in proc.stderr

    provenance.provenance_path(report.answers_file).unlink()
    proc = run_qa(report.answers_file)
    assert proc.returncode == 0 and "warning: " in proc.stderr and "has no provenance record" in proc.stderr


def test_scorers_warn_when_the_question_file_changed(data, tmp_path, generator):  # noqa: F811
    report = run_inference(job_for(data, tmp_path / "answers", generator=generator), Loader(generator))
    data[0].write_text(json.dumps(read(data[0])[:5]))
    proc = run_qa(report.answers_file)
    assert proc.returncode == 0
    assert "has changed since" in proc.stderr and "may be stale" in proc.stderr


@pytest.mark.slow
@pytest.mark.e2e
def test_cli_records_the_model_fingerprint_and_refuses_a_retrained_one(data, tmp_path, model_copy):
    question_file, images = data
    args = [sys.executable, str(REPO / "inference_visatb.py"), "--model-path", str(model_copy), "--image-folder",
            str(images), "--question-file", str(question_file), "--answers-folder", str(tmp_path / "answers"),
            "--max_new_tokens", "2", "--quiet"]  # fmt: skip
    first = subprocess.run(args, capture_output=True, text=True, timeout=180)
    assert first.returncode == 0, first.stderr
    out = tmp_path / "answers" / "GQA-val-11_llava-tiny.json"
    record = provenance.read_provenance(out)
    assert record["model"]["checkpoint"]["path"] == str(model_copy.resolve())
    assert record["generation"]["max_new_tokens"] == 2 and record["questions"]["count"] == 11
    before = out.read_bytes()
    retrain_in_place(model_copy)
    second = subprocess.run(args, capture_output=True, text=True, timeout=180)
    assert second.returncode == 1
    assert "exists but was made from other inputs: the checkpoint's files" in second.stderr
    assert "Traceback" not in second.stderr and out.read_bytes() == before


def test_benchmark_answers_resume_and_merge_only_with_the_same_settings(tmp_path, lively_checkpoint, capsys):
    from test_eval_generation import loader_args, write_vqa

    from llava.eval import merge_chunks, model_vqa_loader

    questions, images = write_vqa(tmp_path, [1, 2, 3, 4])
    answers = tmp_path / "a.jsonl"
    assert model_vqa_loader.main(loader_args(lively_checkpoint, questions, images, answers)) == 0
    assert provenance.read_provenance(answers)["generation"]["max_new_tokens"] == 3
    answers.write_text("".join(answers.read_text().splitlines(keepends=True)[:2]))  # killed after two answers
    capsys.readouterr()
    longer = loader_args(lively_checkpoint, questions, images, answers) + ["--max_new_tokens", "4"]  # the last one counts
    assert model_vqa_loader.main(longer) == 1
    assert "was written with other inputs: generation setting max_new_tokens (3 then, 4 now)" in capsys.readouterr().err
    assert len(answers.read_text().splitlines()) == 2

    chunks = tmp_path / "chunks"
    assert model_vqa_loader.main(loader_args(lively_checkpoint, questions, images, chunks / "2_0.jsonl", "--num-chunks", 2,
                                             "--chunk-idx", 0)) == 0  # fmt: skip
    assert model_vqa_loader.main(loader_args(lively_checkpoint, questions, images, chunks / "2_1.jsonl", "--num-chunks", 2,
                                             "--chunk-idx", 1, "--max_new_tokens", 4)) == 0  # fmt: skip
    with pytest.raises(ValueError, match=r"chunk 1 of 2 .* other inputs than chunk 0: generation setting max_new_tokens"):
        merge_chunks.merge_chunks(questions, chunks, 2, tmp_path / "merge.jsonl")
    assert not (tmp_path / "merge.jsonl").exists()
