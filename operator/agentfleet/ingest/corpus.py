"""A source directory as documents: walk it (hidden entries and the `..data` links of a mounted ConfigMap are
skipped), read every `_access.yaml`, take worker i's deterministic slice of the files, parse them and resolve
each document's access. Nothing outside the source root is read: a symbolic link is followed only when it
resolves inside the root (a mounted ConfigMap's files are links into its `..data` directory), one that leaves it
(a mounted Secret, /proc) is reported and skipped, as is a file over MAX_FILE_BYTES. Also the reverse seam: a
ConfigMap document materialised as a directory."""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import yaml

from .access import SIDECAR, Access, AccessError, AccessRule, parse_sidecar, resolve_access
from .parse import FORMATS, ParsedDocument, ParseError, load_yaml, parse_file

__all__ = ["Document", "SkippedDocument", "AccessDefaults", "list_files", "read_sidecars", "take_slice",
           "slice_of", "load_corpus", "materialise_configmap", "inside_root", "MAX_FILE_BYTES", "SIDECAR_MAX_CHARS"]

# One document is read into memory whole; a larger file is reported and skipped.
MAX_FILE_BYTES = 64 * 1024 * 1024
SIDECAR_MAX_CHARS = 1024 * 1024


@dataclass(frozen=True)
class AccessDefaults:
    default_tenant: str | None = None
    default_groups: tuple[str, ...] = ()
    allow_public: bool = False

    @classmethod
    def from_wire(cls, data: Mapping[str, Any] | None) -> "AccessDefaults":
        """The VectorIndex spec's `access` block as JSON (`--access`)."""
        data = data or {}
        return cls(data.get("defaultTenant"), tuple(data.get("defaultGroups") or ()), bool(data.get("allowPublic")))


@dataclass(frozen=True)
class Document:
    parsed: ParsedDocument
    access: Access

    @property
    def source(self) -> str:
        return self.parsed.source


@dataclass(frozen=True)
class SkippedDocument:
    source: str
    reason: str
    is_document: bool = True  # False for a broken sidecar: reported, not counted as a skipped document


def inside_root(root: Path, path: Path) -> bool:
    """Whether `path`, every symbolic link on the way resolved, is `root` or below it."""
    try:
        return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(root))
    except (OSError, ValueError):
        return False


def _walk(root: Path) -> Iterator[tuple[str, list[str], list[str]]]:
    # os.walk does not descend into linked directories (followlinks=False): their files are never listed.
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        yield dirpath, dirnames, filenames


def _outside_links(root: Path) -> list[SkippedDocument]:
    """Entries that are symbolic links resolving outside `root` (files and directories): reported, never read."""
    out = []
    for dirpath, dirnames, filenames in _walk(root):
        for name in sorted(dirnames + filenames):
            full = Path(dirpath, name)
            if not name.startswith(".") and full.is_symlink() and not inside_root(root, full):
                out.append(SkippedDocument(full.relative_to(root).as_posix(),
                                           "symbolic link to outside the source directory"))
    return out


def list_files(root: Path) -> list[str]:
    """Relative POSIX paths of every regular file under `root`, sorted; symbolic links that resolve outside
    `root` are left out (see `_outside_links`)."""
    out = []
    for dirpath, _dirnames, filenames in _walk(root):
        for name in filenames:
            if name.startswith(".") or name == SIDECAR:
                continue
            full = Path(dirpath, name)
            if not full.is_file() or not inside_root(root, full):
                continue
            out.append(full.relative_to(root).as_posix())
    return sorted(out)


def read_sidecars(root: Path) -> tuple[dict[str, list[AccessRule]], set[str], list[SkippedDocument]]:
    """(rules by directory, directories whose sidecar is broken, the problems to report)."""
    sidecars: dict[str, list[AccessRule]] = {}
    broken: set[str] = set()
    problems: list[SkippedDocument] = []
    for dirpath, _dirnames, filenames in _walk(root):
        if SIDECAR not in filenames:
            continue
        rel = Path(dirpath).relative_to(root).as_posix()
        rel = "" if rel == "." else rel
        where = f"{rel + '/' if rel else ''}{SIDECAR}"
        try:
            path = Path(dirpath, SIDECAR)
            if not inside_root(root, path):
                raise OSError("a symbolic link to outside the source directory")
            if path.stat().st_size > SIDECAR_MAX_CHARS * 4:
                raise ValueError(f"over the limit of {SIDECAR_MAX_CHARS} characters")
            sidecars[rel] = parse_sidecar(load_yaml(path.read_text("utf-8"), max_chars=SIDECAR_MAX_CHARS), where)
        except (AccessError, yaml.YAMLError, OSError, UnicodeDecodeError, ValueError) as err:
            # A broken sidecar must not silently fall through to wider defaults: its directory is skipped.
            problems.append(SkippedDocument(where, f"unreadable access sidecar: {err}", is_document=False))
            broken.add(rel)
    return sidecars, broken, problems


