#!/usr/bin/env python3
"""Generate tests/vectors.json for the sigv4-verify crate.

Every vector is signed by botocore itself (SigV4Auth / SigV4QueryAuth) at a
pinned timestamp, then really sent over loopback to a one-shot capture server
so the stored method/path/query/headers/body are exactly what arrived on the
wire.  Botocore's own canonical request and string to sign are recorded too.

The last vector is a request made by the real AWS CLI
(`aws ecs list-clusters`), captured the same way with its real timestamp.

Only 127.0.0.1 is used; every socket and subprocess has a timeout.
Usage: python3 gen_vectors.py   (writes tests/vectors.json next to this file)
"""

import datetime
import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from urllib.parse import quote

import botocore
import botocore.auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.httpsession import URLLib3Session

ACCESS_KEY = "AKIDEXAMPLE"
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
REGION = "us-east-1"
SERVICE = "ecs"
# Pinned signing time.  botocore's SigV4Auth.add_auth() does
#   request.context['timestamp'] = get_current_datetime().strftime(...)
# so setting the context beforehand is overwritten; patch the function that
# botocore.auth imported instead.
FIXED = datetime.datetime(2024, 5, 17, 12, 34, 56)
FIXED_EPOCH = int(FIXED.replace(tzinfo=datetime.timezone.utc).timestamp())
botocore.auth.get_current_datetime = lambda remove_tzinfo=True: FIXED

CREDS = Credentials(ACCESS_KEY, SECRET_KEY)
TIMEOUT = 20.0


class Capture:
    """One-shot HTTP server on 127.0.0.1: records one raw request, replies
    200 {} and stops itself (or gives up after TIMEOUT seconds)."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1)
        self.sock.settimeout(TIMEOUT)
        self.port = self.sock.getsockname()[1]
        self.raw = None
        self.received_at = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            conn, _ = self.sock.accept()
        except OSError:
            self.sock.close()
            return
        with conn:
            conn.settimeout(TIMEOUT)
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                data += chunk
            self.received_at = time.time()
            head, _, body = data.partition(b"\r\n\r\n")
            m = re.search(rb"\r\ncontent-length:\s*(\d+)", head, re.I)
            need = int(m.group(1)) if m else 0
            while len(body) < need:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                body += chunk
            self.raw = head + b"\r\n\r\n" + body
            reply = b"{}"
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/x-amz-json-1.1\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(reply), reply)
            )
        self.sock.close()

    def result(self):
        self.thread.join(TIMEOUT + 5)
        if self.raw is None:
            raise RuntimeError("capture server received nothing")
        return parse_raw(self.raw)


def parse_raw(raw):
    """Split a raw HTTP/1.1 request into the pieces the Rust verifier gets.
    Header bytes are decoded as latin-1 (what http.client encodes with);
    obs-fold continuation lines are kept verbatim (CRLF + leading WSP)."""
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, target, _version = lines[0].split(" ")
    path, _, query = target.partition("?")
    headers = []
    for line in lines[1:]:
        if line[:1] in (" ", "\t") and headers:
            headers[-1][1] += "\r\n" + line
            continue
        name, _, value = line.partition(":")
        headers.append([name, value])
    headers = [[n, v.strip(" \t")] for n, v in headers]
    return {"method": method, "path": path, "query": query,
            "headers": headers, "body": body}


class RecordingMixin:
    """Keep botocore's own canonical request / string to sign."""

    def string_to_sign(self, request, canonical_request):
        sts = super().string_to_sign(request, canonical_request)
        self.recorded = {"canonical_request": canonical_request, "string_to_sign": sts}
        return sts


class RecSigV4Auth(RecordingMixin, botocore.auth.SigV4Auth):
    pass


class RecSigV4QueryAuth(RecordingMixin, botocore.auth.SigV4QueryAuth):
    pass


