"""The LLM judge against a real local HTTP server that answers scripted chat completions and records each request:
greedy sampling, both pairwise orders, order-flipping verdicts as ties, and the scorer's fallbacks when the judge's
output cannot be used."""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from agentfleet.evaluation.judge import PROMPTS, Judge, JudgeError, chat_completions_url, parse_json
from agentfleet.evaluation.report import build_report
from agentfleet.evaluation.scoring import lexical_faithfulness, score_case
from agentfleet.evaluation.suite import Case, Suite


class Scripted(BaseHTTPRequestHandler):
    replies: list[Any] = []      # reply contents, in order; an int is an HTTP error status
    requests: list[dict[str, Any]] = []

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Scripted.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
        reply = Scripted.replies.pop(0)
        if isinstance(reply, int):
            data, status = b'{"error": {"message": "overloaded"}}', reply
        else:
            choice = {"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}
            data = json.dumps({"id": "x", "object": "chat.completion", "model": body["model"],
                               "choices": [choice]}).encode()
            status = 200
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def server():
    Scripted.replies, Scripted.requests = [], []
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Scripted)
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    srv.shutdown()
    srv.server_close()


def user_prompt(i: int) -> str:
    return Scripted.requests[i]["body"]["messages"][-1]["content"]


def test_requests_are_greedy_and_authenticated(server):
    Scripted.replies = ['```json\n{"score": 0.8, "reason": "close"}\n```']
    judge = Judge(server, "judge-7b", api_key="sk-test")
    assert judge.correctness("How many days?", "25 days", "25 days [1]") == 0.8
    [req] = Scripted.requests
    assert req["path"] == "/v1/chat/completions" and req["auth"] == "Bearer sk-test"
    assert req["body"]["temperature"] == 0.0 and req["body"]["model"] == "judge-7b"
    assert [m["role"] for m in req["body"]["messages"]] == ["system", "user"]
    assert "REFERENCE: 25 days" in user_prompt(0) and "ANSWER: 25 days [1]" in user_prompt(0)


@pytest.mark.parametrize("first, second, winner, consistent", [
    ('{"winner": "A"}', '{"winner": "A"}', "tie", False),     # flips with the order: position bias
    ('{"winner": "A"}', '{"winner": "B"}', "a", True),
    ('{"winner": "B"}', '{"winner": "A"}', "b", True),
    ('{"winner": "tie"}', '{"winner": "tie"}', "tie", True),
    ('{"winner": "A"}', '{"winner": "tie"}', "tie", False),
    ('no idea', '{"winner": "B"}', "tie", False),
], ids=["flip-is-tie", "a-both-orders", "b-both-orders", "tie-both", "half-tie", "unparsable"])
def test_pairwise_asks_both_orders(server, first, second, winner, consistent):
    Scripted.replies = [first, second]
    got = Judge(server, "j").pairwise("Q?", "answer one", "answer two")
    assert (got["winner"], got["consistent"]) == (winner, consistent)
    assert [o["order"] for o in got["orders"]] == ["ab", "ba"]
    assert len(Scripted.requests) == 2
    assert "[ANSWER A]\nanswer one\n" in user_prompt(0) and "[ANSWER B]\nanswer two\n" in user_prompt(0)
    assert "[ANSWER A]\nanswer two\n" in user_prompt(1) and "[ANSWER B]\nanswer one\n" in user_prompt(1)


VACATION = "[1] Handbook > Vacation (hr/vacation.md): Employees earn 25 days of paid vacation per year."


def trace(answer: str) -> dict[str, Any]:
    step = {"n": 1, "agent": "a", "kind": "retrieve", "role": "none", "model": "", "action": "retrieve",
            "arguments": {"query": "q"}, "observation": VACATION, "error": None, "prompt_tokens": 0,
            "completion_tokens": 0, "cost_usd": 0.0, "seconds": 0.0, "route": ""}
    return {"case_id": "q", "principal": "alice", "status": "completed", "http_status": 200, "answer": answer,
            "error": None, "latency_s": 1.0, "steps": [step],
            "agentfleet": {"stop_reason": "answered", "steps": 1, "cost_usd": 0.001,
                           "citations": [{"n": 1, "id": "c1", "source": "hr/vacation.md", "title": "v",
                                          "headings": [], "score": 0.5}],
                           "usage": {"total_tokens": 10}}}


