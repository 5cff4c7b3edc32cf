"""What makes the agent useful with a weak model and still right with a strong one, through the real server with a
scripted model: retrieve-first (the question is searched before the model plans, as the authenticated principal,
as a recorded step without a model call), the stuck-model guard (a repeated call, tool errors or searches that
find nothing new end tool use and the answer step writes the answer, with the reason recorded), and the answer
step's own prompt (the best passages before the question, the transcript template's stop sequences)."""

import asyncio
import json
from dataclasses import dataclass

from agentfleet.local.engine import TRANSCRIPT_STOP
from agentfleet.runtime.agent import ANSWER_PASSAGES, ANSWER_STOP, answer_messages
from runtime_kit import ALICE, GINA, action, final, make_config, scripted, serve


@dataclass(frozen=True)
class Hit:
    id: str
    source: str
    title: str
    trail: tuple
    score: float
    text: str
    tenant: str


DOCS = [Hit("v1", "handbook-vacation.md", "Vacation", ("Vacation",), 0.9, "Employees earn 25 days of paid vacation.",
            "acme"),
        Hit("v2", "handbook-vacation.md", "Vacation", ("Vacation", "Carry-over"), 0.8, "Up to 5 days carry over.",
            "acme"),
        Hit("s1", "handbook-vacation.md", "Vacation", ("Vacation", "Other leave"), 0.7, "Sick leave: 10 days.",
            "acme"),
        Hit("g1", "globex-handbook-vacation.md", "Globex", ("Globex",), 0.9, "Globex gives 30 days.", "globex")]


class Retriever:
    """Filters by the principal's tenant (the real one filters inside the vector search) and records each call."""
    cache = None

    def __init__(self):
        self.calls = []

    def search(self, query, principal, *, k):
        self.calls.append((query, principal.tenant, principal.groups))
        return [d for d in DOCS if d.tenant == principal.tenant][:k]


def _run(tmp_path, reply, text="How many vacation days do I get?", key=ALICE, **cfg_kw):
    retriever = Retriever()

    async def go():
        async with scripted(reply) as m:
            cfg = make_config(tmp_path, large_url=m.url, index_uri=str(tmp_path / "unused.db"), **cfg_kw)
            async with serve(cfg, tmp_path, retriever=retriever) as s:
                return await s.run_to_end(text, key=key), m.requests

    run, reqs = asyncio.run(go())
    return run, [b for b, _ in reqs], retriever


def test_the_question_is_retrieved_before_the_model_plans(tmp_path):
    def reply(body, headers):
        return final("25 days [1]") if body.get("response_format") else "unused"

    run, reqs, retriever = _run(tmp_path, reply)
    first = run["steps"][0]
    assert (first["kind"], first["role"], first["action"]) == ("retrieve", "none", "retrieve")
    assert first["arguments"] == {"query": "How many vacation days do I get?"}
    assert first["prompt_tokens"] == 0 and first["observation"].startswith("[1] Vacation (handbook-vacation.md): ")
    (query, tenant, groups), = retriever.calls  # one search, as the caller's principal
    assert (query, tenant, set(groups)) == ("How many vacation days do I get?", "acme", {"eng", "all"})
    # The passages are in the prompt of the first model call, which plans (the large model).
    msgs = reqs[0]["messages"]
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "tool"]
    assert "25 days of paid vacation" in msgs[3]["content"]
    assert json.loads(msgs[2]["content"]) == {"action": "retrieve", "arguments": {"query": first["arguments"]["query"]}}
    assert run["steps"][1]["kind"] == "plan" and run["steps"][1]["role"] == "large"
    assert run["answer"] == "25 days [1]" and run["agentfleet"]["stop_reason"] == "answered"
    assert {c["source"] for c in run["agentfleet"]["citations"]} == {"handbook-vacation.md"}


def test_retrieve_first_searches_as_the_authenticated_tenant(tmp_path):
    run, _, retriever = _run(tmp_path, lambda b, h: final("30 days [1]"), key=GINA)
    assert retriever.calls[0][1] == "globex"
    assert {c["source"] for c in run["agentfleet"]["citations"]} == {"globex-handbook-vacation.md"}
    assert "25 days" not in json.dumps(run)