def send_raw(port, req):
    """Send a signed AWSRequest byte-for-byte from request.headers.items().
    Used where botocore's own HTTP stack would alter the headers
    (AWSRequestPreparer collapses duplicate header names into one)."""
    from urllib.parse import urlsplit
    parts = urlsplit(req.url)
    target = parts.path + ("?" + parts.query if parts.query else "")
    body = req.body or b""
    out = f"{req.method} {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
    for k, v in req.headers.items():
        out += f"{k}: {v}\r\n"
    out += f"Content-Length: {len(body)}\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as s:
        s.sendall(out.encode("latin-1") + body)
        s.recv(65536)


def make_vector(name, description, method, path_and_query, headers=(), body=b"",
                params=None, presign_expires=None, raw_send=False, expect="ok"):
    cap = Capture()
    url = f"http://127.0.0.1:{cap.port}{path_and_query}"
    req = AWSRequest(method=method, url=url, data=body, params=params or {})
    for k, v in headers:  # HTTPHeaders: assigning twice appends a duplicate
        req.headers[k] = v
    signing_headers = [[k, v] for k, v in req.headers.items()]
    if presign_expires is None:
        signer = RecSigV4Auth(CREDS, SERVICE, REGION)
    else:
        signer = RecSigV4QueryAuth(CREDS, SERVICE, REGION, expires=presign_expires)
    signer.add_auth(req)
    if raw_send:
        send_raw(cap.port, req)
    else:
        URLLib3Session(timeout=TIMEOUT).send(req.prepare())
    wire = cap.result()
    vec = {
        "name": name,
        "description": description,
        "method": wire["method"],
        "path": wire["path"],
        "query": wire["query"],
        "headers": wire["headers"],
        "body_hex": wire["body"].hex(),
        "access_key": ACCESS_KEY,
        "secret_key": SECRET_KEY,
        "region": REGION,
        "service": SERVICE,
        "now": FIXED_EPOCH,
        "expect": expect,
        "botocore": dict(signer.recorded),
    }
    if presign_expires is None:
        vec["botocore"]["authorization"] = req.headers["Authorization"]
        vec["botocore"]["signing_headers"] = signing_headers
    return vec


def cli_vector():
    """Run the real AWS CLI against the capture server."""
    cap = Capture()
    ak, sk = "AKIACLIEXAMPLE00001", "cliSecretKeyExample/0123456789+abcdefghij"
    with tempfile.TemporaryDirectory() as home:
        env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": home,
            "AWS_ACCESS_KEY_ID": ak,
            "AWS_SECRET_ACCESS_KEY": sk,
            "AWS_CONFIG_FILE": os.path.join(home, "none"),
            "AWS_SHARED_CREDENTIALS_FILE": os.path.join(home, "none"),
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_MAX_ATTEMPTS": "1",
        }
        proc = subprocess.run(
            ["aws", "ecs", "list-clusters", "--debug",
             "--endpoint-url", f"http://127.0.0.1:{cap.port}", "--region", REGION],
            env=env, capture_output=True, text=True, timeout=120,
        )
    wire = cap.result()
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-3000:])
        raise RuntimeError("aws cli failed")
    # The CLI's --debug log contains botocore's canonical request.
    log = proc.stderr
    i = log.index("CanonicalRequest:\n") + len("CanonicalRequest:\n")
    lines = log[i:].split("\n")
    # method, path, query (may be empty), header lines, blank, signed, hash
    blank = lines.index("", 3)
    canonical = "\n".join(lines[: blank + 3])
    j = log.index("StringToSign:\n") + len("StringToSign:\n")
    sts = "\n".join(log[j:].split("\n")[:4])
    return {
        "name": "aws-cli-ecs-list-clusters",
        "description": "real `aws ecs list-clusters --endpoint-url http://127.0.0.1:PORT` "
                       f"({proc.stdout.strip()!r} printed); real timestamp, now = capture time",
        "method": wire["method"],
        "path": wire["path"],
        "query": wire["query"],
        "headers": wire["headers"],
        "body_hex": wire["body"].hex(),
        "access_key": ak,
        "secret_key": sk,
        "region": REGION,
        "service": SERVICE,
        "now": int(cap.received_at),
        "expect": "ok",
        "botocore": {"canonical_request": canonical, "string_to_sign": sts},
    }


