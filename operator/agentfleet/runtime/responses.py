"""The OpenAI Responses API shapes of a run (https://platform.openai.com/docs/api-reference/responses), pure: a
run's steps and answer as a `response` object (its tool steps as `mcp_call` output items, the server-side tool
call item that carries its own output, so clients render them and never try to run them; the answer as one
`message`), usage in the Responses shape, and the SSE events of a stream in the documented order. Item ids are
derived from the run id and the step number, so a stream, its final `response.completed` and a later
`GET /v1/responses/{id}` name the same items (the official client checks that)."""

from __future__ import annotations

import json
from typing import Any

from .actions import FINAL
from .runs import RunRecord

__all__ = ["response_id", "run_id_of", "response_body", "usage_of", "tool_items", "message_item", "StreamEvents",
           "chained_history", "RESPONSE_KIND"]

RESPONSE_KIND = "response"
# The agent's stop reason that is OpenAI's incomplete_details.reason `max_output_tokens`; the others (max_steps,
# deadline, budget_exhausted, cancelled) have no OpenAI name and are reported as themselves.
_TOKEN_STOPS = frozenset({"max_tokens"})


def response_id(run_id: str) -> str:
    return "resp_" + run_id.removeprefix("run-")


def run_id_of(resp_id: str) -> str | None:
    """The run behind a response id; None for anything that is not one of ours (a 404, like an unknown id)."""
    hexid = resp_id.removeprefix("resp_")
    if hexid == resp_id or not hexid or len(hexid) > 64 or not all(c in "0123456789abcdef" for c in hexid):
        return None
    return "run-" + hexid


def usage_of(usage: dict[str, Any] | None) -> dict[str, Any]:
    u = usage or {}
    inp, out = int(u.get("prompt_tokens") or 0), int(u.get("completion_tokens") or 0)
    return {"input_tokens": inp, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": out,
            "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": int(u.get("total_tokens") or inp + out)}


def _is_tool_step(step: dict[str, Any]) -> bool:
    return bool(step.get("action")) and step.get("action") != FINAL


def _server_label(step: dict[str, Any]) -> str:
    action = str(step.get("action"))
    return action.split("__", 1)[0] if "__" in action else str(step.get("agent") or "agentfleet")


def tool_item(hexid: str, step: dict[str, Any]) -> dict[str, Any]:
    error = step.get("error")
    return {"id": f"mcp_{hexid}_{step.get('n', 0)}", "type": "mcp_call", "server_label": _server_label(step),
            "name": str(step.get("action")), "arguments": json.dumps(step.get("arguments") or {}, ensure_ascii=False),
            "output": step.get("observation"), "status": "failed" if error else "completed",
            "error": {"type": "mcp_tool_execution_error", "content": error} if error else None}


