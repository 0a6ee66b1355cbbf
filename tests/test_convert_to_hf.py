"""The Hugging Face llava export, checked in the environment users evaluate in (.venv-ecosystem).

`scripts_visatb/setup_ecosystem_env.sh` builds that environment (transformers 5.x, lmms-eval); a failure to
build it fails these tests. The export of the lively tiny checkpoint must give our logits (within 1e-4) and
our greedy tokens through its own processor, padding included, and lmms-eval's `llava_hf` class must score
it with the answers `inference_visatb.py` gives.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from jinja2.sandbox import ImmutableSandboxedEnvironment
from PIL import Image

from llava.constants import IMAGE_TOKEN_INDEX
from llava.conversation import get_conv_template
from llava.eval.lmms_eval_task import write_task
from llava.generation import LlavaGenerator
from llava.model.convert_to_hf import chat_template
from llava.model.tiny import build_tiny_llava

REPO = Path(__file__).resolve().parents[1]
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false", "PYTHONIOENCODING": "utf-8"}  # fmt: skip
IMAGES = {"wide.png": ((40, 24), (200, 40, 30)), "tall.png": ((18, 30), (20, 60, 210)),
          "square.png": ((32, 32), (240, 220, 30))}  # fmt: skip


def _run(command: list[str], timeout: int = 600, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, **OFFLINE}
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env, **kwargs)


@pytest.fixture(scope="module")
def ecosystem_python() -> str:
    """The second environment's python (built or reused by our script); failing to build it fails the tests."""
    proc = _run(["bash", "scripts_visatb/setup_ecosystem_env.sh"], timeout=1200)
    if proc.returncode != 0:
        pytest.fail(f"scripts_visatb/setup_ecosystem_env.sh failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return proc.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def export(lively_checkpoint, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hf_export") / "llava-tiny-hf"
    proc = _run([sys.executable, "-m", "llava.model.convert_to_hf", "--model-path", lively_checkpoint,
                 "--output-dir", str(out)])  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "chat template 'vicuna_v1'" in proc.stdout and "image padding on" in proc.stdout
    return out


@pytest.fixture(scope="module")
def wordy_checkpoint(lively_checkpoint, tmp_path_factory) -> str:
    """The lively checkpoint that never answers with byte-fallback pieces (their output rows zeroed: a logit of 0
    under the others' random maximum), so that answers are text both tokenizers decode alike.

    Random byte pieces form invalid UTF-8, which sentencepiece (ours) and tokenizers (transformers 5.x) render
    with different replacement characters: the tokens agree, the strings would not.
    """
    import shutil

    from llava.model.language_model.llava_llama import LlavaLlamaForCausalLM

    path = tmp_path_factory.mktemp("wordy") / "llava-tiny"
    shutil.copytree(lively_checkpoint, path)
    model = LlavaLlamaForCausalLM.from_pretrained(path)
    with torch.no_grad():
        head = model.lm_head.weight
        keep_eos = head[2].clone()
        head[:259] = 0  # unk, bos, eos and the 256 byte pieces
        head[2] = keep_eos
    model.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def generator(lively_checkpoint) -> LlavaGenerator:
    return LlavaGenerator.from_pretrained(lively_checkpoint, conv_mode="vicuna_v1", max_new_tokens=8, verbose=False)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("hf_images")
    for name, (size, colour) in IMAGES.items():
        image = Image.new("RGB", size, colour)
        image.paste((255, 255, 255), (2, 3, 9, 8))  # something off-centre, so that padding and crops matter
        image.save(folder / name)
    return folder