ANSWER = "Employees earn 25 days of paid vacation per year [1]. The office has a rooftop garden with bees."
CASE = Case(id="q", principal="alice", question="How many vacation days?")


@pytest.mark.parametrize("replies, method, score, note", [
    (['{"claims": ["Employees earn 25 vacation days a year.", "The office has a garden."]}',
      '{"verdicts": [{"claim": 1, "supported": true, "reason": "passage 1"}, '
      '{"claim": 2, "supported": false, "reason": "not mentioned"}]}'], "judge", 0.5, None),
    (["The claims are fine, I think."], "lexical", 0.5, "judge faithfulness unusable"),
    (['{"claims": ["a", "b"]}', '{"verdicts": [{"claim": 1, "supported": true}]}'], "lexical", 0.5,
     "1 usable verdicts for 2 claims"),
    ([500], "lexical", 0.5, "HTTP 500"),
    (['{"claims": []}'], "judge", None, None),
], ids=["ragas-style", "unparsable-claims", "missing-verdict", "http-error", "no-claims"])
def test_faithfulness_by_judge_or_lexical_fallback(server, replies, method, score, note):
    Scripted.replies = list(replies)
    judge = Judge(server, "j")
    got = score_case(CASE, trace(ANSWER), judge=judge)
    a = got["answers"]
    assert (a["faithfulness_method"], a["faithfulness"]) == (method, score)
    assert lexical_faithfulness(ANSWER, ["Handbook > Vacation: Employees earn 25 days of paid vacation per "
                                         "year."])[0] == 0.5   # what the fallback computes
    notes = [n for n in got["notes"] if "faithfulness" in n]
    assert len(notes) == (0 if note is None else 1) and all(note in n and "lexical fallback" in n for n in notes)
    assert len(Scripted.requests) == len(replies) and not Scripted.replies
    if method == "judge" and score is not None:
        assert "Employees earn 25 days" in user_prompt(1) and "1. Employees earn 25 vacation days" in user_prompt(1)
    report = build_report(Suite(cases=(CASE,)), [got], meta={}, judge=judge)
    assert report["meta"]["faithfulness_method"] == "judge"
    assert report["meta"]["faithfulness_fallbacks"] == (1 if method == "lexical" else 0)


def test_judge_correctness_and_agreement(server):
    case = Case(id="q", principal="alice", question="How many vacation days?", reference="25 days")
    judge = Judge(server, "j")
    # correctness, then claims (none: no verdicts asked), for each of the two cases
    Scripted.replies = ['{"score": 1.0}', '{"claims": []}',
                        '{"score": 1.0}', '{"claims": []}']
    right = score_case(case, trace("25 days [1]"), judge=judge)
    wrong = score_case(case, trace("Employees get 40 days off."), judge=judge)
    assert (right["answers"]["judge_correctness"], right["answers"]["correctness"]) == (1.0, 1.0)
    assert (wrong["answers"]["judge_correctness"], wrong["answers"]["deterministic_correctness"]) == (1.0, 0.2857)
    report = build_report(Suite(cases=(case,)), [right, wrong], meta={}, judge=judge)
    assert report["answers"]["judge_agreement"] == 0.5    # agrees on the right answer, not on the wrong one
    assert report["answers"]["correctness"] == 1.0


def test_judge_errors_fall_back_to_the_deterministic_score(server):
    case = Case(id="q", principal="alice", question="Q?", reference="25 days",
                checks=[{"type": "judge", "rubric": "cites a passage"}])
    Scripted.replies = [503, '{"claims": []}', '{"verdict": "maybe"}']
    got = score_case(case, trace("25 days [1]"), judge=Judge(server, "j"))
    assert (got["answers"]["judge_correctness"], got["answers"]["correctness"]) == (None, 1.0)
    assert any("judge correctness unavailable" in n and "HTTP 503" in n for n in got["notes"])
    assert got["checks"] == [{"type": "judge", "passed": None,
                              "detail": "skipped: judge j: rubric reply has no boolean `pass`"}]
    assert got["passed"] is True