def slice_of(relpath: str, workers: int) -> int:
    """The worker that owns a file: a stable hash, so a file keeps its worker when others come and go."""
    return int.from_bytes(hashlib.sha256(relpath.encode("utf-8", "surrogatepass")).digest()[:8], "big") % workers


def take_slice(relpaths: Sequence[str], *, worker: int, workers: int) -> list[str]:
    if workers < 1 or not 0 <= worker < workers:
        raise ValueError(f"worker index {worker} is outside 0..{workers - 1}")
    return [p for p in relpaths if slice_of(p, workers) == worker]


def load_corpus(root: Path, *, worker: int = 0, workers: int = 1,
                defaults: AccessDefaults = AccessDefaults()) -> Iterator[Document | SkippedDocument]:
    """Worker `worker`'s documents, in path order; what cannot be indexed comes back as SkippedDocument."""
    root = Path(root)
    sidecars, broken, problems = read_sidecars(root)
    # Sidecar problems are reported once, by worker 0 (they are not documents, so they are not counted).
    if worker == 0:
        yield from problems
    # Links that leave the source are documents someone tried to add: each is reported by the worker that owns it.
    for link in _outside_links(root):
        if slice_of(link.source, workers) == worker:
            yield link
    for rel in take_slice(list_files(root), worker=worker, workers=workers):
        parent = rel.rsplit("/", 1)[0] if "/" in rel else ""
        if any(parent == b or parent.startswith(b + "/") or b == "" for b in broken):
            yield SkippedDocument(rel, "its directory's access sidecar is unreadable")
            continue
        ext = "." + rel.rsplit(".", 1)[-1].lower() if "." in rel.rsplit("/", 1)[-1] else ""
        if ext not in FORMATS:
            yield SkippedDocument(rel, f"unsupported format {ext or '(no extension)'}")
            continue
        try:
            path = Path(os.path.realpath(Path(root, rel)))  # read what was checked to be inside the root
            if not inside_root(root, path):
                raise OSError("symbolic link to outside the source directory")
            st = path.stat()
            if st.st_nlink > 1:  # the other name may be anywhere on the volume: a Secret, another tenant's file
                raise OSError("hard link: another name for this file may lie outside the source directory")
            size = st.st_size
            if size > MAX_FILE_BYTES:
                raise OSError(f"{size} bytes is over the per-document limit of {MAX_FILE_BYTES}")
            parsed = parse_file(rel, path.read_bytes())
        except (ParseError, OSError) as err:
            yield SkippedDocument(rel, str(err))
            continue
        for doc in parsed:
            try:
                access = resolve_access(rel, doc.meta, sidecars, default_tenant=defaults.default_tenant,
                                        default_groups=defaults.default_groups, allow_public=defaults.allow_public)
            except AccessError as err:
                yield SkippedDocument(doc.source, str(err))
                continue
            if access is None:
                yield SkippedDocument(doc.source, "no access metadata (front matter, _access.yaml or defaults)")
                continue
            yield Document(doc, access)


def materialise_configmap(configmap: Mapping[str, Any], directory: Path) -> list[Path]:
    """Write a ConfigMap's `data` and `binaryData` keys as files into `directory`, as a volume mount would."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    items: list[tuple[str, bytes]] = [(k, str(v).encode("utf-8")) for k, v in (configmap.get("data") or {}).items()]
    items += [(k, base64.b64decode(v)) for k, v in (configmap.get("binaryData") or {}).items()]
    for key, content in sorted(items):
        # ConfigMap keys are [-._a-zA-Z0-9]+; refuse anything that could leave the directory.
        if not key or "/" in key or "\\" in key or key in (".", "..") or key.startswith(".."):
            raise ValueError(f"ConfigMap key {key!r} is not a plain file name")
        path = directory / key
        path.write_bytes(content)
        written.append(path)
    return written