@pytest.mark.slow
@pytest.mark.e2e
def test_export_files_and_config(export, lively_checkpoint):
    config = json.loads((export / "config.json").read_text())
    ours = json.loads((Path(lively_checkpoint) / "config.json").read_text())
    assert config["model_type"] == "llava" and config["architectures"] == ["LlavaForConditionalGeneration"]
    assert config["image_token_index"] == ours["vocab_size"] == 400
    assert config["text_config"]["vocab_size"] == 401 and config["text_config"]["hidden_size"] == 64
    assert config["vision_config"]["model_type"] == "clip_vision_model"
    assert (config["vision_feature_layer"], config["vision_feature_select_strategy"]) == (-2, "default")
    assert config["image_seq_length"] == 16  # (32 / 8) ** 2 patches, CLS dropped
    assert json.loads((export / "preprocessor_config.json").read_text())["do_pad"] is True
    processor = json.loads((export / "processor_config.json").read_text())
    assert (processor["patch_size"], processor["num_additional_image_tokens"]) == (8, 1)
    tokenizer = json.loads((export / "tokenizer_config.json").read_text())
    assert tokenizer["added_tokens_decoder"]["400"]["content"] == "<image>" and tokenizer["legacy"] is True
    from safetensors.torch import load_file

    state = load_file(str(export / "model.safetensors"))
    assert "model.vision_tower.encoder.layers.0.self_attn.q_proj.weight" in state
    assert "model.multi_modal_projector.linear_2.bias" in state and "lm_head.weight" in state
    assert not any("vision_model" in k or "mm_projector" in k or "inv_freq" in k for k in state)
    head = state["lm_head.weight"]
    torch.testing.assert_close(head[400], head[:400].mean(0))


def _render(template: str, messages: list[dict], add_generation_prompt: bool = True) -> str:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)  # as transformers renders
    return env.from_string(template).render(messages=messages, add_generation_prompt=add_generation_prompt)


@pytest.mark.parametrize("mode", ["vicuna_v1", "llava_v1", "llava_v0", "v1"])
def test_chat_template_reproduces_the_conversation_template(mode):
    conv = get_conv_template(mode)
    conv.append_message(conv.roles[0], "<image>\nWhat is it?")
    conv.append_message(conv.roles[1], "A square.")
    conv.append_message(conv.roles[0], "Which colour?")
    conv.append_message(conv.roles[1], None)
    expected = conv.get_prompt()
    template = chat_template(mode)
    as_strings = [{"role": "user", "content": "<image>\nWhat is it?"}, {"role": "assistant", "content": "A square."},
                  {"role": "user", "content": "Which colour?"}]  # fmt: skip
    as_parts = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": " What is it? "}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A square."}]},
        {"role": "user", "content": [{"type": "text", "text": "Which colour?"}]},
    ]
    assert _render(template, as_strings) == expected
    assert _render(template, as_parts) == expected
    own_system = [{"role": "system", "content": "Be brief."}, *as_strings]
    assert _render(template, own_system) == expected.replace(conv.system, "Be brief.", 1)


@pytest.mark.slow
@pytest.mark.e2e
def test_export_refuses_lora_and_projector_folders(tmp_path):
    for kind, message in (("lora", "LoRA checkpoint.*scripts_visatb/merge_lora_weights.py"),
                          ("projector", "holds only a projector")):  # fmt: skip
        written = build_tiny_llava(tmp_path / kind, kind=kind)
        proc = _run([sys.executable, "-m", "llava.model.convert_to_hf", "--model-path", written[kind],
                     "--output-dir", str(tmp_path / f"{kind}-hf")])  # fmt: skip
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        import re

        assert re.search(message, proc.stderr), proc.stderr
        assert not (tmp_path / f"{kind}-hf").exists()


@pytest.mark.slow
@pytest.mark.e2e
def test_export_gives_our_logits_and_greedy_tokens(export, generator, image_folder, ecosystem_python, tmp_path):
    question = "What is in the image?"
    cases, ours = [], []
    for name in IMAGES:
        image = Image.open(image_folder / name).convert("RGB")
        batch = generator.prepare([question], [image])
        with torch.no_grad():
            logits = generator.model(input_ids=batch.input_ids, images=batch.images).logits[0]
        tokens = generator.model.generate(batch.input_ids, images=batch.images, do_sample=False, max_new_tokens=8)
        ours.append((batch, logits.numpy(), tokens[0].tolist()))
        cases.append({"prompt": batch.prompts[0], "image": str(image_folder / name), "max_new_tokens": 8})
    # The same question once more, rendered by the export's chat template from list-of-parts content.
    cases.append({**cases[0], "messages": [{"role": "user", "content": [{"type": "image"},
                                                                         {"type": "text", "text": question}]}]})
    ours.append(ours[0])
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"model": str(export), "cases": cases}))
    proc = _run([ecosystem_python, str(REPO / "tests/ecosystem/hf_export_run.py"), str(spec), str(tmp_path / "out")])
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads((tmp_path / "out/result.json").read_text())
    for index, ((batch, logits, tokens), result) in enumerate(zip(ours, results)):
        assert result["prompt"] == batch.prompts[0]
        expanded = []
        for token in batch.input_ids[0].tolist():
            expanded.extend([400] * 16 if token == IMAGE_TOKEN_INDEX else [token])
        assert result["input_ids"] == expanded
        np.testing.assert_array_equal(np.load(tmp_path / f"out/pixels_{index}.npy"), batch.images[0].numpy())
        theirs = np.load(tmp_path / f"out/logits_{index}.npy")
        assert theirs.shape == (logits.shape[0], 401)
        assert np.abs(theirs[:, :400] - logits).max() < 1e-4
        assert result["new_tokens"] == tokens
    assert len({tuple(r["new_tokens"]) for r in results}) >= 2  # the images lead to different answers




