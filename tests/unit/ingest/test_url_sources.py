"""`agentfleet ingest --source URL` end to end: s3:// against a real third-party S3 server (moto's `moto_server`,
started here on 127.0.0.1, reached through boto3) into milvus-lite, searched as principals so the tenant/groups of
every document survive the trip; P workers index the bucket exactly once; errors name the URL and never print a
traceback. gs:// against fake-gcs-server (a third-party GCS emulator built from the Go proxy by e2e/gcs/build.sh)
and against a local stand-in of the JSON API and OAuth token endpoint that verifies a service-account key's JWT
(the emulator takes no credentials, so the key-file path needs the stand-in). http(s):// one document and a tar.gz of a source
directory, with the size bounds and a hostile archive."""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from agentfleet.retrieval import cli as retrieval_cli

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

# What the bucket holds: access from a root sidecar, a directory sidecar, front matter, and a document without any.
CORPUS = {
    "_access.yaml": '- pattern: "notes.txt"\n  tenant: acme\n  groups: [eng]\n',
    "vacation.md": "---\ntenant: acme\ngroups: [all]\n---\n# Vacation\n\nEmployees get 25 days of paid vacation.",
    "notes.txt": "The on-call engineer acknowledges a page within five minutes.",
    "hr/_access.yaml": '- pattern: "*"\n  tenant: acme\n  groups: [hr]\n',
    "hr/salary.md": "# Salary\n\nEngineer salary bands are restricted to HR.",
    "globex.md": "---\ntenant: globex\ngroups: [all]\n---\nGlobex vacation is thirty days.",
    "orphan.md": "No access metadata here.",
    "logo.png": "\x89PNG not a document",
}


def main(argv):
    parser = argparse.ArgumentParser(prog="agentfleet")
    retrieval_cli.add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ingest(capsys, source, db, *extra):
    rc = main(["ingest", "--source", source, "--index", str(db), "--collection", "c", "--chunk-tokens", "64",
               "--chunk-overlap", "8", *extra])
    out, err = capsys.readouterr()
    return rc, (json.loads(out.strip().splitlines()[-1]) if rc == 0 else None), err


def search(capsys, db, query, tenant, groups):
    assert main(["search", query, "--index", str(db), "--collection", "c", "--tenant", tenant, "--groups",
                 ",".join(groups), "--k", "10", "--json"]) == 0
    return {h["source"] for h in json.loads(capsys.readouterr().out)}


# Which documents each principal may read: the permission metadata that must survive a URL source.
VISIBLE = [
    ("acme", ["all"], {"vacation.md"}),
    ("acme", ["eng"], {"notes.txt"}),
    ("acme", ["hr"], {"hr/salary.md"}),
    ("acme", ["all", "eng", "hr"], {"vacation.md", "notes.txt", "hr/salary.md"}),
    ("globex", ["all"], {"globex.md"}),
    ("initech", ["all", "eng", "hr"], set()),
]


def assert_permissions(capsys, db):
    for tenant, groups, expected in VISIBLE:
        assert search(capsys, db, "vacation salary on-call engineer", tenant, groups) == expected, (tenant, groups)


