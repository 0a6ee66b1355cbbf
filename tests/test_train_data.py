"""Training data: the start-up scan, LLaVA's label masking, the lazy dataset, the collator and the sampler."""

import json
from types import SimpleNamespace

import pytest
import torch
from train_helpers import TASKS, make_toy_data
from transformers import AutoTokenizer, CLIPImageProcessor

from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.conversation import get_conv_template
from llava.train.data import (
    DataCollatorForSupervisedDataset,
    LazySupervisedDataset,
    preprocess_multimodal,
    preprocess_plain,
    preprocess_v1,
    scan_data,
)
from llava.train.llava_trainer import LengthGroupedSampler, get_modality_length_grouped_indices


@pytest.fixture(scope="module")
def tokenizer(tiny_llava):
    tok = AutoTokenizer.from_pretrained(tiny_llava["base"], use_fast=False, model_max_length=256, padding_side="right")
    tok.pad_token = tok.unk_token
    return tok


@pytest.fixture(scope="module")
def processor(tiny_llava):
    return CLIPImageProcessor.from_pretrained(tiny_llava["vision_tower"])


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_toy_data(tmp_path_factory.mktemp("toy_data"))


def kept_runs(tokenizer, labels):
    """Decoded text of each contiguous run of unmasked labels."""
    runs, current = [], []
    for token in labels.tolist() + [IGNORE_INDEX]:
        if token == IGNORE_INDEX:
            if current:
                runs.append(tokenizer.decode(current).strip())
            current = []
        else:
            current.append(token)
    return runs


def write_records(tmp_path, records, name="data.json"):
    path = tmp_path / name
    path.write_text(json.dumps(records))
    return str(path)


def record(task="ColorQA", image=None, rid="r", question="Q?", answer="A"):
    out = {"id": rid, "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]}
    if task is not None:
        out["task"] = task
    if image is not None:
        out["image"] = image
        out["conversations"][0]["value"] = "<image>\n" + question
    return out


# -- label masking ---------------------------------------------------------------------------------


def test_v1_labels_keep_only_the_assistant_replies_round_by_round(tokenizer):
    source = [
        {"from": "human", "value": "Count to three."},
        {"from": "gpt", "value": "one two three"},
        {"from": "human", "value": "And then?"},
        {"from": "gpt", "value": "four"},
    ]
    out = preprocess_v1([source], tokenizer, get_conv_template("v1"))
    input_ids, labels = out["input_ids"][0], out["labels"][0]
    assert out["mismatches"] == [None]
    expected_prompt = (
        get_conv_template("v1").system + " USER: Count to three. ASSISTANT: one two three</s>"
        "USER: And then? ASSISTANT: four</s>"
    )
    assert input_ids.tolist() == tokenizer(expected_prompt).input_ids
    assert kept_runs(tokenizer, labels) == ["one two three</s>", "four</s>"]
    assert labels[0] == IGNORE_INDEX


def test_v1_with_an_image_masks_the_image_and_the_instruction(tokenizer):
    source = [{"from": "human", "value": "<image>\nWhat colour?"}, {"from": "gpt", "value": "red"}]
    out = preprocess_v1([source], tokenizer, get_conv_template("v1"), has_image=True)
    input_ids, labels = out["input_ids"][0], out["labels"][0]
    assert (input_ids == IMAGE_TOKEN_INDEX).sum() == 1
    assert labels[input_ids == IMAGE_TOKEN_INDEX].item() == IGNORE_INDEX
    assert kept_runs(tokenizer, labels) == ["red</s>"]


def test_tokenization_mismatch_masks_the_whole_sample(tokenizer):
    # A literal "</s>" inside a reply splits the prompt into rounds that no longer add up.
    source = [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "a</s>b"}]
    out = preprocess_v1([source], tokenizer, get_conv_template("v1"))
    counted, actual = out["mismatches"][0]
    assert counted < actual == out["input_ids"][0].numel()
    assert torch.all(out["labels"][0] == IGNORE_INDEX)


