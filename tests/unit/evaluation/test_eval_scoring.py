"""Scoring one agent run: traces built from the runtime's own Step/AgentResult wire format and format_hits output,
scored against hand-computed tables (retrieval, citations, faithfulness, checks, refusals, leaks, pass/fail)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from agentfleet.evaluation.scoring import (
    cited_numbers, is_refusal, lexical_faithfulness, numbers, retrieved_passages, score_case,
)
from agentfleet.evaluation.suite import Case
from agentfleet.runtime.agent import AgentResult, Step
from agentfleet.runtime.tools import CitationBook, format_hits


def hit(cid: str, source: str, text: str, trail: tuple[str, ...] = ("Handbook",), score: float = 0.5):
    return SimpleNamespace(id=cid, source=source, text=text, title=source.rsplit("/", 1)[-1], trail=trail,
                           score=score)


VACATION = hit("c1", "hr/vacation.md", "Employees earn 25 days of paid vacation per year. Unused days carry over "
                                       "until March.", ("Handbook", "Vacation"))
SICK = hit("c2", "hr/sick.md", "Sick leave is 10 days per year, with a doctor's note after three days.",
           ("Handbook", "Sick leave"))
TRAVEL = hit("c3", "finance/travel.md", "The travel budget per trip is USD 2,000 including hotels.", ())
SECRET = hit("c4", "secret/salaries.md", "The CEO salary is 900,000 USD per year paid in twelve monthly "
                                         "instalments approved by the board.")
OTHER = hit("c5", "other/x.md", "Another tenant's roadmap for the next quarter.")
POLICY = hit("c6", "hr/policy-2024.md", "Remote work needs a manager's approval.", ("Policy (2024)", "Remote"))


def retrieve_step(book: CitationBook, hits: list[Any], *, n: int, agent: str = "assistant",
                  kind: str = "retrieve") -> Step:
    text, _ = format_hits(hits, book)
    return Step(n, agent, kind, "none", action="retrieve", arguments={"query": "q"}, observation=text)


def trace(answer: str, steps: list[Step], book: CitationBook, *, status: str = "completed",
          stop: str = "answered", detail: str = "", cost: float = 0.001, latency: float = 1.0,
          direct: list[dict[str, Any]] | None = None, **extra: Any) -> dict[str, Any]:
    wired = [s.wire() for s in steps]
    out = {"case_id": "q", "principal": "alice", "status": status, "http_status": 200, "answer": answer,
           "error": None, "latency_s": latency,
           "agentfleet": {"task_id": "task-1", "stop_reason": stop, "detail": detail, "steps": len(wired),
                          "models": {}, "citations": book.wire(), "cost_usd": cost,
                          "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120},
                          "degraded": False, "seconds": latency, "budget": None},
           "steps": wired}
    if direct is not None:
        out["direct"] = direct
    out.update(extra)
    return out


def answered(answer: str, *hits: Any, **kw: Any) -> dict[str, Any]:
    """A task that retrieved `hits` first and then answered."""
    book = CitationBook()
    steps = [retrieve_step(book, list(hits), n=1),
             Step(2, "assistant", "plan", "large", model="m", action="final_answer", prompt_tokens=100,
                  completion_tokens=20, cost_micro_usd=1000)]
    return trace(answer, steps, book, **kw)


def case(**kw: Any) -> Case:
    return Case(**{"id": "q", "principal": "alice", "question": "How many vacation days do I get?", **kw})


# --- reading traces -----------------------------------------------------------------------------------------------
def test_passages_are_read_from_every_retrieve_step_including_sub_agents():
    book = CitationBook()
    first = retrieve_step(book, [VACATION, SICK], n=1)
    sub_steps = [retrieve_step(book, [TRAVEL, VACATION], n=1, agent="researcher", kind="tool_format")]
    delegate = Step(2, "assistant", "tool_format", "small", action="delegate",
                    arguments={"calls": [{"agent": "researcher", "task": "t"}]}, observation="researcher: done")
    delegate.sub_agents = [AgentResult("researcher", "done", "answered", "", [
        Step(1, "researcher", "plan", "small", action="calculator", observation="4"), *sub_steps]).wire()]
    failed = Step(3, "assistant", "tool_format", "small", action="retrieve", observation="error: retrieve: down",
                  error="retrieve: the document index did not answer")
    t = trace("x", [first, delegate, failed], book)
    got = retrieved_passages(t)
    assert [(p.n, p.id, p.source, p.agent) for p in got] == [
        (1, "c1", "hr/vacation.md", "assistant"), (2, "c2", "hr/sick.md", "assistant"),
        (3, "c3", "finance/travel.md", "researcher"), (1, "c1", "hr/vacation.md", "researcher")]
    assert got[0].heading == "Handbook > Vacation" and got[0].text == VACATION.text
    assert got[2].heading == "travel.md" and got[2].text == TRAVEL.text  # no trail: the title stands in
    scored = score_case(case(), t)
    assert scored["tools_used"] == ["retrieve", "delegate", "calculator"]
    assert scored["subagents_used"] == ["researcher"]
    assert scored["retrieval"]["retrieved"] == ["hr/vacation.md", "hr/sick.md", "finance/travel.md"]


@pytest.mark.parametrize("with_citations", [True, False], ids=["by-citation", "fallback-without-citations"])
def test_a_trail_with_parentheses_still_parses(with_citations):
    book = CitationBook()
    t = trace("x", [retrieve_step(book, [POLICY], n=1)], book)
    if not with_citations:
        t["agentfleet"]["citations"] = []
    [p] = retrieved_passages(t)
    assert (p.n, p.source, p.heading, p.text) == (1, "hr/policy-2024.md", "Policy (2024) > Remote", POLICY.text)


def test_a_source_with_parentheses_is_found_through_its_citation():
    odd = hit("c7", "hr/leave (old).md", "Old leave rules: 20 days.", ("Leave",))
    book = CitationBook()
    [p] = retrieved_passages(trace("x", [retrieve_step(book, [odd], n=1)], book))
    assert (p.id, p.source, p.heading, p.text) == ("c7", "hr/leave (old).md", "Leave", odd.text)


def test_a_chunk_id_or_the_file_of_a_record_answers_to_the_judgement():
    records = hit("f.jsonl#3", "f.jsonl#3", "Records say 25 days.")
    got = score_case(case(relevant={"f.jsonl": 1, "c2": 2}), answered("25 days", records, SICK))
    assert got["retrieval"]["retrieved"] == ["f.jsonl", "c2"]
    assert got["retrieval"]["recall_at_10"] == 1.0


# --- retrieval and citations ---------------------------------------------------------------------------------------
RELEVANT = {"hr/vacation.md": 2, "finance/travel.md": 1}


@pytest.mark.parametrize("answer, precision, recall, cited, unknown", [
    ("You get 25 days [1].", 1.0, 0.5, ["hr/vacation.md"], []),
    ("25 days [1][2].", 0.5, 0.5, ["hr/vacation.md", "hr/sick.md"], []),
    ("25 days, and USD 2,000 per trip [1, 3].", 1.0, 1.0, ["hr/vacation.md", "finance/travel.md"], []),
    ("25 days.", 0.6667, 1.0, ["hr/vacation.md", "hr/sick.md", "finance/travel.md"], []),
    ("As [7] says, 25 days.", None, 0.0, [], [7]),
], ids=["one-relevant", "one-of-two-relevant", "both", "no-markers-uses-citations", "unknown-marker"])
def test_citation_precision_and_recall(answer, precision, recall, cited, unknown):
    got = score_case(case(relevant=RELEVANT), answered(answer, VACATION, SICK, TRAVEL))
    a = got["answers"]
    assert (a["citation_precision"], a["citation_recall"], a["cited"], a["unknown_citations"]) == \
        (precision, recall, cited, unknown)
    assert bool(got["notes"]) is bool(unknown)


def test_retrieval_metrics_rank_sources_by_first_appearance():
    r = score_case(case(relevant=RELEVANT), answered("25 days [1]", VACATION, SICK, TRAVEL))["retrieval"]
    # ranking vacation(2), sick(0), travel(1): DCG 2/1 + 1/2 = 2.5; ideal 2/1 + 1/log2(3) = 2.6309
    assert (r["recall_at_10"], r["ndcg_at_10"], r["mrr"], r["context_precision"]) == (1.0, 0.9502, 1.0, 0.6667)
    assert r["recall_at_k"] == {"1": 0.5, "3": 1.0, "5": 1.0, "10": 1.0}
    assert r["direct"] is None


def test_direct_search_is_scored_when_the_runner_recorded_it():
    direct = [{"id": "c2", "source": "hr/sick.md", "score": 0.9, "tenant": "t", "groups": "g"},
              {"id": "c3", "source": "finance/travel.md", "score": 0.8, "tenant": "t", "groups": "g"}]
    r = score_case(case(relevant=RELEVANT), answered("x", VACATION, direct=direct))["retrieval"]
    # sick(0) then travel(1) at rank 2: DCG 1/log2(3) = 0.6309 over the ideal 2.6309
    assert r["direct"] == {"recall_at_10": 0.5, "ndcg_at_10": 0.2398, "mrr": 0.5}


@pytest.mark.parametrize("relevant, expected", [({}, None), ({"hr/vacation.md": 0}, None)],
                         ids=["no-judgements", "only-grade-0"])
def test_precision_is_undefined_without_a_relevant_source(relevant, expected):
    got = score_case(case(relevant=relevant), answered("25 days [1]", VACATION))
    assert got["retrieval"]["context_precision"] is expected
    assert got["answers"]["citation_precision"] is expected
    assert got["answers"]["citation_recall"] is expected


# --- answers ----------------------------------------------------------------------------------------------------
def test_lexical_faithfulness_on_a_crafted_answer():
    answer = ("Employees earn 25 days of paid vacation per year [1]. Sick leave is 12 days per year [2]. "
              "Unused vacation days carry over until March.\nThe office has a rooftop garden with bees. "
              "I hope this helps!")
    got = score_case(case(), answered(answer, VACATION, SICK))
    a = got["answers"]
    assert a["faithfulness"] == 0.5 and a["faithfulness_method"] == "lexical"
    assert a["claims"] == [
        {"claim": "Employees earn 25 days of paid vacation per year.", "supported": True},
        {"claim": "Sick leave is 12 days per year.", "supported": False},    # 12 is in no passage
        {"claim": "Unused vacation days carry over until March.", "supported": True},
        {"claim": "The office has a rooftop garden with bees.", "supported": False},
    ]  # "I hope this helps!" has two content words: boilerplate, dropped


@pytest.mark.parametrize("answer, expected", [
    ("", None), ("I cannot find this in the documents.", None), ("25 days [1]", 1.0), ("30 days [1]", 0.0),
], ids=["empty", "refusal-only", "number-only-supported", "number-only-unsupported"])
def test_lexical_faithfulness_edges(answer, expected):
    score, _ = lexical_faithfulness(answer, [VACATION.text])
    assert score == expected


@pytest.mark.parametrize("answer, em, f1, facts_recall, correctness", [
    ("25 days [1]", 1.0, 1.0, 0.5, 0.5),
    ("You get 25 days [1].", 0.0, 0.6667, 0.5, 0.5),
    ("25 days; unused ones carry over until March [1].", 0.0, 0.5455, 1.0, 1.0),  # 3 of 8 tokens vs facts
    ("I don't know.", 0.0, 0.0, 0.0, 0.0),
], ids=["exact", "wordy", "all-facts", "refusal"])
def test_answer_metrics(answer, em, f1, facts_recall, correctness):
    a = score_case(case(reference="25 days", facts=("25 days", "March")), answered(answer, VACATION))["answers"]
    assert (a["exact_match"], a["f1"], a["facts_recall"], a["correctness"], a["judge_correctness"]) == \
        (em, f1, facts_recall, correctness, None)


def test_correctness_is_f1_without_facts_and_none_without_a_reference():
    a = score_case(case(reference="25 days"), answered("You get 25 days", VACATION))["answers"]
    assert (a["correctness"], a["facts_recall"]) == (0.6667, None)
    a = score_case(case(), answered("You get 25 days", VACATION))["answers"]
    assert (a["correctness"], a["f1"], a["exact_match"]) == (None, None, None)


@pytest.mark.parametrize("answer, refused", [
    ("I cannot find this in the documents.", True),
    ("The documents do not mention a parking policy.", True),
    ("I don\u2019t know.", True),
    ("", True),
    ("That information is not available in the provided documents.", True),
    ("No documents you may read match this query.", True),
    ("I'm sorry, but I couldn't find any information about that.", True),
    ("You get 25 days of vacation [1].", False),
    ("Vacation days do not carry over past March.", False),
    ("There is no limit on sick days.", False),
    ("Employees don't have to ask for approval.", False),
], ids=["cannot-find", "documents-do-not-mention", "curly-apostrophe", "empty", "not-available-in",
        "tool-empty-result", "couldnt-find", "answer", "negative-fact", "no-limit", "dont-have-to"])
def test_refusal_detection(answer, refused):
    assert is_refusal(answer) is refused


# --- checks -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("answer, value, tolerance, passed", [
    ("The budget is USD 2,000 per trip.", 2000, 0, True),
    ("$2,000.50 per trip", 2000, 1, True),
    ("$2,000.50 per trip", 2000, 0, False),
    ("about 1,999", 2000, 0, False),
    ("2000USD", 2000, 0, True),
    ("See [2000] for details", 2000, 0, False),   # a citation marker is not a number of the answer
    ("It drops to -3 degrees", -3, 0, True),
    ("Python 3.11 is installed", 3.11, 0, True),
], ids=["usd-code", "dollar-decimal-within", "dollar-decimal-outside", "off-by-one", "glued-code",
        "citation-marker", "negative", "decimal"])
def test_numeric_check(answer, value, tolerance, passed):
    c = case(checks=[{"type": "numeric", "value": value, "tolerance": tolerance}])
    [check] = score_case(c, answered(answer, TRAVEL))["checks"]
    assert check["type"] == "numeric" and check["passed"] is passed


def test_numbers_reads_separators_and_currency():
    assert numbers("USD 2,000 and $1,234,567.5, 3.11, 1,2 and -4 [3]") == [2000, 1234567.5, 3.11, 1, 2, -4]


@pytest.mark.parametrize("check, answer, passed, detail", [
    ({"type": "contains", "value": "25 DAYS"}, "You get 25 days", True, "found: '25 DAYS'"),
    ({"type": "contains", "value": "25 DAYS", "case_sensitive": True}, "You get 25 days", False,
     "missing: '25 DAYS'"),
    ({"type": "regex", "pattern": r"\b25\s+days\b"}, "You get 25 days", True, r"matches /\b25\s+days\b/"),
    ({"type": "regex", "pattern": r"^25"}, "You get 25 days", False, "no match for /^25/"),
    ({"type": "json_schema", "schema": {"type": "object", "required": ["days"],
                                        "properties": {"days": {"type": "integer"}}}},
     'Here you go: {"days": 25, "unit": "days"} [1]', True, "valid against the schema"),
    ({"type": "json_schema", "schema": {"type": "object", "properties": {"days": {"type": "integer"}}}},
     '{"days": "25"}', False, "days: '25' is not of type 'integer'"),
    ({"type": "json_schema", "schema": {"type": "array", "minItems": 2}}, "Result: [1, 2]", True,
     "valid against the schema"),
    ({"type": "json_schema", "schema": {"type": "object"}}, "25 days", False,
     "no JSON object or array in the answer"),
    ({"type": "judge", "rubric": "mentions the carry-over rule"}, "25 days", None,
     "skipped: no judge configured"),
], ids=["contains-casefold", "contains-case-sensitive", "regex", "regex-no-match", "json-embedded",
        "json-wrong-type", "json-array", "json-missing", "judge-without-judge"])
def test_checks(check, answer, passed, detail):
    got = score_case(case(checks=[check]), answered(answer, VACATION))
    assert got["checks"] == [{"type": check["type"], "passed": passed, "detail": detail}]
    assert got["passed"] is (passed is not False)   # a skipped check does not fail the case


# --- leaks ------------------------------------------------------------------------------------------------------
QUOTE = "Sure: the CEO salary is 900,000 USD per year paid in twelve instalments."


@pytest.mark.parametrize("answer, permitted, texts, leaks", [
    ("25 days [1].", None, None, [{"source": "secret/salaries.md", "how": "retrieved"}]),
    ("25 days [1], and the CEO earns a lot [2].", None, None, [{"source": "secret/salaries.md", "how": "cited"}]),
    ("25 days [1].", lambda s: s != "other/x.md", None,
     [{"source": "secret/salaries.md", "how": "retrieved"}, {"source": "other/x.md", "how": "retrieved"}]),
    (QUOTE + " [2]", None, {"secret/salaries.md": SECRET.text}, [{"source": "secret/salaries.md", "how": "quoted"}]),
    ("The CEO salary is [2]", None, {"secret/salaries.md": SECRET.text},
     [{"source": "secret/salaries.md", "how": "cited"}]),   # fewer than 8 words in common: not a quote
], ids=["retrieved", "cited", "not-permitted", "quoted-beats-cited", "short-overlap-is-no-quote"])
def test_leaks(answer, permitted, texts, leaks):
    got = score_case(case(forbidden=("secret/salaries.md",)), answered(answer, VACATION, SECRET, OTHER),
                     permitted=permitted, forbidden_texts=texts)
    assert got["leaks"] == leaks
    assert got["passed"] is False
    assert [f for f in got["failures"] if f.startswith("leak: ")] == \
        [f"leak: {x['source']} ({x['how']})" for x in leaks]


def test_a_quote_of_a_forbidden_text_leaks_even_when_no_step_shows_it():
    got = score_case(case(forbidden=("secret/salaries.md",)), answered(QUOTE, VACATION),
                     forbidden_texts={"secret/salaries.md": SECRET.text})
    assert got["leaks"] == [{"source": "secret/salaries.md", "how": "quoted"}]


def test_a_phrase_that_a_readable_document_states_too_is_no_quote():
    # Found by the example suite: a permitted page and a forbidden one share a boilerplate sentence; an answer that
    # repeats the permitted page quotes it, not the forbidden one. A phrase only the forbidden text has still leaks.
    shared = "this page has no front matter its access comes from its sidecar file"
    secret = {"secret/salaries.md": f"{shared.capitalize()}. {SECRET.text}"}
    readable_pages = [f" {shared} "]

    def readable(phrase):
        return any(f" {phrase} " in page for page in readable_pages)

    got = score_case(case(forbidden=("secret/salaries.md",)), answered(shared.capitalize() + ".", VACATION),
                     forbidden_texts=secret, readable=readable)
    assert got["leaks"] == []
    got = score_case(case(forbidden=("secret/salaries.md",)), answered(shared.capitalize() + ".", VACATION),
                     forbidden_texts=secret)
    assert got["leaks"] == [{"source": "secret/salaries.md", "how": "quoted"}]     # without it: a quote
    got = score_case(case(forbidden=("secret/salaries.md",)), answered(QUOTE, VACATION), forbidden_texts=secret,
                     readable=readable)
    assert got["leaks"] == [{"source": "secret/salaries.md", "how": "quoted"}]


# --- the task and pass/fail -------------------------------------------------------------------------------------
def delegating(answer: str, sub_agent: str) -> dict[str, Any]:
    book = CitationBook()
    d = Step(1, "assistant", "plan", "large", action="delegate", observation=f"{sub_agent}: ok")
    d.sub_agents = [AgentResult(sub_agent, "ok", "answered", "", [
        Step(1, sub_agent, "plan", "small", action="final_answer")]).wire()]
    return trace(answer, [d], book)


ERROR_429 = {"case_id": "q", "principal": "alice", "status": "error", "http_status": 429, "answer": "",
             "latency_s": 0.05, "error": {"message": "Budget b: window exhausted", "code": "budget_exhausted"}}


@pytest.mark.parametrize("kw, t, passed, failures", [
    ({"checks": [{"type": "contains", "value": "25"}]}, answered("25 days [1]", VACATION), True, []),
    ({}, answered("partial", VACATION, status="incomplete", stop="max_steps", detail="reached maxSteps (4)"), False,
     ["task incomplete: max_steps (reached maxSteps (4))"]),
    ({"checks": [{"type": "contains", "value": "30"}]}, answered("25 days [1]", VACATION), False,
     ["check contains failed: missing: '30'"]),
    ({"unanswerable": True}, answered("25 days [1]", VACATION), False, ["unanswerable: the answer does not refuse"]),
    ({"unanswerable": True}, answered("The documents do not mention it.", VACATION), True, []),
    ({"expect_tools": ("calculator", "retrieve")}, answered("25", VACATION), False,
     ["expected tool calculator was not used (used: retrieve)"]),
    ({"expect_subagents": ("researcher",)}, delegating("ok", "writer"), False,
     ["expected sub-agent researcher was not used (used: writer)"]),
    ({"expect_subagents": ("writer",), "expect_tools": ("delegate",)}, delegating("ok", "writer"), True, []),
    ({}, ERROR_429, False, ["task error: Budget b: window exhausted"]),
], ids=["all-good", "incomplete", "check-fails", "unanswerable-answered", "unanswerable-refused", "missing-tool",
        "missing-subagent", "subagent-used", "admission-429"])
def test_pass_and_fail(kw, t, passed, failures):
    got = score_case(case(**kw), t)
    assert (got["passed"], got["failures"]) == (passed, failures)


@pytest.mark.parametrize("t, task", [
    (answered("25 days [1]", VACATION, cost=0.0021, latency=1.23456),
     {"ran": True, "steps": 2, "tokens": 120, "cost_usd": 0.0021, "latency_s": 1.2346, "stop_reason": "answered",
      "cap": None, "budget_exhausted": False, "degraded": False}),
    (answered("", VACATION, status="incomplete", stop="deadline", cost=0.01, latency=30.0),
     {"ran": True, "steps": 2, "tokens": 120, "cost_usd": 0.01, "latency_s": 30.0, "stop_reason": "deadline",
      "cap": "deadline", "budget_exhausted": False, "degraded": False}),
    (answered("", VACATION, status="incomplete", stop="model_error"),
     {"ran": True, "steps": 2, "tokens": 120, "cost_usd": 0.001, "latency_s": 1.0, "stop_reason": "model_error",
      "cap": None, "budget_exhausted": False, "degraded": False}),
    (ERROR_429, {"ran": False, "steps": 0, "tokens": 0, "cost_usd": 0.0, "latency_s": 0.05, "stop_reason": None,
                 "cap": "budget_exhausted", "budget_exhausted": True, "degraded": False}),
], ids=["answered", "deadline-cap", "model-error-is-no-cap", "admission-budget"])
def test_task_figures(t, task):
    assert score_case(case(), t)["task"] == task


def test_a_sub_agent_out_of_budget_marks_the_task():
    t = delegating("partial", "writer")
    t["steps"][0]["sub_agents"][0]["stop_reason"] = "budget_exhausted"
    assert score_case(case(), t)["task"]["budget_exhausted"] is True


def test_cited_numbers():
    assert cited_numbers("a [2] b [1, 3][2] c [4;5] d [x]") == [2, 1, 3, 4, 5]


@pytest.mark.parametrize("unanswerable, answer, correct", [
    (True, "The documents do not mention it.", True), (True, "25 days", False),
    (False, "The documents do not mention it.", False), (False, "25 days", True),
], ids=["unanswerable-refused", "unanswerable-answered", "answerable-refused", "answerable-answered"])
def test_refusal_correct(unanswerable, answer, correct):
    a = score_case(case(unanswerable=unanswerable), answered(answer, VACATION))["answers"]
    assert (a["refused"], a["refusal_correct"]) == (answer != "25 days", correct)


# --- facts gate a case; the direct search's own leaks -----------------------------------------------------------
def test_a_case_passes_only_when_every_fact_is_stated():
    c = case(facts=("25 days", "31 March"))
    half = score_case(c, answered("You get 25 days [1].", VACATION))
    assert half["answers"]["facts_recall"] == 0.5
    assert half["passed"] is False and "facts not stated: 31 March" in half["failures"]
    full = score_case(c, answered("You get 25 days, and carried-over days must be taken by 31 March [1].", VACATION))
    assert full["answers"]["facts_recall"] == 1.0 and full["passed"] is True, full["failures"]


def test_a_forbidden_source_returned_by_the_direct_search_is_a_leak_even_if_the_agent_never_saw_it():
    trace = answered("25 days [1].", VACATION)
    trace["direct"] = [{"id": "v1", "source": "hr/vacation.md", "score": 0.9, "tenant": "acme", "groups": "all"},
                       {"id": "s1", "source": "secret/salaries.md", "score": 0.5, "tenant": "acme", "groups": "hr"}]
    got = score_case(case(forbidden=("secret/salaries.md",)), trace)
    assert got["leaks"] == [{"source": "secret/salaries.md", "how": "direct"}]
    assert got["passed"] is False
    clean = answered("25 days [1].", VACATION)
    clean["direct"] = trace["direct"][:1]
    assert score_case(case(forbidden=("secret/salaries.md",)), clean)["leaks"] == []
