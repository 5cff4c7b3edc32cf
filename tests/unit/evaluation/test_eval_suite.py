"""The suite schema: what loads, and one clear line per bad case (file, case, field path, what is wrong)."""

from __future__ import annotations

import json

import pytest

from agentfleet.evaluation.suite import SuiteError, load_suite, read_suite

GOOD = """
tolerances: {retrieval.ndcg_at_10: 0.02, security.leaks: 0}
cases:
  - id: q1
    principal: alice
    question: How do I reverse a list?
    reference: Use reversed() or list.reverse().
    facts: [reversed]
    relevant: [faq/programming/0003.txt]
    forbidden: [contoso/faq/programming/0003.txt]
    checks:
      - {type: contains, value: reverse}
      - {type: regex, pattern: "rever(se|sed)"}
      - {type: numeric, value: 3, tolerance: 0.5}
      - {type: json_schema, schema: {type: object}}
      - {type: judge, rubric: mentions both ways}
    expect_tools: [search]
  - id: q2
    principal: bob
    question: What is the GIL?
    relevant: {faq/library/0001.txt: 3, docs/glossary/0010.txt: 1, docs/x.txt: 0}
  - id: q3
    principal: bob
    question: What is our payroll policy?
    unanswerable: true
"""


def test_a_valid_suite_loads_with_lists_as_grade_one():
    suite = load_suite(GOOD)
    assert [c.id for c in suite.cases] == ["q1", "q2", "q3"]
    assert suite.tolerances == {"retrieval.ndcg_at_10": 0.02, "security.leaks": 0}
    assert suite.cases[0].relevant == {"faq/programming/0003.txt": 1}
    assert suite.cases[1].relevant["faq/library/0001.txt"] == 3
    assert [c.type for c in suite.cases[0].checks] == ["contains", "regex", "numeric", "json_schema", "judge"]
    assert suite.cases[2].unanswerable


def test_jsonl_suite_takes_tolerances_from_their_own_line(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [
        {"tolerances": {"retrieval.mrr": 0.01}},
        {"id": "a", "principal": "alice", "question": "q?", "relevant": ["x.txt"]},
    ]) + "\n")
    suite = read_suite(path)
    assert suite.tolerances == {"retrieval.mrr": 0.01}
    assert suite.cases[0].relevant == {"x.txt": 1}


@pytest.mark.parametrize("case, line", [
    ({"id": "a", "principal": "u", "question": "q", "relevant": {"x": 5}},
     "s.yaml: case 1 (id a): relevant: x: grade must be an integer 0-3, got 5"),
    ({"id": "a", "principal": "u"}, "s.yaml: case 1 (id a): question: Field required"),
    ({"id": "a", "principal": "u", "question": "q", "checks": [{"type": "regex", "pattern": "("}]},
     "s.yaml: case 1 (id a): checks.0.pattern: not a regular expression: missing ), unterminated subpattern at "
     "position 0"),
    ({"id": "a", "principal": "u", "question": "q", "colour": "red"},
     "s.yaml: case 1 (id a): colour: Extra inputs are not permitted"),
    ({"id": "a", "principal": "u", "question": "q", "relevant": ["x"], "forbidden": ["x"]},
     "s.yaml: case 1 (id a): listed as both relevant and forbidden: x"),
    ({"id": "a", "principal": "u", "question": "q", "relevant": ["x"], "unanswerable": True},
     "s.yaml: case 1 (id a): an unanswerable case has no relevant source with a grade above 0"),
    ({"principal": "u", "question": "q"}, "s.yaml: case 1: id: Field required"),
    ("just text", "s.yaml: case 1: a case is a mapping, got str"),
], ids=["grade", "missing-question", "bad-regex", "unknown-field", "relevant-and-forbidden",
        "unanswerable-with-relevant", "no-id", "not-a-mapping"])
def test_a_bad_case_is_one_line_naming_file_case_and_field(case, line):
    import yaml

    with pytest.raises(SuiteError) as err:
        load_suite(yaml.safe_dump({"cases": [case]}), where="s.yaml")
    assert err.value.problems == [line]


def test_every_bad_case_is_reported_and_duplicate_ids_named():
    text = """
tolerances: {retrieval.speed: 1}
cases:
  - {id: a, principal: u, question: q}
  - {id: a, principal: u, question: q2}
  - {id: c, principal: u}
"""
    with pytest.raises(SuiteError) as err:
        load_suite(text, where="s.yaml")
    assert err.value.problems[0].startswith("s.yaml: tolerances: unknown metric 'retrieval.speed'")
    assert err.value.problems[1:] == ["s.yaml: case 2 (id a): id: the same id as case 1",
                                      "s.yaml: case 3 (id c): question: Field required"]


@pytest.mark.parametrize("text, line", [
    ("cases: [", "s.yaml: line 1: not valid YAML"),
    ("cases: []", "s.yaml: cases: a non-empty list of cases is required"),
    ("- 1", "s.yaml: case 1: a case is a mapping, got int"),
], ids=["yaml", "empty", "list-of-junk"])
def test_unusable_files_say_why(text, line):
    with pytest.raises(SuiteError) as err:
        load_suite(text, where="s.yaml")
    assert err.value.problems[0].startswith(line)


def test_an_unreadable_file_is_named(tmp_path):
    with pytest.raises(SuiteError, match="missing.yaml: cannot read"):
        read_suite(tmp_path / "missing.yaml")
