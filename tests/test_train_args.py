"""Training arguments: LLaVA's flags and defaults, VisATB's weighting flags, and errors before any model loads."""

import json

import pytest
from train_helpers import TASKS, make_toy_data, train_flags

from llava.model.weight_methods import DynamicWeightAverage, EqualWeighting, TaskBalancedWeighting
from llava.train import train as train_module
from llava.train.arguments import parse_weight_method_args, validate_args
from llava.train.train import parse_args, train
from llava.visatb.tasks import ACADEMIC

# LLaVA-1.5's own arguments and their defaults (haotian-liu/LLaVA llava/train/train.py); `version` defaults to
# v1 here because only the v1 and plain templates can be trained.
LLAVA_DEFAULTS = {
    "model_name_or_path": "facebook/opt-125m",
    "freeze_backbone": False,
    "tune_mm_mlp_adapter": False,
    "vision_tower": None,
    "mm_vision_select_layer": -1,
    "pretrain_mm_mlp_adapter": None,
    "mm_projector_type": "linear",
    "mm_use_im_start_end": False,
    "mm_use_im_patch_token": True,
    "mm_vision_select_feature": "patch",
    "data_path": None,
    "lazy_preprocess": False,
    "is_multimodal": False,
    "image_folder": None,
    "image_aspect_ratio": "square",
    "cache_dir": None,
    "optim": "adamw_torch",
    "remove_unused_columns": False,
    "freeze_mm_mlp_adapter": False,
    "mpt_attn_impl": "triton",
    "model_max_length": 512,
    "double_quant": True,
    "quant_type": "nf4",
    "bits": 16,
    "lora_enable": False,
    "lora_r": 64,
    "lora_alpha": 16,
    "lora_dropout": 0.05,
    "lora_weight_path": "",
    "lora_bias": "none",
    "mm_projector_lr": None,
    "group_by_modality_length": False,
}


def parsed(tmp_path, *flags):
    return parse_args(["--output_dir", str(tmp_path / "out"), "--report_to", "none", *flags])


def setup_of(tmp_path, *flags):
    return validate_args(*parsed(tmp_path, "--data_path", "unused.json", *flags))


def test_llava_arguments_exist_with_llavas_defaults(tmp_path):
    model_args, data_args, training_args = parsed(tmp_path)
    values = {**vars(model_args), **vars(data_args), **vars(training_args)}
    for name, default in LLAVA_DEFAULTS.items():
        assert values[name] == default, name
    assert model_args.version == "v1"


def test_visatb_weights_accepts_both_spellings(tmp_path):
    lower = parsed(tmp_path, "--visatb_weights", "1", "2.5", "0")[0]
    seed_spelling = parsed(tmp_path, "--VisATB_weights", "1", "2.5", "0")[0]
    assert lower.visatb_weights == seed_spelling.visatb_weights == [1.0, 2.5, 0.0]


def test_task_preset_and_weights_become_the_weighter(tmp_path):
    weights = [str(w) for w in (1.2, 0.8, 1.0, 0.9, 1.1, 1.0, 1.5, 1.0)]
    setup = setup_of(tmp_path, "--task_preset", "academic", "--num_tasks", "8", "--visatb_weights", *weights)
    assert setup.tasks == list(ACADEMIC.tasks)
    assert isinstance(setup.weighter, EqualWeighting)
    assert setup.weighter.current_weights() == [float(w) for w in weights]
    assert not setup.single_task


def test_no_task_list_is_single_task_training(tmp_path):
    setup = setup_of(tmp_path)
    assert setup.tasks == ["all"] and setup.single_task and setup.weights is None


def test_weights_file_is_read_for_the_task_list(tmp_path):
    path = tmp_path / "weights.json"
    path.write_text(json.dumps({"tasks": TASKS, "visatb_weights": [1.5, 0.5, 1.0]}))
    setup = setup_of(tmp_path, "--task_names", ",".join(TASKS), "--visatb_weights_file", str(path))
    assert setup.weights == [1.5, 0.5, 1.0]


