"""Who is calling: the runtime's key store, loaded from the file the AgentApp's Secret is mounted as, and reloaded
when that file changes (Kubernetes updates a mounted Secret in place, so keys rotate without a restart). A reload
that fails validation keeps the last good store and reports why. `authenticate` is in-memory; `reload_if_changed`
touches the disk, so async callers run it with `asyncio.to_thread` on a timer, never per request."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import Problem, SpecError
from ..retrieval.filters import Principal
from .delegation import delegated_principal
from .keystore import KeyStore, parse_keystore

__all__ = ["Identity", "load_keystore"]


def load_keystore(path: str | os.PathLike[str]) -> KeyStore:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise SpecError(str(p), [Problem("", f"cannot read the key store: {e.strerror or e}")]) from None
    return parse_keystore(text, source=str(p))


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class Identity:
    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self._stamp = _stamp(self.path)
        self.store = load_keystore(self.path)
        self.last_error: SpecError | None = None

    def authenticate(self, authorization: str | None, headers: Any = None) -> Principal:
        """The caller's effective Principal: AuthenticationFailed (HTTP 401) for a bad key, DelegationRefused (403)
        for on-behalf-of `headers` the key may not send (delegation.py)."""
        return delegated_principal(self.store.caller(authorization), headers)

    def reload_if_changed(self) -> bool:
        """Re-read the file when it changed; True when a new store is in use."""
        stamp = _stamp(self.path)
        if stamp is None or stamp == self._stamp:
            return False
        try:
            store = load_keystore(self.path)
        except SpecError as e:
            self.last_error = e
            return False
        self._stamp, self.store, self.last_error = stamp, store, None
        return True