@pytest.mark.parametrize("reply, passed", [('{"pass": true, "reason": "cites [1]"}', True),
                                           ('{"pass": "no", "reason": "no citation"}', False)],
                         ids=["pass", "fail"])
def test_rubric_check(server, reply, passed):
    case = Case(id="q", principal="alice", question="Q?", checks=[{"type": "judge", "rubric": "cites a passage"}])
    Scripted.replies = ['{"claims": []}', reply]
    got = score_case(case, trace("25 days [1]"), judge=Judge(server, "j"))
    [check] = got["checks"]
    assert check["passed"] is passed and check["detail"].startswith("cites a passage: ")
    assert got["passed"] is passed
    assert "RUBRIC: cites a passage" in user_prompt(1) and "ANSWER: 25 days [1]" in user_prompt(1)


def test_hygiene_records_the_prompts_not_the_key(server):
    h = Judge(server, "j", api_key="sk-secret", temperature=0.0).hygiene()
    assert h["model"] == "j" and h["temperature"] == 0.0 and h["url"] == server + "/chat/completions"
    assert set(h["prompts"]) == {"system", "correctness", "claims", "verdicts", "rubric", "pairwise"}
    assert h["prompt_sha256"] == hashlib.sha256(json.dumps(PROMPTS, sort_keys=True).encode()).hexdigest()
    assert "sk-secret" not in json.dumps(h)


def test_an_unreachable_judge_raises():
    judge = Judge("http://127.0.0.1:9", "j", timeout_s=2)
    with pytest.raises(JudgeError, match="127.0.0.1:9"):
        judge.rubric("Q?", "A", "r")


@pytest.mark.parametrize("url, endpoint", [
    ("http://h:8000", "http://h:8000/v1/chat/completions"), ("http://h:8000/v1/", "http://h:8000/v1/chat/completions"),
    ("http://h/v1/chat/completions", "http://h/v1/chat/completions"),
], ids=["server", "v1", "full"])
def test_chat_completions_url(url, endpoint):
    assert chat_completions_url(url) == endpoint


@pytest.mark.parametrize("text, parsed", [
    ('{"a": 1}', {"a": 1}), ('<think>{"no": 1}</think> Sure: {"a": 1} done', {"a": 1}),
    ('```json\n[1, 2]\n```', [1, 2]), ("Score: {broken", None), ("nothing", None),
], ids=["plain", "after-reasoning", "fenced", "broken", "none"])
def test_parse_json(text, parsed):
    assert parse_json(text) == parsed


def test_answers_are_compared_with_the_baselines_in_both_orders_and_summarised(server):
    from agentfleet.evaluation.cli import _score

    suite = Suite(cases=(CASE,))
    # score_case's faithfulness (claims, verdicts), then the pairwise verdict asked as (baseline, current) and as
    # (current, baseline): both orders prefer the current answer.
    Scripted.replies = ['{"claims": ["Employees earn 25 vacation days a year."]}',
                        '{"verdicts": [{"claim": 1, "supported": true}]}', '{"winner": "B"}', '{"winner": "A"}']
    [result] = _score(suite, {"q": trace(ANSWER)}, judge=Judge(server, "j"), corpus=None, principals={}, k=10,
                      baseline_answers={"q": "About 20 days, I think."})
    assert result["pairwise"]["winner"] == "b" and result["pairwise"]["consistent"] is True
    assert "[ANSWER A]\nAbout 20 days, I think.\n" in user_prompt(2)
    assert "[ANSWER B]\nAbout 20 days, I think.\n" in user_prompt(3)
    summary = build_report(suite, [result], meta={}, judge=Judge(server, "j"))["answers"]["pairwise_vs_baseline"]
    assert summary == {"cases": 1, "current_wins": 1, "baseline_wins": 0, "ties": 0, "inconsistent": 0, "errors": 0}
    # Without a baseline answer (or a judge) nothing is compared and the report says None.
    Scripted.replies = ['{"claims": []}']
    [plain] = _score(suite, {"q": trace(ANSWER)}, judge=Judge(server, "j"), corpus=None, principals={}, k=10)
    assert "pairwise" not in plain
    assert build_report(suite, [plain], meta={})["answers"]["pairwise_vs_baseline"] is None