def test_weight_method_args_reach_the_method(tmp_path):
    setup = setup_of(tmp_path, "--task_names", "A,B", "--weight_method", "dwa",
                     "--weight_method_args", "window=3,temperature=1.5")
    assert isinstance(setup.weighter, DynamicWeightAverage)
    assert (setup.weighter.window, setup.weighter.temperature) == (3, 1.5)
    assert parse_weight_method_args("window=2, temperature=0.5") == {"window": 2, "temperature": 0.5}


def test_ewtb_divides_by_all_task_weights_unless_told_otherwise(tmp_path):
    default = setup_of(tmp_path, "--task_names", "A,B", "--weight_method", "TLA")
    present = setup_of(tmp_path, "--task_names", "A,B", "--weight_method", "ewtb", "--ewtb_denominator", "present")
    assert isinstance(default.weighter, TaskBalancedWeighting) and default.weighter.denominator == "all"
    assert present.weighter.denominator == "present"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--task_names", "A,B", "--ewtb_denominator", "present"], "applies to --weight_method EWTB/TLA only, not EW"),
        (["--task_names", "A,B", "--weight_method", "EWTB", "--ewtb_denominator", "batch"], "must be one of all, present"),
        (["--task_names", "A,B,C", "--visatb_weights", "1", "2"], r"--visatb_weights has 2 value\(s\).*3 task\(s\): A, B, C"),
        (["--task_names", "A,B", "--visatb_weights", "1", "-0.5"], r"static weight 1 \(B\) is -0.5"),
        (["--task_names", "A,B", "--visatb_weights", "1", "nan"], r"static weight 1 \(B\) is nan"),
        (["--task_names", "A,B", "--visatb_weights", "0", "0"], "sum to 0"),
        (["--task_names", "A,B", "--weight_method", "GradNorm"], "unknown weight method 'GradNorm'; known methods: EW, EWTB, TLA, RLW, DWA, IGB"),
        (["--task_names", "A,B", "--num_tasks", "3"], "--num_tasks 3 disagrees with the task list, which has 2 task"),
        (["--num_tasks", "8"], "no task list was given"),
        (["--task_names", "A,B", "--task_preset", "chat"], "not both"),
        (["--task_preset", "large"], "unknown task preset 'large'"),
        (["--task_names", "A,A"], "more than once"),
        (["--task_names", "A,B", "--default_task", "C"], "--default_task 'C' is not in the task list"),
        (["--task_names", "A,B", "--weight_method", "DWA", "--weight_method_args", "beta=2"], "has no hyperparameter beta"),
        (["--task_names", "A,B", "--weight_method_args", "window"], "not key=value"),
        (["--version", "llama_2"], "--version 'llama_2' cannot be used for training; supported: "),
        (["--image_aspect_ratio", "anyres"], "--image_aspect_ratio 'anyres' is not supported"),
        (["--lora_weight_path", "x.bin"], "--lora_weight_path is not supported"),
        (["--remove_unused_columns", "True"], "must be False"),
        (["--pretrain_mm_mlp_adapter", "missing/mm_projector.bin"], "no such file missing/mm_projector.bin"),
    ],
)
def test_bad_arguments_are_rejected_with_a_clear_message(tmp_path, flags, message):
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        setup_of(tmp_path, *flags)


def test_named_weights_are_matched_to_the_task_list_by_name(tmp_path):
    setup = setup_of(tmp_path, "--task_names", "A,B,C", "--visatb_weights", "C=0.5", "A=2", "B=1")
    assert setup.weights == [2.0, 1.0, 0.5]
    assert setup.weighter.static_weights == [2.0, 1.0, 0.5]


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        (["A=1", "B=1", "D=1"], r"do not match the training task list \(A, B, C\): unknown D; missing C"),
        (["A=1", "B=1"], r"missing C"),
        (["A=1", "A=2", "C=1"], "names task 'A' twice"),
        (["A=1", "1", "1"], "not a mix"),
        (["A=1", "B=x", "C=1"], r"weight of 'B' \('x'\) is not a number"),
        (["1", "two", "3"], r"value 1 \('two'\) is not a number"),
    ],
)
def test_named_weights_that_do_not_match_are_refused(tmp_path, weights, message):
    with pytest.raises(ValueError, match=message):
        setup_of(tmp_path, "--task_names", "A,B,C", "--visatb_weights", *weights)


