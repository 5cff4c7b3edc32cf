"""URL sources fetched into a local directory, so the ingest pipeline reads them as it reads a mounted ConfigMap or
PVC: list the objects, keep worker i's slice and every `_access.yaml` (`ingest.remote.plan_fetch`), stream each to
a temporary directory under a per-object and a total byte bound. s3:// goes through boto3 (the default credential
chain: AWS_* env, shared config, IRSA web identity, ECS/IMDS; `AWS_ENDPOINT_URL[_S3]` or `--endpoint-url` for an
S3-compatible store); gs:// through the GCS JSON API with google-auth's default credentials (a key file named by
GOOGLE_APPLICATION_CREDENTIALS, Workload Identity through the metadata server, or `STORAGE_EMULATOR_HOST`
without credentials, as google-cloud-storage does); http(s):// is one document or a .tar(.gz)/.zip of a source
directory. Every failure is a `SourceError` whose message names the URL and what to fix."""

from __future__ import annotations

import json
import os
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable, Iterator, Mapping

from ..ingest.access import SIDECAR
from ..ingest.corpus import SkippedDocument, slice_of
from ..ingest.remote import (
    BROKEN_SIDECAR, FetchLimits, FetchPlan, RemoteObject, SourceURL, SourceURLError, archive_member_path,
    parse_source_url, plan_fetch,
)

__all__ = ["SourceError", "FetchResult", "fetch_source", "GCS_ENDPOINT", "GCS_SCOPE", "AUTHORIZATION_ENV"]

GCS_ENDPOINT = "https://storage.googleapis.com"
GCS_SCOPE = "https://www.googleapis.com/auth/devstorage.read_only"
# An http(s) source behind auth: the value of this variable is sent as the Authorization header.
AUTHORIZATION_ENV = "AGENTFLEET_SOURCE_AUTHORIZATION"
_CHUNK = 1024 * 1024


class SourceError(RuntimeError):
    """A URL source that cannot be listed or read; the message names the URL and the fix."""


@dataclass
class FetchResult:
    root: Path
    skipped: list[SkippedDocument] = field(default_factory=list)
    fetched: int = 0
    bytes: int = 0


class _Budget:
    """The per-object and total byte bounds, enforced while streaming (a listed size can lie)."""

    def __init__(self, url: str, limits: FetchLimits) -> None:
        self.url, self.limits, self.total = url, limits, 0

    def copy(self, read: Callable[[int], bytes], path: Path, *, max_bytes: int | None = None,
             what: str = "") -> int:
        limit = self.limits.max_object_bytes if max_bytes is None else max_bytes
        path.parent.mkdir(parents=True, exist_ok=True)
        n = 0
        with open(path, "wb") as out:
            while True:
                block = read(_CHUNK)
                if not block:
                    break
                n += len(block)
                self.total += len(block)
                if n > limit:
                    raise _TooLarge(f"over the per-object limit of {limit} bytes")
                if self.total > self.limits.max_total_bytes:
                    raise SourceError(f"{self.url}: {what or path.name}: this worker's share is over the total "
                                      f"limit of {self.limits.max_total_bytes} bytes (raise --max-total-mb, or "
                                      f"spread the corpus over more workers)")
                out.write(block)
        return n


class _TooLarge(Exception):
    pass


def fetch_source(url: str, into: Path, *, worker: int = 0, workers: int = 1, limits: FetchLimits = FetchLimits(),
                 endpoint_url: str | None = None, region: str | None = None,
                 env: Mapping[str, str] | None = None) -> FetchResult:
    """Worker `worker`'s part of the source at `url`, written under `into` (which must exist and be empty)."""
    env = os.environ if env is None else env
    try:
        src = parse_source_url(url)
    except SourceURLError as err:
        raise SourceError(str(err)) from None
    into = Path(into)
    if src.scheme == "s3":
        return _S3(src, endpoint_url=endpoint_url, region=region, limits=limits, env=env).fetch(
            into, worker=worker, workers=workers)
    if src.scheme == "gs":
        return _GCS(src, endpoint_url=endpoint_url, limits=limits, env=env).fetch(
            into, worker=worker, workers=workers)
    return _fetch_http(src, into, worker=worker, workers=workers, limits=limits, env=env)