def tool_items(hexid: str, steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [tool_item(hexid, s) for s in steps if _is_tool_step(s)]


def message_item(hexid: str, text: str, *, status: str = "completed") -> dict[str, Any]:
    return {"id": f"msg_{hexid}", "type": "message", "role": "assistant", "status": status,
            "content": [{"type": "output_text", "text": text, "annotations": []}]}


def response_body(run: RunRecord, *, model: str, status: str | None = None, steps: list[dict[str, Any]] | None = None,
                  answer: str | None = None, summary: dict[str, Any] | None = None,
                  error: dict[str, Any] | None = None) -> dict[str, Any]:
    """The `response` object of a run: from the finished record by default, or (while streaming) from what the
    caller passes."""
    hexid = run.id.removeprefix("run-")
    result = run.result or {}
    status = status or {"running": "in_progress"}.get(run.status, run.status)
    steps = steps if steps is not None else list(result.get("steps") or [])
    answer = answer if answer is not None else result.get("answer")
    summary = summary if summary is not None else result.get("agentfleet")
    error = error if error is not None else run.error
    if status == "incomplete" and not answer and (summary or {}).get("stop_reason") == "model_error":
        status = "failed"  # nothing came back: what the chat completion answers 502 for
        error = error or {"code": "upstream_error",
                          "message": f"the model failed before any answer: {(summary or {}).get('detail')}"}
    output = tool_items(hexid, steps)
    if answer:
        output.append(message_item(hexid, answer, status="completed" if status == "completed" else "incomplete"))
    extra = run.extra or {}
    body: dict[str, Any] = {
        "id": response_id(run.id), "object": "response", "created_at": int(run.created_s), "status": status,
        "model": model, "output": output,
        "instructions": extra.get("instructions"), "previous_response_id": extra.get("previous_response_id"),
        "max_output_tokens": run.request.get("answer_max_tokens"), "metadata": extra.get("metadata") or {},
        "store": extra.get("store", True), "parallel_tool_calls": False, "tool_choice": "auto", "tools": [],
        "temperature": None, "top_p": None, "truncation": "disabled", "text": {"format": {"type": "text"}},
        "reasoning": None, "user": extra.get("user"), "background": False,
        "error": None, "incomplete_details": None, "usage": usage_of(summary.get("usage")) if summary else None}
    if run.finished_s is not None and status == "completed":
        body["completed_at"] = int(run.finished_s)
    if status == "incomplete":
        stop = (summary or {}).get("stop_reason") or (error or {}).get("code") or "incomplete"
        body["incomplete_details"] = {"reason": "max_output_tokens" if stop in _TOKEN_STOPS else stop}
    if status in ("failed", "cancelled") and error:
        body["error"] = {"code": str(error.get("code") or "server_error"), "message": str(error.get("message", ""))}
    if summary:
        body["agentfleet"] = summary
    return body


def chained_history(previous: RunRecord) -> list[dict[str, Any]]:
    """The conversation a response continues: the previous one's turns (its instructions left out, as OpenAI
    does: instructions hold for one response) and its answer."""
    history = list(previous.request.get("history") or [])
    if (previous.extra or {}).get("instructions") is not None and history:
        history = history[1:]
    answer = (previous.result or {}).get("answer")
    if answer:
        history.append({"role": "assistant", "content": answer})
    return history


class StreamEvents:
    """The SSE events of one streamed response, numbered (`sequence_number`) and with output indexes in the order
    items were added. The message item opens at the first answer text and closes before `response.completed`."""

    def __init__(self, run: RunRecord, *, model: str):
        self.run, self.model = run, model
        self.hexid = run.id.removeprefix("run-")
        self.seq = 0
        self.next_index = 0
        self.message_index: int | None = None
        self.text = ""

    def _ev(self, type_: str, **fields: Any) -> dict[str, Any]:
        ev = {"type": type_, "sequence_number": self.seq, **fields}
        self.seq += 1
        return ev

    def start(self) -> list[dict[str, Any]]:
        body = response_body(self.run, model=self.model, status="in_progress", steps=[], answer="", summary={})
        return [self._ev("response.created", response=body), self._ev("response.in_progress", response=body)]

    def step(self, step: dict[str, Any]) -> list[dict[str, Any]]:
        if not _is_tool_step(step):
            return []
        item, index = tool_item(self.hexid, step), self.next_index
        self.next_index += 1
        return [self._ev("response.output_item.added", output_index=index, item=item),
                self._ev("response.output_item.done", output_index=index, item=item)]

    def _open_message(self) -> list[dict[str, Any]]:
        self.message_index = self.next_index
        self.next_index += 1
        item = message_item(self.hexid, "", status="in_progress")
        item["content"] = []
        return [self._ev("response.output_item.added", output_index=self.message_index, item=item),
                self._ev("response.content_part.added", output_index=self.message_index, item_id=item["id"],
                         content_index=0, part={"type": "output_text", "text": "", "annotations": []})]

    def delta(self, text: str) -> list[dict[str, Any]]:
        out = self._open_message() if self.message_index is None else []
        self.text += text
        out.append(self._ev("response.output_text.delta", output_index=self.message_index, content_index=0,
                            item_id=f"msg_{self.hexid}", delta=text, logprobs=[]))
        return out

    def finish(self, final: dict[str, Any]) -> list[dict[str, Any]]:
        """Close the message (when there is one) and end with response.completed, .incomplete or .failed carrying
        `final` (the response_body of the finished run)."""
        out: list[dict[str, Any]] = []
        final_msg = next((i for i in final["output"] if i["type"] == "message"), None)
        if self.message_index is None and final_msg is not None:  # an answer that arrived whole (at a cap)
            out += self.delta(final_msg["content"][0]["text"])
        if self.message_index is not None:
            msg = next((i for i in final["output"] if i["type"] == "message"),
                       message_item(self.hexid, self.text))
            part = msg["content"][0]
            out += [self._ev("response.output_text.done", output_index=self.message_index, content_index=0,
                             item_id=msg["id"], text=part["text"], logprobs=[]),
                    self._ev("response.content_part.done", output_index=self.message_index, content_index=0,
                             item_id=msg["id"], part=part),
                    self._ev("response.output_item.done", output_index=self.message_index, item=msg)]
        kind = {"completed": "response.completed", "incomplete": "response.incomplete"}.get(final["status"],
                                                                                            "response.failed")
        out.append(self._ev(kind, response=final))
        return out