def test_weights_file_for_other_tasks_is_rejected(tmp_path):
    path = tmp_path / "weights.json"
    path.write_text(json.dumps({"tasks": ["B", "A"], "visatb_weights": [1.0, 1.0]}))
    with pytest.raises(ValueError, match=r"weights are for tasks \[B, A\] but training uses \[A, B\]"):
        setup_of(tmp_path, "--task_names", "A,B", "--visatb_weights_file", str(path))
    with pytest.raises(ValueError, match="not both"):
        setup_of(tmp_path, "--task_names", "B,A", "--visatb_weights_file", str(path), "--visatb_weights", "1", "1")


def test_cpu_training_drops_mixed_precision_with_a_message(tmp_path, capsys):
    training_args = parsed(tmp_path, "--bf16", "True", "--tf32", "True")[2]
    assert not training_args.bf16 and not training_args.tf32
    assert "no CUDA device: training in fp32 on the CPU (ignoring --bf16, --tf32)" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--deepspeed needs CUDA GPUs"):
        parsed(tmp_path, "--deepspeed", "scripts_visatb/zero3.json")


# -- the training CLI fails before loading a model ---------------------------------------------------


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_toy_data(tmp_path_factory.mktemp("toy_args"))


@pytest.fixture
def no_model_loading(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the inputs were validated")

    monkeypatch.setattr(train_module.LlavaLlamaForCausalLM, "from_pretrained", refuse)
    monkeypatch.setattr(train_module.transformers.AutoTokenizer, "from_pretrained", refuse)


def write_json(tmp_path, obj, name="data.json"):
    path = tmp_path / name
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return str(path)


def bad_input_cases(tmp_path, toy):
    records = json.loads(open(toy["data"]).read())
    unknown = write_json(tmp_path, records + [{**records[0], "id": "x9", "task": "Counting"}], "unknown.json")
    missing = write_json(tmp_path, records + [{**records[0], "id": "m1", "image": "gone.png"}], "missing.json")
    weights_file = write_json(tmp_path, {"tasks": ["Text", "ColorQA", "Caption"], "visatb_weights": [1, 1, 1]}, "w.json")
    return {
        "unknown task": (["--data_path", unknown], "record 6 (id 'x9'): task 'Counting'"),
        "weight count": (["--visatb_weights", "1", "2"], "--visatb_weights has 2 value(s)"),
        "negative weight": (["--visatb_weights", "1", "-1", "1"], "static weight 1 (Caption) is -1.0"),
        "nan weight": (["--visatb_weights", "1", "nan", "1"], "static weight 1 (Caption) is nan"),
        "all-zero weights": (["--visatb_weights", "0", "0", "0"], "sum to 0"),
        "unknown method": (["--weight_method", "MGDA"], "known methods: EW, EWTB, TLA, RLW, DWA, IGB"),
        "empty dataset": (["--data_path", write_json(tmp_path, [], "empty.json")], "the dataset is empty"),
        "malformed json": (["--data_path", write_json(tmp_path, "[{]", "bad.json")], "bad.json: malformed JSON at line 1"),
        "missing image": (["--data_path", missing], "image file not found: " + toy["images"] + "/gone.png"),
        "weights file": (["--visatb_weights_file", weights_file], "the weights are for tasks [Text, ColorQA, Caption]"),
    }


CASES = ["unknown task", "weight count", "negative weight", "nan weight", "all-zero weights", "unknown method",
         "empty dataset", "malformed json", "missing image", "weights file"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_stops_with_one_error_line_before_the_model_loads(case, tiny_llava, toy, tmp_path, capsys,
                                                                     no_model_loading):
    flags, message = bad_input_cases(tmp_path, toy)[case]
    args = train_flags(tiny_llava, toy, tmp_path / "out", *flags)
    with pytest.raises(SystemExit) as exit_info:
        train(args=args)
    assert exit_info.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0], errors