def _fetch_planned(src: SourceURL, plan: FetchPlan, into: Path, limits: FetchLimits,
                   open_object: Callable[[str], Any]) -> FetchResult:
    """Stream every planned object; `open_object(key)` returns a context manager yielding a `read(n)`."""
    budget = _Budget(src.url, limits)
    result = FetchResult(into, list(plan.skipped))
    for rel in plan.broken_sidecars:
        (into / rel).parent.mkdir(parents=True, exist_ok=True)
        (into / rel).write_bytes(BROKEN_SIDECAR)
    for key, rel in plan.fetch:
        path = into / rel
        try:
            with open_object(key) as read:
                budget.copy(read, path, what=key)
        except _TooLarge as err:
            path.unlink(missing_ok=True)
            is_sidecar = rel.rsplit("/", 1)[-1] == SIDECAR
            result.skipped.append(SkippedDocument(rel, str(err), is_document=not is_sidecar))
            if is_sidecar:
                path.write_bytes(BROKEN_SIDECAR)
            continue
        result.fetched += 1
    result.bytes = budget.total
    return result


# --- s3:// ---------------------------------------------------------------------------------------------------

class _S3:
    def __init__(self, src: SourceURL, *, endpoint_url: str | None, region: str | None, limits: FetchLimits,
                 env: Mapping[str, str]) -> None:
        import boto3
        from botocore.config import Config

        self.src, self.limits = src, limits
        endpoint = endpoint_url or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None
        # S3-compatible stores (MinIO, Ceph, moto) rarely resolve virtual-hosted bucket names: path style there.
        s3_cfg = {"addressing_style": "path"} if endpoint else {}
        cfg = Config(connect_timeout=limits.timeout_s, read_timeout=limits.timeout_s,
                     retries={"max_attempts": 5, "mode": "standard"}, s3=s3_cfg)
        # No keys are passed: boto3's default chain finds AWS_* env, a profile, IRSA's web identity token
        # (AWS_ROLE_ARN + AWS_WEB_IDENTITY_TOKEN_FILE) or the instance/pod role.
        session = boto3.session.Session(region_name=region or env.get("AWS_REGION")
                                        or env.get("AWS_DEFAULT_REGION") or None)
        self.client = session.client("s3", endpoint_url=endpoint, config=cfg)
        self.endpoint = endpoint

    def _error(self, err: Exception, doing: str) -> SourceError:
        from botocore.exceptions import (
            ClientError, ConnectTimeoutError, EndpointConnectionError, NoCredentialsError, PartialCredentialsError,
            ReadTimeoutError,
        )

        where = f"{self.src.url}{' via ' + self.endpoint if self.endpoint else ''}"
        if isinstance(err, (NoCredentialsError, PartialCredentialsError)):
            return SourceError(f"{where}: no AWS credentials found while {doing} (give the ingestion Job "
                               f"AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY through spec.source.credentialsSecretRef, "
                               f"or a ServiceAccount with an IAM role: spec.ingestion.serviceAccountName)")
        if isinstance(err, (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError)):
            return SourceError(f"{where}: cannot reach the S3 endpoint while {doing}: {err}")
        if isinstance(err, ClientError):
            code = str(err.response.get("Error", {}).get("Code", ""))
            status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("NoSuchBucket",):
                return SourceError(f"{where}: no such bucket {self.src.bucket!r}")
            if code in ("AccessDenied", "AllAccessDisabled", "Forbidden") or status == 403:
                return SourceError(f"{where}: access denied while {doing} (the credentials need s3:ListBucket on "
                                   f"the bucket and s3:GetObject on {self.src.prefix or '*'}): {code}")
            if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken"):
                return SourceError(f"{where}: the AWS credentials were refused ({code}) while {doing}")
            if code in ("NoSuchKey", "404") or status == 404:
                return SourceError(f"{where}: not found while {doing} ({code})")
            return SourceError(f"{where}: S3 error {code or status} while {doing}: {err}")
        return SourceError(f"{where}: {type(err).__name__} while {doing}: {err}")

    def _list(self) -> Iterator[RemoteObject]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.src.bucket,
                                                                          Prefix=self.src.prefix)
            n = 0
            for page in pages:
                for item in page.get("Contents") or ():
                    n += 1
                    if n > self.limits.max_objects:
                        raise SourceError(f"{self.src.url}: more than {self.limits.max_objects} objects")
                    yield RemoteObject(item["Key"], int(item.get("Size", 0)))
        except (BotoCoreError, ClientError) as err:
            raise self._error(err, "listing objects") from None

    def fetch(self, into: Path, *, worker: int, workers: int) -> FetchResult:
        from contextlib import contextmanager

        from botocore.exceptions import BotoCoreError, ClientError

        plan = plan_fetch(self._list(), prefix=self.src.prefix, worker=worker, workers=workers, limits=self.limits)

        @contextmanager
        def open_object(key: str) -> Iterator[Callable[[int], bytes]]:
            try:
                body = self.client.get_object(Bucket=self.src.bucket, Key=key)["Body"]
            except (BotoCoreError, ClientError) as err:
                raise self._error(err, f"reading {key}") from None
            try:
                yield body.read
            except (BotoCoreError, ClientError) as err:
                raise self._error(err, f"reading {key}") from None
            finally:
                body.close()

        return _fetch_planned(self.src, plan, into, self.limits, open_object)