def test_a_repeated_call_ends_tool_use_and_the_answer_step_answers(tmp_path):
    def reply(body, headers):
        if body.get("response_format") is None:
            return "It is 2."
        return action("calculator", expression="1+1")

    run, reqs, _ = _run(tmp_path, reply, text="what is 1+1")
    steps = run["steps"]
    assert [s["kind"] for s in steps] == ["retrieve", "plan", "tool_format", "answer"]
    assert steps[2]["error"] == "repeated call: calculator with the same arguments as step 2"
    assert steps[2]["observation"] is None  # not run again
    assert run["answer"] == "It is 2." and run["agentfleet"]["stop_reason"] == "answered"
    assert run["agentfleet"]["detail"] == "tool use stopped: the model repeated its calculator call (step 3)"
    assert "tool use stopped" in steps[3]["route"] and steps[3]["role"] == "large"
    assert len(reqs) == 3


def test_the_model_repeating_the_retrieve_first_call_is_stuck_too(tmp_path):
    def reply(body, headers):
        if body.get("response_format") is None:
            return "25 days [1]."
        return action("retrieve", query="How many vacation days do I get?")

    run, reqs, retriever = _run(tmp_path, reply)
    assert [s["kind"] for s in run["steps"]] == ["retrieve", "plan", "answer"]
    assert len(retriever.calls) == 1 and len(reqs) == 2
    assert run["answer"] == "25 days [1]."


def test_consecutive_tool_errors_end_tool_use(tmp_path):
    n = iter(range(100))

    def reply(body, headers):
        if body.get("response_format") is None:
            return "I could not compute it."
        return action("calculator", expression=f"days{next(n)} * 2")  # a name: the calculator refuses

    run, reqs, _ = _run(tmp_path, reply, text="double my days")
    steps = run["steps"]
    assert [s["kind"] for s in steps] == ["retrieve", "plan", "tool_format", "answer"]
    assert [s["error"] for s in steps[1:3]] == ["calculator: unsupported syntax: Name"] * 2
    assert run["agentfleet"]["detail"] == ("tool use stopped: 2 tool errors in a row "
                                           "(last: calculator: unsupported syntax: Name)")
    assert run["answer"] == "I could not compute it." and len(reqs) == 3


def test_searches_that_find_nothing_new_end_tool_use(tmp_path):
    n = iter(range(100))

    def reply(body, headers):
        if body.get("response_format") is None:
            return "25 days [1]."
        return action("retrieve", query=f"vacation {next(n)}")  # new words, the same passages

    run, reqs, retriever = _run(tmp_path, reply)
    assert [s["kind"] for s in run["steps"]] == ["retrieve", "plan", "tool_format", "answer"]
    assert run["agentfleet"]["detail"] == "tool use stopped: 2 searches in a row found no new passages"
    assert len(retriever.calls) == 3


def test_the_answer_prompt_puts_the_best_passages_before_the_question(tmp_path):
    def reply(body, headers):
        if body.get("response_format") is None:
            return " 25 days [1].\n"
        return action("retrieve", query="How many vacation days do I get?")

    run, reqs, _ = _run(tmp_path, reply)
    answer = reqs[-1]
    assert answer["stop"] == list(ANSWER_STOP) and answer.get("response_format") is None
    system, question = answer["messages"][0]["content"], answer["messages"][-1]
    assert question == {"role": "user", "content": "How many vacation days do I get?"}
    assert len(answer["messages"]) == 2  # no JSON action turns for a base model to imitate
    # The best ANSWER_PASSAGES passages, numbered as in the citations; the third (sick leave) is left out.
    assert "[1] Vacation (handbook-vacation.md): Employees earn 25 days" in system
    assert "[2] Vacation > Carry-over (handbook-vacation.md)" in system and "[3]" not in system
    assert ANSWER_PASSAGES == 2
    assert run["answer"] == "25 days [1]."
    assert [c["source"] for c in run["agentfleet"]["citations"]] == ["handbook-vacation.md"] * 3


def test_answer_stop_covers_the_local_engines_transcript_stop():
    assert set(TRANSCRIPT_STOP) <= set(ANSWER_STOP)


def test_answer_messages_keep_the_conversation_and_end_with_the_question():
    msgs = answer_messages("SYS", [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
                           "and now?", ["[1] a", "[2] b", "[3] c"], ["calculator(expression=1+1): 2"],
                           max_passages=2)
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user"]
    assert msgs[0]["content"] == ("SYS\n\nPassages to answer from (cite the ones you use as [n]):\n[1] a\n[2] b\n\n"
                                  "Results of the tools you called:\ncalculator(expression=1+1): 2")
    assert msgs[-1] == {"role": "user", "content": "and now?"}
    bare = answer_messages("SYS", [], "q", [])
    assert bare[0]["content"].startswith("SYS\n\nWrite the final answer")
