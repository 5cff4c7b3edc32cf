"""retrieval.indexer.wait_for_store: the ingestion worker polls the Milvus its index created (a managed one takes
minutes to come up) instead of failing and spending the Job's backoffLimit; time is a parameter here."""

from __future__ import annotations

import io
import socket

import pytest

from agentfleet.retrieval.indexer import wait_for_store
from agentfleet.retrieval.store import StoreError


class Clock:
    def __init__(self):
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s


@pytest.mark.parametrize(
    "answers_after, deadline_s, sleeps, ok",
    [
        pytest.param(0, 900, [], True, id="up-already"),
        pytest.param(3, 900, [2.0, 4.0, 8.0], True, id="up-after-three-tries-backing-off"),
        pytest.param(99, 60, [2.0, 4.0, 8.0, 16.0, 30.0], False, id="gives-up-before-passing-the-deadline"),
        pytest.param(99, 200, [2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0, 30.0, 30.0], False, id="backoff-capped-at-30s"),
    ],
)
def test_wait_for_store(answers_after, deadline_s, sleeps, ok):
    clock, log, calls = Clock(), io.StringIO(), []

    def probe():
        calls.append(clock.now)
        if len(calls) <= answers_after:
            raise StoreError("connection refused")

    if ok:
        wait_for_store(probe, deadline_s=deadline_s, log=log, clock=clock, sleep=clock.sleep, what="Milvus at X")
    else:
        with pytest.raises(StoreError, match=rf"Milvus at X did not answer within {deadline_s}s: connection refused"):
            wait_for_store(probe, deadline_s=deadline_s, log=log, clock=clock, sleep=clock.sleep,
                           what="Milvus at X")
    assert clock.sleeps == sleeps
    assert clock.now <= deadline_s
    assert log.getvalue().count("waiting for Milvus at X") == len(sleeps)


def test_ingest_command_names_the_store_it_waited_for(tmp_path, capsys):
    import argparse

    from agentfleet.retrieval import cli as retrieval_cli

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    (tmp_path / "a.md").write_text("---\ntenant: t\n---\nhello")
    parser = argparse.ArgumentParser()
    retrieval_cli.add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["ingest", "--source", str(tmp_path), "--index", dead, "--collection", "c",
                              "--wait-for-store", "1"])
    assert args.func(args) == 1
    err = capsys.readouterr().err
    assert f"Milvus at {dead} did not answer within 1s" in err and "Traceback" not in err