# --- gs:// ---------------------------------------------------------------------------------------------------

class _GCS:
    def __init__(self, src: SourceURL, *, endpoint_url: str | None, limits: FetchLimits,
                 env: Mapping[str, str]) -> None:
        self.src, self.limits = src, limits
        emulator = env.get("STORAGE_EMULATOR_HOST")
        self.base = (endpoint_url or emulator or GCS_ENDPOINT).rstrip("/")
        if "://" not in self.base:
            self.base = "http://" + self.base
        # STORAGE_EMULATOR_HOST means an emulator without credentials (google-cloud-storage's convention);
        # an explicit endpoint (a private API endpoint) still authenticates.
        self.anonymous = bool(emulator) and not endpoint_url
        self._credentials: Any = None

    def _authorization(self) -> dict[str, str]:
        if self.anonymous:
            return {}
        import google.auth
        import google.auth.exceptions
        from google.auth.transport.requests import Request

        try:
            if self._credentials is None:
                # A key file (GOOGLE_APPLICATION_CREDENTIALS), gcloud's user credentials, Workload Identity
                # (federation config or the GKE metadata server), in google-auth's order.
                self._credentials, _ = google.auth.default(scopes=[GCS_SCOPE])
            if not self._credentials.valid:  # first use, or the token expired during a long listing
                self._credentials.refresh(Request())
        except google.auth.exceptions.DefaultCredentialsError as err:
            raise SourceError(f"{self.src.url}: no Google credentials found (mount a service-account key "
                              f"through spec.source.credentialsSecretRef, or use Workload Identity with "
                              f"spec.ingestion.serviceAccountName): {err}") from None
        except google.auth.exceptions.GoogleAuthError as err:
            raise SourceError(f"{self.src.url}: the Google credentials were refused: {err}") from None
        return {"Authorization": f"Bearer {self._credentials.token}"}

    def _open(self, url: str, doing: str) -> Any:
        req = urllib.request.Request(url, headers=self._authorization())
        try:
            return urllib.request.urlopen(req, timeout=self.limits.timeout_s)
        except urllib.error.HTTPError as err:
            detail = _error_body(err)
            if err.code in (401, 403):
                raise SourceError(f"{self.src.url}: access denied while {doing} (the identity needs "
                                  f"storage.objects.list and storage.objects.get, e.g. "
                                  f"roles/storage.objectViewer): HTTP {err.code} {detail}") from None
            if err.code == 404:
                what = f"no such bucket {self.src.bucket!r}" if doing == "listing objects" else "not found"
                raise SourceError(f"{self.src.url}: {what} while {doing}: {detail}") from None
            raise SourceError(f"{self.src.url}: HTTP {err.code} while {doing}: {detail}") from None
        except (urllib.error.URLError, OSError) as err:
            raise SourceError(f"{self.src.url}: cannot reach {self.base} while {doing}: "
                              f"{getattr(err, 'reason', err)}") from None

    def _list(self) -> Iterator[RemoteObject]:
        bucket = urllib.parse.quote(self.src.bucket, safe="")
        token, n = None, 0
        while True:
            query = {"prefix": self.src.prefix, "fields": "items(name,size),nextPageToken", "maxResults": "1000"}
            if token:
                query["pageToken"] = token
            url = f"{self.base}/storage/v1/b/{bucket}/o?{urllib.parse.urlencode(query)}"
            with self._open(url, "listing objects") as resp:
                try:
                    page = json.loads(resp.read())
                except ValueError as err:
                    raise SourceError(f"{self.src.url}: the listing is not JSON: {err}") from None
            for item in page.get("items") or ():
                n += 1
                if n > self.limits.max_objects:
                    raise SourceError(f"{self.src.url}: more than {self.limits.max_objects} objects")
                yield RemoteObject(item["name"], int(item.get("size", 0)))
            token = page.get("nextPageToken")
            if not token:
                return

    def fetch(self, into: Path, *, worker: int, workers: int) -> FetchResult:
        from contextlib import contextmanager

        plan = plan_fetch(self._list(), prefix=self.src.prefix, worker=worker, workers=workers, limits=self.limits)
        bucket = urllib.parse.quote(self.src.bucket, safe="")

        @contextmanager
        def open_object(key: str) -> Iterator[Callable[[int], bytes]]:
            url = f"{self.base}/storage/v1/b/{bucket}/o/{urllib.parse.quote(key, safe='')}?alt=media"
            with self._open(url, f"reading {key}") as resp:
                yield _reader(resp, self.src.url, key)

        return _fetch_planned(self.src, plan, into, self.limits, open_object)


