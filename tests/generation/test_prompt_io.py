"""read_prompts: formats and errors that name the file and line."""

import json
import sys

import pytest

from generation import PromptFileError, read_prompts


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_jsonl_and_txt(tmp_path):
    jsonl = write_jsonl(tmp_path / "p.jsonl", [{"prompt": " Hello "}, {"prompt": "Ünïcode ok", "x": 1}])
    assert read_prompts(jsonl) == ["Hello", "Ünïcode ok"]
    alt = write_jsonl(tmp_path / "q.jsonl", [{"instruction": "Do it"}])
    assert read_prompts(alt, field="instruction") == ["Do it"]
    txt = tmp_path / "p.txt"
    txt.write_bytes(b"first prompt\r\nsecond prompt\n")
    assert read_prompts(txt) == ["first prompt", "second prompt"]


@pytest.mark.parametrize(
    ("content", "line", "problem"),
    [
        (b'{"prompt": "a"}\n{"prompt": "b"\n', 2, "bad JSON"),
        (b'{"prompt": "a"}\n{"text": "b"}\n', 2, "missing field 'prompt'"),
        (b'{"prompt": "a"}\n\n{"prompt": "c"}\n', 2, "empty line"),
        (b'{"prompt": "a"}\n{"prompt": "   "}\n', 2, "empty prompt"),
        (b'{"prompt": 3}\n', 1, "must be a string"),
        (b'["prompt"]\n', 1, "expected a JSON object"),
        (b'{"prompt": "a"}\n{"prompt": "b"}\n{"prompt": "\xff\xfe"}\n', 3, "invalid UTF-8"),
    ],
)
def test_jsonl_errors_name_file_and_line(tmp_path, content, line, problem):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    with pytest.raises(PromptFileError) as err:
        read_prompts(path)
    assert f"{path}:{line}:" in str(err.value)
    assert problem in str(err.value)


def test_txt_errors_name_file_and_line(tmp_path):
    path = tmp_path / "p.txt"
    path.write_bytes(b"ok\n\xc3\x28\n")
    with pytest.raises(PromptFileError, match=r"p\.txt:2: invalid UTF-8"):
        read_prompts(path)
    path.write_bytes(b"ok\n  \nok\n")
    with pytest.raises(PromptFileError, match=r"p\.txt:2: empty line"):
        read_prompts(path)


def test_missing_unsupported_and_empty_files(tmp_path):
    with pytest.raises(PromptFileError, match="does not exist"):
        read_prompts(tmp_path / "nope.jsonl")
    (tmp_path / "p.csv").write_text("a\n")
    with pytest.raises(PromptFileError, match="unsupported"):
        read_prompts(tmp_path / "p.csv")
    (tmp_path / "e.txt").write_text("")
    with pytest.raises(PromptFileError, match="no prompts"):
        read_prompts(tmp_path / "e.txt")


def test_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"prompt": ["one", "two"]}), path)
    assert read_prompts(path) == ["one", "two"]
    with pytest.raises(PromptFileError, match="missing column 'text'"):
        read_prompts(path, field="text")
    pq.write_table(pa.table({"prompt": ["one", None]}), path)
    with pytest.raises(PromptFileError, match="row 1"):
        read_prompts(path)


def test_hf_dataset_directory(tmp_path):
    import datasets

    datasets.Dataset.from_dict({"prompt": ["a b", "c d"]}).save_to_disk(str(tmp_path / "ds"))
    assert read_prompts(tmp_path / "ds") == ["a b", "c d"]
    splits = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["x y"]})})
    splits.save_to_disk(str(tmp_path / "dd"))
    assert read_prompts(tmp_path / "dd", field="text") == ["x y"]
    with pytest.raises(PromptFileError, match="missing column 'prompt'"):
        read_prompts(tmp_path / "dd")
    (tmp_path / "plain").mkdir()
    with pytest.raises(PromptFileError, match="plain: not a datasets directory"):
        read_prompts(tmp_path / "plain")


def test_dataset_directory_without_datasets_package(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # `import datasets` now raises ImportError
    with pytest.raises(PromptFileError, match="pip install datasets"):
        read_prompts(tmp_path)
