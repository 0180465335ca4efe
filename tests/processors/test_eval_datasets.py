"""Datasets: the YAML format, per-case matcher merging, clear errors, and kept interactions."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from sluicegate.errors import SluicegateError
from sluicegate.processors.eval_datasets import (
    CaseInput,
    DatasetError,
    EvalCase,
    EvalDataset,
    case_from_interaction,
    dump_dataset,
    load_dataset,
    parse_dataset,
)

pytestmark = pytest.mark.unit

EXAMPLE = """\
name: capitals
description: Short factual answers about capitals.
matchers:
  - type: contains
    case_sensitive: false
  - type: llm_judge
    criteria: [correct, concise]
cases:
  - id: france
    input:
      messages:
        - {role: system, content: Answer in one word.}
        - {role: user, content: "What is the capital of France?"}
    expected: Paris
    tags: [europe]
  - id: invoice
    input:
      prompt: extract-invoice@production
      variables: {text: "Invoice 42, total 10.50 EUR"}
    expected: {number: 42, total: 10.5, currency: EUR}
    inherit_matchers: false
    matchers:
      - type: field_accuracy
        tolerance: 0.01
  - id: japan
    input:
      messages: [{role: user, content: "Capital of Japan?"}]
    expected: Tokyo
    matchers:
      - type: contains
        value: [Tokyo, Japan]
      - type: regex
        pattern: "^[A-Z]"
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "dataset.yaml"
    path.write_text(text)
    return path


def test_the_documented_example_loads(tmp_path: Path) -> None:
    dataset = load_dataset(_write(tmp_path, EXAMPLE))
    assert dataset.name == "capitals"
    assert [case.id for case in dataset.cases] == ["france", "invoice", "japan"]
    france = dataset.case("france")
    assert france.input.question() == "What is the capital of France?"
    assert france.tags == ["europe"]
    invoice = dataset.case("invoice")
    assert invoice.input.prompt == "extract-invoice@production"
    assert invoice.expected == {"number": 42, "total": 10.5, "currency": "EUR"}


def test_the_example_in_docs_loads(tmp_path: Path) -> None:
    docs = (Path(__file__).resolve().parents[2] / "docs" / "evals.md").read_text()
    block = docs.split("```yaml\n", 1)[1].split("```", 1)[0]
    dataset = load_dataset(_write(tmp_path, block))
    assert dataset.cases


def test_the_shipped_example_datasets_load() -> None:
    examples = Path(__file__).resolve().parents[2] / "examples" / "evals"
    paths = sorted(examples.glob("*.yaml"))
    assert paths
    for path in paths:
        assert load_dataset(path).cases


def test_case_matchers_replace_defaults_by_name_and_add_the_rest(tmp_path: Path) -> None:
    dataset = load_dataset(_write(tmp_path, EXAMPLE))

    def names(case_id: str) -> list[tuple[str, object]]:
        return [(c["type"], c.get("value")) for c in dataset.matchers_for(dataset.case(case_id))]

    assert names("france") == [("contains", None), ("llm_judge", None)]
    assert names("japan") == [
        ("contains", ["Tokyo", "Japan"]),
        ("llm_judge", None),
        ("regex", None),
    ]
    assert names("invoice") == [("field_accuracy", None)]


def test_dump_then_load_gives_the_same_dataset(tmp_path: Path) -> None:
    dataset = load_dataset(_write(tmp_path, EXAMPLE))
    target = tmp_path / "again.yaml"
    dump_dataset(dataset, target)
    assert load_dataset(target) == dataset


@settings(max_examples=40, deadline=None)
@given(
    ids=st.lists(
        st.text(st.characters(codec="utf-8"), min_size=1), min_size=1, max_size=5, unique=True
    ),
    expected=st.one_of(
        st.none(),
        st.text(st.characters(codec="utf-8")),
        st.dictionaries(st.text(min_size=1), st.integers() | st.text(), max_size=3),
    ),
)
def test_round_trip_of_arbitrary_cases(ids: list[str], expected: object) -> None:
    dataset = EvalDataset(
        name="d",
        cases=[
            EvalCase(
                id=i, input=CaseInput(messages=[{"role": "user", "content": i}]), expected=expected
            )
            for i in ids
        ],
    )
    assert parse_dataset(yaml.safe_load(dump_dataset(dataset))) == dataset