def test_plain_pretraining_learns_exactly_the_caption(tokenizer):
    source = [{"from": "human", "value": "Describe it.\n<image>"}, {"from": "gpt", "value": "A red square."}]
    out = preprocess_plain([source], tokenizer, get_conv_template("plain"))
    input_ids, labels = out["input_ids"][0], out["labels"][0]
    assert input_ids[:2].tolist() == [tokenizer.bos_token_id, IMAGE_TOKEN_INDEX]
    assert labels[:2].tolist() == [IGNORE_INDEX, IGNORE_INDEX]
    # The caption and the separator, tokenised on their own (without BOS).
    assert labels[2:].tolist() == tokenizer("A red square.\n").input_ids[1:]


def test_plain_needs_one_image_turn_and_one_caption(tokenizer):
    with pytest.raises(ValueError, match="exactly two turns"):
        preprocess_plain([[{"from": "human", "value": "no image"}, {"from": "gpt", "value": "x"}]], tokenizer,
                         get_conv_template("plain"))


def test_preprocess_multimodal_moves_the_image_token_to_the_front():
    def turns():
        return [[{"from": "human", "value": "Describe it.\n<image>"}, {"from": "gpt", "value": "ok"}]]

    assert preprocess_multimodal(turns())[0][0]["value"] == "<image>\nDescribe it."
    assert preprocess_multimodal(turns(), mm_use_im_start_end=True)[0][0]["value"] == (
        "<im_start><image><im_end>\nDescribe it."
    )
    assert preprocess_multimodal(turns(), mmtag=True)[0][0]["value"] == "<Image><image></Image>\nDescribe it."
    assert preprocess_multimodal(turns(), is_multimodal=False)[0][0]["value"] == "Describe it.\n<image>"


# -- the start-up scan -----------------------------------------------------------------------------


def test_scan_assigns_task_ids_in_task_list_order(toy):
    scan = scan_data(toy["data"], toy["images"], TASKS)
    assert len(scan.records) == 6
    assert [TASKS[t] for t in scan.task_ids] == [r["task"] for r in scan.records]
    assert scan.task_counts() == {"ColorQA": 3, "Caption": 2, "Text": 1}
    assert "ColorQA" in scan.summary() and "6 training records" in scan.summary()


def test_unknown_task_names_the_record_and_lists_known_tasks(tmp_path):
    path = write_records(tmp_path, [record(rid="ok"), record(task="OCR", rid="bad-7")])
    with pytest.raises(ValueError) as err:
        scan_data(path, None, TASKS)
    message = str(err.value)
    assert path in message and "record 1 (id 'bad-7')" in message and "'OCR'" in message
    assert "known tasks: ColorQA, Caption, Text" in message


def test_record_without_task_needs_a_default_task(tmp_path):
    path = write_records(tmp_path, [record(rid="a"), record(task=None, rid="b")])
    with pytest.raises(ValueError, match=r"1 record\(s\) have no 'task' field: record 1 \(id 'b'\).*--default_task"):
        scan_data(path, None, TASKS)
    scan = scan_data(path, None, TASKS, default_task="Text")
    assert scan.task_ids == [0, 2]
    assert scan.defaulted_tasks == 1


def test_without_a_task_list_every_record_is_one_task(tmp_path):
    path = write_records(tmp_path, [record(task="Anything"), record(task=None)])
    scan = scan_data(path, None, ["all"], single_task=True)
    assert scan.task_ids == [0, 0]


def test_empty_dataset_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        scan_data(write_records(tmp_path, []), None, TASKS)


