r"""MMBench / MMBench-CN: LLaVA answers to the evaluation server's Excel file.

The sheet is the question table without its hint, category, source, image, comment and l2-category
columns, with a `prediction` column after the options. Only round 0 (the options in their original
order) is submitted when answers were generated with all option rotations.

    python -m llava.eval.convert_mmbench_for_submission --annotation-file mmbench_dev_20230712.tsv \
        --result-dir answers/mmbench_dev_20230712 --upload-dir answers_upload/mmbench_dev_20230712 \
        --experiment <model>
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from llava.answers.jsonio import read_answers, read_tsv

DROPPED_COLUMNS = ("hint", "category", "source", "image", "comment", "l2-category")
OPTION_COLUMNS = ("A", "B", "C", "D")

# Characters XML 1.0 cannot hold at all; a model answer could contain them.
_XML_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f]")
_INTEGER = re.compile(r"-?\d+")

_CONTENT_TYPES = (
    '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
    '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
    '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
    '<Default Extension="xml" ContentType="application/xml"/>'
    '<Override PartName="/xl/workbook.xml" '
    'ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml"/>'
    '<Override PartName="/xl/worksheets/sheet1.xml" '
    'ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml"/>'
    "</Types>"
)
_ROOT_RELS = (
    '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
    '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
    '<Relationship Id="rId1" '
    'Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument" '
    'Target="xl/workbook.xml"/></Relationships>'
)
_WORKBOOK = (
    '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
    '<workbook xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" '
    'xmlns:r="http://schemas.openxmlformats.org/officeDocument/2006/relationships">'
    '<sheets><sheet name="Sheet1" sheetId="1" r:id="rId1"/></sheets></workbook>'
)
_WORKBOOK_RELS = (
    '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
    '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
    '<Relationship Id="rId1" '
    'Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/worksheet" '
    'Target="worksheets/sheet1.xml"/></Relationships>'
)


def column_letter(index: int) -> str:
    """Excel column name of a 0-based column index (0 -> A, 25 -> Z, 26 -> AA)."""
    letters = ""
    index += 1
    while index:
        index, rem = divmod(index - 1, 26)
        letters = chr(ord("A") + rem) + letters
    return letters


def _cell(ref: str, value: Any) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, int) and not isinstance(value, bool):
        return f'<c r="{ref}"><v>{value}</v></c>'
    text = escape(_XML_ILLEGAL.sub("", str(value)))
    return f'<c r="{ref}" t="inlineStr"><is><t xml:space="preserve">{text}</t></is></c>'


def write_xlsx(path: str | os.PathLike, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Write a one-sheet .xlsx (ints as numbers, everything else as text) with the standard library only."""
    sheet_rows = []
    for r, values in enumerate([list(header), *map(list, rows)], start=1):
        cells = "".join(_cell(f"{column_letter(c)}{r}", v) for c, v in enumerate(values))
        sheet_rows.append(f'<row r="{r}">{cells}</row>')
    sheet = (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
        '<worksheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main">'
        f"<sheetData>{''.join(sheet_rows)}</sheetData></worksheet>"
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("[Content_Types].xml", _CONTENT_TYPES)
        zf.writestr("_rels/.rels", _ROOT_RELS)
        zf.writestr("xl/workbook.xml", _WORKBOOK)
        zf.writestr("xl/_rels/workbook.xml.rels", _WORKBOOK_RELS)
        zf.writestr("xl/worksheets/sheet1.xml", sheet)
    os.replace(tmp, path)


def submission_table(
    questions: Sequence[dict[str, str]], answers: Sequence[dict[str, Any]]
) -> tuple[list[str], list[list[Any]]]:
    """Header and rows of the upload sheet: kept question columns plus `prediction` after the options."""
    if not questions:
        raise ValueError("the question table is empty")
    if "index" not in questions[0]:
        raise ValueError(f"the question table has no 'index' column (columns: {', '.join(questions[0])})")
    known = {row["index"] for row in questions}
    prediction: dict[str, str] = {}
    for n, answer in enumerate(answers, start=1):
        if int(answer.get("round_id", 0) or 0) != 0:
            continue
        index = str(answer["question_id"])
        if index not in known:
            raise ValueError(f"answer {n}: question_id {index} is not an index of the question table")
        if index in prediction:
            raise ValueError(f"answer {n}: question {index} is answered twice")
        prediction[index] = answer["text"]
    missing = [row["index"] for row in questions if row["index"] not in prediction]
    if missing:
        raise ValueError(f"{len(missing)} question(s) have no answer, e.g. index {missing[0]}")

    kept = [c for c in questions[0] if c not in DROPPED_COLUMNS]
    options_at = [i for i, c in enumerate(kept) if c in OPTION_COLUMNS]
    insert_at = options_at[-1] + 1 if options_at else len(kept)
    header = kept[:insert_at] + ["prediction"] + kept[insert_at:]
    rows = []
    for row in questions:
        values: list[Any] = [int(row[c]) if c == "index" and _INTEGER.fullmatch(row[c]) else row[c] for c in kept]
        rows.append(values[:insert_at] + [prediction[row["index"]]] + values[insert_at:])
    return header, rows


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--annotation-file", required=True, help="the MMBench .tsv")
    parser.add_argument("--result-dir", required=True, help="folder holding <experiment>.jsonl")
    parser.add_argument("--upload-dir", required=True, help="where <experiment>.xlsx is written")
    parser.add_argument("--experiment", required=True, help="model name")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.upload_dir) / f"{args.experiment}.xlsx"
    try:
        answers = read_answers(Path(args.result_dir) / f"{args.experiment}.jsonl")
        header, rows = submission_table(read_tsv(args.annotation_file), answers)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    write_xlsx(out, header, rows)
    print(f"wrote {len(rows)} predictions to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