# --- s3:// against moto_server ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def moto_server(tmp_path_factory):
    exe = shutil.which("moto_server") or str(Path(sys.executable).with_name("moto_server"))
    if not Path(exe).exists():
        pytest.fail("moto_server is missing: pip install -e '.[test]' installs moto[server]")
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=fh, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"moto_server did not start: {log.read_text()[-2000:]}")
            time.sleep(0.2)
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def aws_env(monkeypatch, tmp_path, moto_server):
    """Credentials only from the environment; no profile, no instance metadata (traffic stays on 127.0.0.1)."""
    for var in [v for v in os.environ if v.startswith("AWS_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    return moto_server


def s3_bucket(endpoint, name, files, prefix=""):
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint)
    s3.create_bucket(Bucket=name)
    for rel, text in files.items():
        s3.put_object(Bucket=name, Key=prefix + rel, Body=text.encode("utf-8", "surrogateescape")
                      if isinstance(text, str) else text)
    return s3


def test_s3_source_ingests_searches_and_keeps_permissions(aws_env, tmp_path, capsys):
    s3 = s3_bucket(aws_env, "corpus-a", CORPUS, prefix="docs/")
    s3.put_object(Bucket="corpus-a", Key="docs-old/leak.md", Body=b"---\ntenant: acme\n---\nnot under docs/")
    db = tmp_path / "ix.db"

    rc, summary, err = ingest(capsys, "s3://corpus-a/docs", db)

    assert rc == 0, err
    assert {k: summary[k] for k in ("documents", "skippedDocuments")} == {"documents": 4, "skippedDocuments": 2}
    assert "skipped orphan.md: no access metadata" in err
    assert "skipped logo.png: unsupported format .png" in err
    assert_permissions(capsys, db)
    assert not any("leak" in s for s in search(capsys, db, "not under docs", "acme", [])), "a sibling prefix"

    # A re-run from the bucket is an idempotent upsert; a deleted object's chunks go.
    rc, again, err = ingest(capsys, "s3://corpus-a/docs/", db)
    assert rc == 0 and again["embedded"] == 0 and again["deleted"] == 0, err
    s3.delete_object(Bucket="corpus-a", Key="docs/globex.md")
    rc, after, err = ingest(capsys, "s3://corpus-a/docs/", db)
    assert rc == 0 and after["deleted"] >= 1 and after["documents"] == 3, err
    assert search(capsys, db, "Globex vacation", "globex", ["all"]) == set()


def test_s3_workers_index_the_bucket_exactly_once(aws_env, tmp_path, capsys):
    s3_bucket(aws_env, "corpus-b", CORPUS)
    db = tmp_path / "ix.db"
    totals = []
    for worker in range(3):
        rc, summary, err = ingest(capsys, "s3://corpus-b", db, "--workers", "3", "--worker-index", str(worker))
        assert rc == 0, err
        totals.append(summary["documents"])
    assert sum(totals) == 4
    assert_permissions(capsys, db)


def test_s3_object_over_the_size_limit_is_skipped_and_named(aws_env, tmp_path, capsys):
    s3_bucket(aws_env, "corpus-c", {"big.md": "---\ntenant: acme\n---\n" + "word " * 400_000,
                                    "small.md": "---\ntenant: acme\n---\nsmall"})
    rc, summary, err = ingest(capsys, "s3://corpus-c", tmp_path / "ix.db", "--max-object-mb", "1")
    assert rc == 0, err
    assert (summary["documents"], summary["skippedDocuments"]) == (1, 1)
    assert "skipped big.md: " in err and "over the per-object limit of 1048576" in err


@pytest.mark.parametrize(
    "env, url, extra, message",
    [
        pytest.param({}, "s3://no-such-bucket-here/docs", [], "no such bucket 'no-such-bucket-here'",
                     id="no-such-bucket"),
        pytest.param({"AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None}, "s3://corpus-a/docs", [],
                     "no AWS credentials found", id="no-credentials"),
        pytest.param({}, "s3://corpus-a/docs", ["--endpoint-url", "http://127.0.0.1:{dead}"],
                     "cannot reach the S3 endpoint", id="endpoint-down"),
        pytest.param({}, "s3://corpus-a/docs", ["--max-total-mb", "0.00001"], "over the total limit",
                     id="total-limit"),
    ],
)
def test_s3_errors_name_the_url_without_a_traceback(aws_env, tmp_path, capsys, monkeypatch, env, url, extra,
                                                    message):
    import boto3

    try:
        boto3.client("s3", endpoint_url=aws_env).create_bucket(Bucket="corpus-a")
        boto3.client("s3", endpoint_url=aws_env).put_object(Bucket="corpus-a", Key="docs/a.md", Body=b"x" * 200)
    except Exception:  # already there from another test
        pass
    for k, v in env.items():
        monkeypatch.delenv(k) if v is None else monkeypatch.setenv(k, v)
    extra = [e.format(dead=free_port()) for e in extra]
    rc, _, err = ingest(capsys, url, tmp_path / "ix.db", "--fetch-timeout-s", "3", *extra)
    assert rc == 1
    assert message in err and url in err
    assert "Traceback" not in err


def test_s3_access_denied_is_named(tmp_path, capsys, monkeypatch):
    """A store that refuses (moto does not enforce IAM): a stand-in answering S3's own 403 AccessDenied body."""

    class Deny(BaseHTTPRequestHandler):
        def do_GET(self):
            body = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code>'
                    b"<Message>Access Denied</Message></Error>")
            self.send_response(403)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    with serve(Deny) as base:
        for var in [v for v in os.environ if v.startswith("AWS_")]:
            monkeypatch.delenv(var)
        monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
        monkeypatch.setenv("AWS_REGION", "us-east-1")
        rc, _, err = ingest(capsys, "s3://private/docs", tmp_path / "ix.db", "--endpoint-url", base)
    assert rc == 1 and "s3://private/docs" in err and "access denied while listing objects" in err
    assert "Traceback" not in err


# --- a tiny HTTP server for the stand-ins -----------------------------------------------------------------------

class serve:
    def __init__(self, handler):
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


# --- gs:// against a stand-in of the GCS JSON API ----------------------------------------------------------------

def gcs_standin(bucket: str, objects: dict[str, bytes], public_key, issued: list):
    """GET /storage/v1/b/B/o (list, paged by 2) and /o/NAME?alt=media, each needing the token that POST /token
    issued for a JWT assertion signed by the service account's key (RS256, verified here)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    class H(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def reply(self, code, body, ctype="application/json"):
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):
            form = urllib.parse.parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode())
            head, claims, sig = form["assertion"][0].split(".")
            pad = lambda s: base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))  # noqa: E731
            public_key.verify(pad(sig), f"{head}.{claims}".encode(), padding.PKCS1v15(), hashes.SHA256())
            assert "devstorage.read_only" in json.loads(pad(claims))["scope"]
            issued.append("tok-1")
            self.reply(200, json.dumps({"access_token": "tok-1", "expires_in": 3600,
                                        "token_type": "Bearer"}).encode())

        def do_GET(self):
            if self.headers.get("Authorization") != "Bearer tok-1":
                return self.reply(401, b'{"error": {"code": 401, "message": "Anonymous caller"}}')
            url = urllib.parse.urlsplit(self.path)
            q = urllib.parse.parse_qs(url.query)
            parts = url.path.split("/")  # '', storage, v1, b, BUCKET, o[, NAME]
            if parts[4] != bucket:
                return self.reply(404, b'{"error": {"code": 404, "message": "The specified bucket does not exist."}}')
            if len(parts) == 6:
                names = sorted(k for k in objects if k.startswith(q.get("prefix", [""])[0]))
                start = int(q.get("pageToken", ["0"])[0])
                page = {"items": [{"name": n, "size": str(len(objects[n]))} for n in names[start:start + 2]]}
                if start + 2 < len(names):
                    page["nextPageToken"] = str(start + 2)
                return self.reply(200, json.dumps(page).encode())
            name = urllib.parse.unquote(parts[6])
            assert q.get("alt") == ["media"]
            return self.reply(200, objects[name], "application/octet-stream")

    return H


def test_gs_source_with_a_service_account_key_file(tmp_path, capsys, monkeypatch):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    issued: list[str] = []
    objects = {"kb/" + k: v.encode("utf-8", "surrogateescape") for k, v in CORPUS.items()}
    with serve(gcs_standin("kb-bucket", objects, key.public_key(), issued)) as base:
        creds = tmp_path / "sa.json"
        creds.write_text(json.dumps({
            "type": "service_account", "project_id": "p", "private_key_id": "k1", "private_key": pem,
            "client_email": "ingest@p.iam.gserviceaccount.com", "client_id": "1", "token_uri": f"{base}/token"}))
        monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(creds))
        db = tmp_path / "ix.db"
        rc, summary, err = ingest(capsys, "gs://kb-bucket/kb", db, "--endpoint-url", base)
        assert rc == 0, err
        assert (summary["documents"], summary["skippedDocuments"]) == (4, 2)
        assert issued, "the key file's JWT was exchanged for a token"
        assert_permissions(capsys, db)

        rc, _, err = ingest(capsys, "gs://other-bucket/kb", tmp_path / "ix2.db", "--endpoint-url", base)
        assert rc == 1 and "gs://other-bucket/kb: no such bucket 'other-bucket'" in err and "Traceback" not in err

        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
        rc, _, err = ingest(capsys, "gs://kb-bucket/kb", tmp_path / "ix3.db", "--endpoint-url", base)
        assert rc == 1 and "gs://kb-bucket/kb: no Google credentials found" in err and "Traceback" not in err


def test_gs_emulator_host_needs_no_credentials_and_401_is_access_denied(tmp_path, capsys, monkeypatch):
    with serve(gcs_standin("b", {"a.md": b"---\ntenant: t\n---\nhello"}, None, [])) as base:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", base)
        rc, _, err = ingest(capsys, "gs://b", tmp_path / "ix.db")
    # The stand-in wants a token the emulator convention never sends: the refusal is named, not a traceback.
    assert rc == 1 and "gs://b: access denied while listing objects" in err and "Traceback" not in err


def test_gs_source_against_fake_gcs_server(tmp_path, capsys, monkeypatch):
    """The third-party GCS emulator (fsouza/fake-gcs-server, built from the Go proxy by e2e/gcs/build.sh), reached
    through STORAGE_EMULATOR_HOST as google-cloud-storage would; skipped when it is not built and Go is missing."""
    build = Path(__file__).resolve().parents[3] / "e2e" / "gcs" / "build.sh"
    exe = Path(subprocess.run(["bash", str(build), "--print-binary"], capture_output=True, text=True,
                              check=True).stdout.strip())
    if not exe.exists():
        if shutil.which("go") is None:
            pytest.skip("fake-gcs-server is not built (e2e/gcs/build.sh) and Go is not installed")
        subprocess.run(["bash", str(build)], check=True, capture_output=True, timeout=900)
    data = tmp_path / "data"
    for rel, text in CORPUS.items():
        path = data / "kb-bucket" / "kb" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text.encode("utf-8", "surrogateescape"))
    port = free_port()
    log = tmp_path / "gcs.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([str(exe), "-scheme", "http", "-host", "127.0.0.1", "-port", str(port),
                                 "-backend", "memory", "-data", str(data), "-public-host", f"127.0.0.1:{port}",
                                 "-log-level", "error"], stdout=fh, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
                time.sleep(0.2)
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{port}")
        db = tmp_path / "ix.db"
        rc, summary, err = ingest(capsys, "gs://kb-bucket/kb", db)
        assert rc == 0, err
        assert (summary["documents"], summary["skippedDocuments"]) == (4, 2)
        assert_permissions(capsys, db)
        rc, _, err = ingest(capsys, "gs://missing-bucket/kb", tmp_path / "ix2.db")
        assert rc == 1 and "gs://missing-bucket/kb: no such bucket 'missing-bucket'" in err, err
        assert "Traceback" not in err
    finally:
        proc.terminate()
        proc.wait(10)


# --- http(s):// -------------------------------------------------------------------------------------------------

def tar_gz(files: dict[str, bytes], *, extra=()) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for info in extra:
            tf.addfile(info, io.BytesIO(b""))
    return buf.getvalue()


def static(routes: dict[str, bytes]):
    class H(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            body = routes.get(self.path)
            self.send_response(200 if body is not None else 404)
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")
    return H


def test_http_document_archive_and_hostile_archive(tmp_path, capsys):
    link = tarfile.TarInfo("docs/evil.md")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    routes = {
        "/handbook.md": b"---\ntenant: acme\ngroups: [all]\n---\n# Handbook\n\nEmployees get 25 days of paid vacation.",
        "/corpus.tar.gz": tar_gz({"corpus/" + k: v.encode("utf-8", "surrogateescape") for k, v in CORPUS.items()}),
        "/hostile.tar.gz": tar_gz({"../../escape.md": b"---\ntenant: acme\n---\nout", "/abs.md": b"x",
                                   "ok.md": b"---\ntenant: acme\n---\nfine"}, extra=[link]),
    }
    with serve(static(routes)) as base:
        db = tmp_path / "doc.db"
        rc, summary, err = ingest(capsys, f"{base}/handbook.md", db)
        assert rc == 0 and summary["documents"] == 1, err
        assert search(capsys, db, "vacation", "acme", ["all"]) == {"handbook.md"}

        db = tmp_path / "tar.db"
        rc, summary, err = ingest(capsys, f"{base}/corpus.tar.gz", db)
        assert rc == 0 and (summary["documents"], summary["skippedDocuments"]) == (4, 2), err
        for tenant, groups, expected in VISIBLE:
            assert search(capsys, db, "vacation salary on-call", tenant, groups) == {
                "corpus/" + e for e in expected}

        rc, summary, err = ingest(capsys, f"{base}/hostile.tar.gz", tmp_path / "h.db")
        assert rc == 0 and summary["documents"] == 1, err
        assert not (tmp_path.parent / "escape.md").exists() and not Path("/abs.md").exists()

        rc, _, err = ingest(capsys, f"{base}/missing.md", tmp_path / "m.db")
        assert rc == 1 and f"{base}/missing.md: HTTP 404" in err and "Traceback" not in err

        rc, _, err = ingest(capsys, f"{base}/corpus.tar.gz", tmp_path / "big.db", "--max-total-mb", "0.0001")
        assert rc == 1 and "over the total limit" in err and "Traceback" not in err


def _private_ca_and_server_cert(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A CA of our own and a certificate for 127.0.0.1 signed by it (as a company's internal file server has)."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "agentfleet test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(1).not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(2)
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = tmp_path / "ca.pem", tmp_path / "server.pem", tmp_path / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


def test_https_source_verifies_the_server_and_sends_the_authorization(tmp_path, capsys, monkeypatch):
    """https:// over real TLS: a server whose certificate chains to no trusted CA is refused with a clear error
    (never fetched unverified); with the company CA in SSL_CERT_FILE (a mounted CA bundle) the document is ingested,
    and the Authorization header from the credentials Secret goes with it."""
    import ssl

    ca, cert, key = _private_ca_and_server_cert(tmp_path)
    seen: list[str | None] = []
    doc = b"---\ntenant: acme\ngroups: [all]\n---\n# Handbook\n\nEmployees get 25 days of paid vacation."

    class H(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            seen.append(self.headers.get("Authorization"))
            self.send_response(200 if self.path == "/handbook.md" else 404)
            self.send_header("Content-Length", str(len(doc)))
            self.end_headers()
            self.wfile.write(doc)

    server = serve(H)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server.server.socket = ctx.wrap_socket(server.server.socket, server_side=True)
    with server as base:
        url = base.replace("http://", "https://") + "/handbook.md"
        monkeypatch.delenv("SSL_CERT_FILE", raising=False)
        monkeypatch.setenv("SSL_CERT_DIR", str(tmp_path / "no-certs-here"))
        rc, _, err = ingest(capsys, url, tmp_path / "untrusted.db")
        assert rc == 1 and "CERTIFICATE_VERIFY_FAILED" in err and "Traceback" not in err, err
        assert seen == []  # the handshake failed: nothing was sent

        monkeypatch.setenv("SSL_CERT_FILE", str(ca))
        monkeypatch.setenv("AGENTFLEET_SOURCE_AUTHORIZATION", "Bearer s3cret")
        rc, summary, err = ingest(capsys, url, tmp_path / "trusted.db")
        assert rc == 0 and summary["documents"] == 1, err
        assert seen[-1] == "Bearer s3cret"
        assert search(capsys, tmp_path / "trusted.db", "vacation", "acme", ["all"]) == {"handbook.md"}