def main():
    target_hdr = ("X-Amz-Target", "AmazonEC2ContainerServiceV20141113.ListClusters")
    json_ct = ("Content-Type", "application/x-amz-json-1.1")
    body = b'{"maxResults": 10, "nextToken": "t\\u00e9st"}'
    sdk_path = "/" + "/".join([
        quote("a b", safe="~"), quote("\u1234\u00fc", safe="~"), "~user", "", "x",
        ".", "y", "..", "z", quote("c/d", safe="~"),
    ])
    enc = lambda s: quote(s, safe="-_.~")  # botocore.utils.percent_encode
    q_pairs = [("b", "2"), ("a", "z"), ("a", "y"), ("empty", ""),
               ("sp ace", "v/a:l+ue~*'()"), ("\u00fcn\u00efc\u00f6de", "\u20ac 100%")]
    query = "&".join(f"{enc(k)}={enc(v)}" for k, v in q_pairs) + "&flag&a=x"
    vectors = [
        make_vector("post-json-root",
                    "ECS JSON 1.1 POST / with X-Amz-Target and Content-Type",
                    "POST", "/", [target_hdr, json_ct], body),
        make_vector("path-sdk-encoded",
                    "path already percent-encoded as botocore serializers do "
                    "(space, unicode, ~, //, ., .., %2F); botocore quotes it again",
                    "GET", sdk_path),
        make_vector("path-raw-in-url",
                    "NEGATIVE: AWSRequest url holds a raw space/unicode path; botocore "
                    "signs it single-encoded but urllib3 percent-encodes it on the "
                    "wire, so the wire path re-encoded AWS-style differs",
                    "GET", "/a b/\u1234/~x//y", expect="InvalidSignatureException"),
        make_vector("query-repeated-empty-encoded",
                    "query in the url, encoded like botocore.utils.percent_encode: "
                    "repeated keys, empty value, key without '=', reserved + unicode",
                    "GET", "/?" + query),
        make_vector("query-params-plus",
                    "AWSRequest params: signed with quote(safe='-_.~') but sent with "
                    "urlencode (quote_plus: space -> '+')",
                    "GET", "/list", params={"q": "hello world", "tilde": "~x", "slash": "a/b"}),
        make_vector("query-raw-subdelims",
                    "raw sub-delims left unencoded in the url query; botocore signs the "
                    "query text verbatim (_canonical_query_string_url)",
                    "GET", "/?path=/a/b&t=x:y,z&e=a*b!"),
        make_vector("headers-spaces-duplicates-folded",
                    "header values with runs of spaces/tabs, a duplicate header name, "
                    "mixed-case names and an obs-fold continuation line; sent raw",
                    "POST", "/", [target_hdr, json_ct,
                                  ("X-Custom", "  a   b\t\t c  "),
                                  ("X-Dup", "one"), ("x-dup", "  two   three "),
                                  ("X-MiXeD-Case", "Value"),
                                  ("X-Folded", "first\r\n   second  part")],
                    b"{}", raw_send=True),
        make_vector("x-amz-content-sha256",
                    "client sends X-Amz-Content-SHA256; botocore uses its value verbatim",
                    "POST", "/", [target_hdr, json_ct,
                                  ("X-Amz-Content-SHA256", hashlib.sha256(b"{}").hexdigest())],
                    b"{}"),
        make_vector("date-header",
                    "request carries a Date header: botocore rewrites Date from the "
                    "signing time and sends no X-Amz-Date",
                    "POST", "/", [target_hdr, json_ct, ("Date", "placeholder")], b"{}"),
        make_vector("presigned-get",
                    "SigV4QueryAuth presigned GET with extra query params, expires=300",
                    "GET", "/?Action=ListClusters&maxResults=10&nextToken=a%2Bb%2Fc%3D",
                    presign_expires=300),
    ]
    vectors.append(cli_vector())
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tests", "vectors.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump({"generator": f"gen_vectors.py, botocore {botocore.__version__}",
                   "vectors": vectors}, f, indent=1, ensure_ascii=True)
        f.write("\n")
    print(f"wrote {len(vectors)} vectors to {out}")


if __name__ == "__main__":
    main()
