"""Run an exported model with a current transformers (in .venv-ecosystem): logits, greedy tokens, pixels.

    python tests/ecosystem/hf_export_run.py SPEC.json OUT_DIR

SPEC holds `model` (the export folder) and `cases`: each a `prompt` (with one `<image>`), an `image` file and
`max_new_tokens`. For case i, OUT_DIR gets `logits_i.npy` (prompt positions x vocabulary, fp32),
`pixels_i.npy`, and `result.json` lists the prompt's token ids and the greedy new tokens. Nothing from this
repository is imported: this runs beside transformers 5.x, not 4.31.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import AutoProcessor, LlavaForConditionalGeneration


def main(spec_file: str, out_dir: str) -> int:
    spec = json.loads(Path(spec_file).read_text())
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    model = LlavaForConditionalGeneration.from_pretrained(spec["model"], dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(spec["model"])
    results = []
    for index, case in enumerate(spec["cases"]):
        image = Image.open(case["image"]).convert("RGB")
        prompt = case["prompt"]
        if "messages" in case:  # render through the export's chat template instead
            prompt = processor.apply_chat_template(case["messages"], tokenize=False, add_generation_prompt=True)
        inputs = processor(images=[image], text=prompt, return_tensors="pt")
        with torch.no_grad():
            logits = model(**inputs).logits[0]
            generated = model.generate(**inputs, do_sample=False, max_new_tokens=case["max_new_tokens"])
        np.save(out / f"logits_{index}.npy", logits.float().numpy())
        np.save(out / f"pixels_{index}.npy", inputs["pixel_values"][0].float().numpy())
        new_tokens = generated[0, inputs["input_ids"].shape[1]:].tolist()
        results.append({"prompt": prompt, "input_ids": inputs["input_ids"][0].tolist(), "new_tokens": new_tokens})
    (out / "result.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