# --- http(s):// ------------------------------------------------------------------------------------------------

def _error_body(err: urllib.error.HTTPError) -> str:
    try:
        return " ".join(err.read(2048).decode("utf-8", "replace").split())[:300]
    except OSError:
        return ""


def _reader(resp: IO[bytes], url: str, what: str) -> Callable[[int], bytes]:
    def read(n: int) -> bytes:
        try:
            return resp.read(n)
        except OSError as err:  # a reset or a read timeout mid-stream
            raise SourceError(f"{url}: reading {what} failed: {err}") from None
    return read


def _fetch_http(src: SourceURL, into: Path, *, worker: int, workers: int, limits: FetchLimits,
                env: Mapping[str, str]) -> FetchResult:
    headers = {"User-Agent": "agentfleet-ingest"}
    if env.get(AUTHORIZATION_ENV) and src.scheme == "https":
        headers["Authorization"] = env[AUTHORIZATION_ENV]
    try:
        resp = urllib.request.urlopen(urllib.request.Request(src.url, headers=headers), timeout=limits.timeout_s)
    except urllib.error.HTTPError as err:
        hint = " (access denied: set the Authorization header through AGENTFLEET_SOURCE_AUTHORIZATION)" \
            if err.code in (401, 403) else ""
        raise SourceError(f"{src.url}: HTTP {err.code}{hint}: {_error_body(err)}") from None
    except (urllib.error.URLError, OSError) as err:
        raise SourceError(f"{src.url}: cannot fetch: {getattr(err, 'reason', err)}") from None
    name = src.prefix.rsplit("/", 1)[-1]
    budget = _Budget(src.url, limits)
    with resp:
        read = _reader(resp, src.url, name)
        if not src.is_archive:
            # One document: the worker whose slice holds its name fetches it; the others index nothing.
            rel = archive_member_path(urllib.parse.unquote(name)) or ""
            if not rel:
                raise SourceError(f"{src.url}: {name!r} is not a plain file name")
            if slice_of(rel, workers) != worker:
                return FetchResult(into)
            try:
                budget.copy(read, into / rel)
            except _TooLarge as err:
                (into / rel).unlink(missing_ok=True)
                return FetchResult(into, [SkippedDocument(rel, str(err))])
            return FetchResult(into, fetched=1, bytes=budget.total)
        with tempfile.TemporaryDirectory(prefix="agentfleet-archive-") as tmp:
            archive = Path(tmp, "archive")
            try:
                budget.copy(read, archive, max_bytes=limits.max_total_bytes, what=name)
            except _TooLarge:
                raise SourceError(f"{src.url}: the archive is over the total limit of {limits.max_total_bytes} "
                                  f"bytes") from None
            budget.total = 0  # what counts against the total from here is what is extracted
            return _extract(src, archive, into, worker=worker, workers=workers, limits=limits, budget=budget)


def _extract(src: SourceURL, archive: Path, into: Path, *, worker: int, workers: int, limits: FetchLimits,
             budget: _Budget) -> FetchResult:
    """Extract the planned members ourselves (never `extractall`): regular files only, paths kept inside `into`,
    sizes bounded while streaming, so a hostile archive cannot write outside the directory or fill the disk."""
    lower = src.prefix.lower()
    try:
        if lower.endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                members = {archive_member_path(i.filename): i for i in zf.infolist() if not i.is_dir()}
                members.pop(None, None)
                plan = plan_fetch([RemoteObject(k, i.file_size) for k, i in members.items() if k],
                                  prefix="", worker=worker, workers=workers, limits=limits)

                def open_zip(key: str) -> Any:
                    return _ReadCtx(zf.open(members[key]))
                return _fetch_planned(src, plan, into, limits, open_zip)
        with tarfile.open(archive, mode="r:*") as tf:
            tmembers = {archive_member_path(m.name): m for m in tf.getmembers() if m.isreg()}
            tmembers.pop(None, None)
            plan = plan_fetch([RemoteObject(k, m.size) for k, m in tmembers.items() if k],
                              prefix="", worker=worker, workers=workers, limits=limits)

            def open_tar(key: str) -> Any:
                fh = tf.extractfile(tmembers[key])
                assert fh is not None  # regular members always have a file object
                return _ReadCtx(fh)
            return _fetch_planned(src, plan, into, limits, open_tar)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as err:
        raise SourceError(f"{src.url}: not a readable {'zip' if lower.endswith('.zip') else 'tar'} archive: "
                          f"{err}") from None


class _ReadCtx:
    def __init__(self, fh: IO[bytes]) -> None:
        self.fh = fh

    def __enter__(self) -> Callable[[int], bytes]:
        return self.fh.read

    def __exit__(self, *exc: object) -> None:
        self.fh.close()