def test_malformed_json_names_file_and_position(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('[\n  {"id": 1},\n  {"id": 2,,}\n]')
    with pytest.raises(ValueError, match=r"broken\.json: malformed JSON at line 3, column 12"):
        scan_data(path, None, TASKS)


def test_missing_image_is_an_error_naming_the_file(toy, tmp_path):
    path = write_records(tmp_path, [record(image="red.png"), record(image="nowhere/cat.jpg", rid="lost")])
    with pytest.raises(FileNotFoundError) as err:
        scan_data(path, toy["images"], TASKS)
    assert "nowhere/cat.jpg" in str(err.value) and "id 'lost'" in str(err.value)
    assert "--skip_missing_images" in str(err.value)


def test_skip_missing_images_drops_and_counts_them(toy, tmp_path):
    records = [record(image="red.png", rid="a"), record(image="x.jpg", rid="b"), record(image="y.jpg", rid="c"),
               record(task="Text", rid="d")]
    scan = scan_data(write_records(tmp_path, records), toy["images"], TASKS, skip_missing_images=True)
    assert [r["id"] for r in scan.records] == ["a", "d"]
    assert scan.skipped_missing_images == 2
    assert "skipped 2 record(s) whose image file is missing" in scan.summary()


def test_skipping_every_record_is_an_error(toy, tmp_path):
    path = write_records(tmp_path, [record(image="x.jpg")])
    with pytest.raises(ValueError, match="no records left"):
        scan_data(path, toy["images"], TASKS, skip_missing_images=True)


def test_images_need_an_image_folder_and_a_vision_tower(toy, tmp_path):
    path = write_records(tmp_path, [record(image="red.png")])
    with pytest.raises(ValueError, match="--image_folder is not set"):
        scan_data(path, None, TASKS)
    with pytest.raises(ValueError, match="no --vision_tower"):
        scan_data(path, toy["images"], TASKS, multimodal=False)


def test_malformed_conversation_is_an_error(tmp_path):
    bad = {"id": "h", "task": "Text", "conversations": [{"from": "human", "value": "hi"}, {"from": "human", "value": "x"}]}
    with pytest.raises(ValueError, match=r"malformed conversation: record 0 \(id 'h'\): turn 1 is from 'human'"):
        scan_data(write_records(tmp_path, [bad]), None, TASKS)


def test_a_first_turn_from_gpt_is_dropped_and_counted(tmp_path, tokenizer):
    greeting = {"from": "gpt", "value": "Hello, how can I help you today?"}
    plain = record(task="Text", rid="plain")
    sharegpt = {**plain, "id": "sharegpt", "conversations": [greeting, *plain["conversations"]]}
    scan = scan_data(write_records(tmp_path, [sharegpt, plain]), None, TASKS)
    assert scan.dropped_first_turns == 1
    assert scan.records[0]["conversations"] == plain["conversations"]  # the training record, without the turn
    assert "1 record(s) start with a gpt turn: that turn is dropped" in scan.summary()
    data_args = SimpleNamespace(image_folder=None, image_processor=None, image_aspect_ratio="pad",
                                is_multimodal=False, mm_use_im_start_end=False)  # fmt: skip
    dataset = LazySupervisedDataset(scan, tokenizer, get_conv_template("v1"), data_args)
    first, second = dataset[0], dataset[1]
    assert torch.equal(first["input_ids"], second["input_ids"]) and torch.equal(first["labels"], second["labels"])
    assert (first["labels"] != IGNORE_INDEX).sum() > 0 and not first["tokenization_mismatch"]


# -- dataset and collator --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dataset(toy, tokenizer, processor):
    scan = scan_data(toy["data"], toy["images"], TASKS)
    data_args = SimpleNamespace(image_folder=toy["images"], image_processor=processor, image_aspect_ratio="pad",
                                is_multimodal=True, mm_use_im_start_end=False)
    return LazySupervisedDataset(scan, tokenizer, get_conv_template("v1"), data_args)


def test_samples_carry_task_ids_and_text_only_samples_a_zero_image(dataset, processor):
    for index, rec in enumerate(dataset.records):
        sample = dataset[index]
        assert sample["task_ids"].item() == TASKS.index(rec["task"])
        assert sample["image"].shape == (3, processor.crop_size["height"], processor.crop_size["width"])
        if "image" not in rec:
            assert torch.all(sample["image"] == 0)
            assert (sample["input_ids"] == IMAGE_TOKEN_INDEX).sum() == 0


def test_pad_aspect_ratio_fills_with_the_processor_mean(dataset, processor):
    index = next(i for i, r in enumerate(dataset.records) if r.get("image") == "red.png")
    image = dataset[index]["image"]  # 40x24 red image, padded to 40x40, resized to 32x32
    mean, std = torch.tensor(processor.image_mean), torch.tensor(processor.image_std)
    fill = (torch.tensor([int(m * 255) for m in processor.image_mean]) / 255 - mean) / std
    red = (torch.tensor([220, 30, 30]) / 255 - mean) / std
    assert torch.allclose(image[:, 0, 16], fill, atol=0.03)  # top band: padding
    assert torch.allclose(image[:, 16, 16], red, atol=0.03)  # centre: the image


def test_modality_lengths_are_signed_by_modality(dataset):
    lengths = dataset.modality_lengths
    assert all(length != 0 for length in lengths)
    assert [length > 0 for length in lengths] == ["image" in r for r in dataset.records]
    assert [abs(x) for x in lengths] == [sum(len(t["value"].split()) for t in r["conversations"])
                                         for r in dataset.records]


def test_collator_pads_and_counts_mismatches(dataset, tokenizer):
    samples = [dataset[i] for i in range(len(dataset))]
    samples[0] = {**samples[0], "tokenization_mismatch": True}
    batch = DataCollatorForSupervisedDataset(tokenizer)(samples)
    lengths = [s["input_ids"].numel() for s in samples]
    assert batch["input_ids"].shape == (6, max(lengths))
    for row, length in enumerate(lengths):
        assert batch["attention_mask"][row].sum() == length
        assert torch.all(batch["input_ids"][row, length:] == tokenizer.pad_token_id)
        assert torch.all(batch["labels"][row, length:] == IGNORE_INDEX)
    assert batch["task_ids"].tolist() == [s["task_ids"].item() for s in samples]
    assert batch["images"].shape[0] == 6
    assert batch["tokenization_mismatches"].item() == 1


def test_dataset_warns_about_a_mismatched_sample(tokenizer, processor, tmp_path, capsys):
    path = write_records(tmp_path, [record(task="Text", rid="odd", answer="a</s>b")])
    data_args = SimpleNamespace(image_folder=None, image_processor=processor, image_aspect_ratio="pad",
                                is_multimodal=True, mm_use_im_start_end=False)
    sample = LazySupervisedDataset(scan_data(path, None, TASKS), tokenizer, get_conv_template("v1"), data_args)[0]
    assert sample["tokenization_mismatch"] is True
    assert "WARNING: tokenization mismatch in record 0 (id 'odd')" in capsys.readouterr().err


# -- sampler -----------------------------------------------------------------------------------------


def test_modality_grouped_batches_hold_one_modality():
    lengths = [5, -3, 7, -2, 4, 9, -8, 6, 1, -4, 3, 2, -5]
    order = get_modality_length_grouped_indices(lengths, batch_size=2, world_size=2,
                                                generator=torch.Generator().manual_seed(0))
    assert sorted(order) == list(range(len(lengths)))
    megabatches = [order[i:i + 4] for i in range(0, len(order), 4)]
    leftovers = sum(1 for mb in megabatches if len({lengths[i] > 0 for i in mb}) > 1)
    assert leftovers <= 1 and len({lengths[i] > 0 for i in megabatches[0]}) == 1


def test_grouped_sampler_order_is_shared_by_ranks_and_changes_per_epoch():
    lengths = [3, -4, 5, -6, 7, 8, -2, 9]
    rank0 = LengthGroupedSampler(2, 2, lengths, seed=5, group_by_modality=True)
    rank1 = LengthGroupedSampler(2, 2, lengths, seed=5, group_by_modality=True)
    first0, first1 = list(rank0), list(rank1)
    assert first0 == first1
    epochs = {tuple(first0)} | {tuple(rank0) for _ in range(5)}
    assert len(epochs) > 1
