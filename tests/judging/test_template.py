"""Judge templates: the packaged default, rendering, and validation errors that name the field."""

from pathlib import Path

import pytest
import yaml

from judging import JudgeTemplate, TemplateError, load_template, parse_score

VALID = {
    "name": "t",
    "template": "Q: {prompt}\nA: {response}\nEnd with 'Rating: N'.",
    "score_pattern": r"rating:\s*([0-9]+)",
    "min_score": 1,
    "max_score": 10,
    "score_example": "Rating: {score}",
}


def write_yaml(tmp_path: Path, data, name="t.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data), encoding="utf-8")
    return path


def test_default_loads_and_describes_a_five_point_rubric():
    t = load_template("default")
    assert (t.name, t.min_score, t.max_score) == ("additive_5pt", 0, 5)
    assert t.regex.groups == 1
    assert "Score: <total points>" in t.template
    assert "100 words" in t.template
    # Five one-point criteria, numbered.
    assert all(f"\n{i}. " in t.template for i in range(1, 6))
    assert load_template("additive_5pt") == t


def test_default_render_places_both_texts_once():
    t = load_template()
    out = t.render("What is 2+2?", "It is 4.")
    assert out.count("What is 2+2?") == 1 and out.count("It is 4.") == 1
    assert "{prompt}" not in out and "{response}" not in out
    assert out.index("What is 2+2?") < out.index("It is 4.")


def test_braces_and_placeholders_in_user_text_stay_literal():
    t = load_template()
    prompt = "Format {x} as JSON: {\"a\": {0}} and say {response} {prompt}"
    response = "{prompt} }{ {{}} {0!r:>{1}}"
    out = t.render(prompt, response)
    assert prompt in out and response in out
    # Exactly the template's own text around them: removing both inputs gives the bare template.
    assert out.replace(prompt, "", 1).replace(response, "", 1) == t.template.replace("{prompt}", "").replace("{response}", "")


def test_custom_template_from_file(tmp_path):
    t = load_template(write_yaml(tmp_path, VALID))
    assert t.source.endswith("t.yaml")
    assert parse_score("ok. Rating: 7", t) == 7.0
    assert parse_score("Rating: 11", t) is None
    assert parse_score("Rating: 0", t) is None  # below min_score 1


def test_missing_file_names_path(tmp_path):
    with pytest.raises(TemplateError, match="nope.yaml: judge template not found"):
        load_template(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"template": "only {prompt}"}, r"'template'.*\{response\}"),
        ({"template": "only {response}"}, r"'template'.*\{prompt\}"),
        ({"template": ""}, "'template'"),
        ({"score_pattern": r"rating:\s*[0-9]+"}, "'score_pattern'.*exactly one capture group.*found 0"),
        ({"score_pattern": r"(rating):\s*([0-9]+)"}, "'score_pattern'.*exactly one capture group.*found 2"),
        ({"score_pattern": r"rating:\s*([0-9]+"}, "'score_pattern'.*not a valid regex"),
        ({"score_pattern": r"grade:\s*([0-9]+)"}, "'score_pattern'.*cannot read the score back.*'Rating: 10'"),
        ({"score_pattern": r"rating:\s*([a-z]+)"}, "'score_pattern'.*cannot read the score back"),
        ({"score_pattern": r"rating:\s*([2-9]|10)"}, "'score_pattern'.*cannot read.*'Rating: 1'"),
        ({"score_example": "Rating: N"}, r"'score_example' must contain the placeholder \{score\}"),
        ({"description": ["x"]}, "'description' must be a string"),
        ({"min_score": 10}, "'min_score' \\(10\\) must be less than 'max_score'"),
        ({"max_score": "ten"}, "'max_score' must be a finite number"),
        ({"min_score": True}, "'min_score' must be a finite number"),
        ({"max_score": float("inf")}, "'max_score' must be a finite number"),
        ({"name": 3}, "'name' must be a non-empty string"),
    ],
)
def test_invalid_field_is_named(tmp_path, change, field):
    data = {**VALID, **change}
    path = write_yaml(tmp_path, data)
    with pytest.raises(TemplateError, match=f"t.yaml: field {field}"):
        load_template(path)


def test_score_pattern_must_read_default_score_line(tmp_path):
    # Without `score_example` the judge is expected to write "Score: N"; this pattern reads "Rating" only.
    data = {k: v for k, v in VALID.items() if k != "score_example"}
    with pytest.raises(TemplateError, match="t.yaml: field 'score_pattern'.*'Score: 10'"):
        load_template(write_yaml(tmp_path, data))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- a\n- b\n", "expected a mapping.*got list"),
        ("just a string\n", "expected a mapping.*got str"),
        ("", "expected a mapping.*got NoneType"),
        ("name: [unclosed\n", "not valid YAML"),
        ("!!python/object:os.system {}\n", "not valid YAML \\(or uses a disallowed tag\\)"),
        ("name: !!python/object/apply:os.getcwd []\ntemplate: x\n", "not valid YAML.*disallowed tag.*python/object/apply"),
    ],
)
def test_bad_yaml_documents(tmp_path, text, message):
    with pytest.raises(TemplateError, match=f"t.yaml: {message}"):
        load_template(write_yaml(tmp_path, text))


def test_missing_and_unknown_fields(tmp_path):
    data = {k: v for k, v in VALID.items() if k != "max_score"}
    with pytest.raises(TemplateError, match=r"t.yaml: missing field\(s\) \['max_score'\]"):
        load_template(write_yaml(tmp_path, data))
    with pytest.raises(TemplateError, match=r"t.yaml: unknown field\(s\) \['scorepattern'\]"):
        load_template(write_yaml(tmp_path, {**VALID, "scorepattern": "x"}))


def test_template_error_is_value_error():
    assert issubclass(TemplateError, ValueError)
    with pytest.raises(ValueError, match="<inline>: field 'template'"):
        JudgeTemplate("n", "no placeholders", r"score:\s*([0-9]+)", 0, 5)