@pytest.mark.slow
@pytest.mark.e2e
def test_lmms_eval_llava_hf_scores_the_export_with_our_answers(wordy_checkpoint, image_folder, ecosystem_python,
                                                               tmp_path):  # fmt: skip
    export = tmp_path / "llava-tiny-hf"
    proc = _run([sys.executable, "-m", "llava.model.convert_to_hf", "--model-path", wordy_checkpoint,
                 "--output-dir", str(export)])  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    questions = ["What is in the image?", "Which colour is it?", "Is there a square?", "Where is the shape?",
                 "Describe the image.", "How many shapes?"]  # fmt: skip
    names = list(IMAGES)
    records = [{"id": f"q{i}", "image": names[i % len(names)], "conversations": [
        {"from": "human", "value": f"<image>\n{q}"}, {"from": "gpt", "value": "zzz"}]} for i, q in enumerate(questions)]
    question_file = tmp_path / "ToyQA_val.json"
    question_file.write_text(json.dumps(records))
    proc = _run([sys.executable, "inference_visatb.py", "--model-path", wordy_checkpoint, "--image-folder",
                 str(image_folder), "--question-file", str(question_file), "--answers-folder", str(tmp_path / "ans"),
                 "--max_new_tokens", "6", "--device", "cpu", "--quiet"])  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    outputs = [json.loads(f.read_text()) for f in sorted((tmp_path / "ans").glob("*.json"))]
    (answer_records,) = (o for o in outputs if isinstance(o, list))  # beside it: the run's provenance
    answers = [r["conversations"][1]["generative_value"] for r in answer_records]
    assert len(set(answers)) >= 2 and all(answers)

    # References: our answer for even records, something else for odd ones: lmms-eval must score 3/6.
    for index, record in enumerate(records):
        record["conversations"][1]["value"] = answers[index] if index % 2 == 0 else "zzz"
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "records.json").write_text(json.dumps(records))
    write_task(tasks, "visatb_toy", tasks / "records.json", image_folder, max_new_tokens=6)
    out = tmp_path / "lmms"
    proc = _run([ecosystem_python, "-m", "lmms_eval", "eval", "--model", "llava_hf", "--model_args",
                 f"pretrained={export},device=cpu,device_map=cpu,dtype=float32", "--tasks", "visatb_toy", "--include_path",
                 str(tasks), "--batch_size", "1", "--output_path", str(out), "--log_samples"])  # fmt: skip
    # lmms-eval exits 0 after an error too: the samples and results files tell.
    assert proc.returncode == 0 and "Error during evaluation" not in proc.stderr, proc.stderr[-5000:]
    (samples_file,) = out.rglob("*_samples_visatb_toy.jsonl")
    samples = sorted((json.loads(line) for line in samples_file.read_text().splitlines()), key=lambda s: s["doc_id"])
    theirs = [s["filtered_resps"][0] if isinstance(s["filtered_resps"], list) else s["filtered_resps"] for s in samples]
    assert [t.strip() for t in theirs] == answers
    (results_file,) = (p for p in out.rglob("*results*.json"))
    score = json.loads(results_file.read_text())["results"]["visatb_toy"]["exact_match,none"]
    assert score == pytest.approx(0.5)