@pytest.mark.parametrize(
    ("text", "case_id", "fragment"),
    [
        ("name: d\ncases:\n  - id: a\n    input: {}\n", "a", "exactly one of messages or prompt"),
        (
            "name: d\ncases:\n  - id: a\n    input: {prompt: no-label}\n",
            "a",
            "name@label",
        ),
        (
            "name: d\ncases:\n  - id: a\n    input: {messages: [{role: robot, content: x}]}\n",
            "a",
            "role",
        ),
        (
            "name: d\ncases:\n  - id: a\n    input: {messages: [{role: user, content: x}]}\n"
            "    matchers: [{type: regex, pattern: '(unclosed'}]\n",
            "a",
            "does not compile",
        ),
        (
            "name: d\ncases:\n  - id: a\n    input: {messages: [{role: user, content: x}]}\n"
            "    matchers: [{type: contains, case_sensitiv: false}]\n",
            "a",
            "case_sensitiv",
        ),
        (
            "name: d\ncases:\n  - input: {messages: [{role: user, content: x}]}\n",
            "#0",
            "id",
        ),
    ],
)
def test_errors_name_the_file_and_the_case(
    tmp_path: Path, text: str, case_id: str, fragment: str
) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(DatasetError) as caught:
        load_dataset(path)
    assert caught.value.path == str(path)
    assert caught.value.case_id == case_id
    assert str(path) in str(caught.value)
    assert fragment in str(caught.value)
    assert isinstance(caught.value, SluicegateError)


def test_duplicate_ids_unknown_default_matcher_and_bad_yaml(tmp_path: Path) -> None:
    twice = "name: d\ncases:\n" + "  - {id: a, input: {messages: [{role: user, content: x}]}}\n" * 2
    with pytest.raises(DatasetError, match="appears twice"):
        load_dataset(_write(tmp_path, twice))
    unknown = "name: d\nmatchers: [{type: telepathy}]\ncases: []\n"
    with pytest.raises(DatasetError, match="unknown matcher type") as caught:
        load_dataset(_write(tmp_path, unknown))
    assert caught.value.case_id is None
    with pytest.raises(DatasetError, match="not valid YAML"):
        load_dataset(_write(tmp_path, "name: [unclosed\n"))
    with pytest.raises(DatasetError, match="cannot read"):
        load_dataset(tmp_path / "missing.yaml")
    with pytest.raises(DatasetError, match="mapping"):
        load_dataset(_write(tmp_path, "- just a list\n"))


def test_a_kept_interaction_becomes_a_case() -> None:
    messages = [{"role": "user", "content": "Say hi"}]
    case = case_from_interaction(messages, "Hi there!", "kept-1", tags=["prod"], threshold=0.9)
    assert case.expected == "Hi there!"
    assert case.input.messages == messages
    assert case.matchers == [{"type": "semantic_similarity", "threshold": 0.9}]
    assert case.tags == ["prod"]
    exact = case_from_interaction(messages, "Hi", "kept-2", matcher="exact")
    assert exact.matchers == [{"type": "exact"}]
    with pytest.raises(DatasetError, match="matcher must be"):
        case_from_interaction(messages, "Hi", "kept-3", matcher="regex")
    with pytest.raises(DatasetError) as caught:
        case_from_interaction([], "Hi", "kept-4")
    assert caught.value.case_id == "kept-4"


def test_question_of_multipart_content_and_of_a_prompt_reference() -> None:
    parts = CaseInput(
        messages=[
            {
                "role": "user",
                "content": [{"type": "text", "text": "Describe"}, {"type": "image_url"}],
            }
        ]
    )
    assert parts.question() == "Describe"
    ref = CaseInput(prompt="greet@3", variables={"name": "Ada"})
    assert "greet@3" in ref.question() and "Ada" in ref.question()
