"""``Storage`` (core/storage.py) on S3-compatible object storage, through boto3's conditional writes.

A location is ``s3://bucket/prefix``; every key of the seam is stored at ``prefix/key``, so a registry on S3 has
the same keys as on disk (``btcusdt-5m/v0001/model.txt``, ``btcusdt-5m/CURRENT.json``). The seam's calls map to:

* ``put_new``: PutObject with ``If-None-Match: *`` (412: the key exists, False);
* ``swap``: PutObject with ``If-Match: <ETag>`` (``expect=None``: ``If-None-Match: *``); a 412 (or a 404 for a
  key that vanished) is a ``Conflict``: a stale writer is refused, it never overwrites;
* ``read_versioned`` / ``token``: GetObject / HeadObject, the ETag is the token;
* ``publish_tree``: a claim object ``.claim/<prefix>`` (If-None-Match; it says who claimed it and when) decides
  which writer owns the prefix, then the files are uploaded (If-None-Match each), then the claim is sealed (If-Match
  on its ETag) and the commit marker ``.commit/<prefix>`` is created last. Readers (``trees``, ``has_tree``) only
  see trees with a marker, so a partial upload, or a crafted tree without a marker, is invisible;
* ``clean_abandoned``: a claim without a commit marker whose tree saw no write (the claim, or any uploaded object)
  for CLAIM_GRACE_S by the server's clock (its LastModified against the Date of the listing's answer: no skew
  between hosts) belongs to a killed publisher. Its claim is first rewritten If-Match on the ETag that was judged
  (the fence: a publisher still alive fails its seal, and of two cleaners one wins), then its objects are deleted,
  then the claim, If-Match on the fence: the version number is free again, and a committed tree is never touched
  (one committed just before the fence gets its claim's body back). A server that refuses the conditional delete
  leaves the fenced claim (logged): the number stays taken;
* ``retire`` / ``swap(require=...)``: a lease object ``.lease/<key>`` per guard key (If-None-Match, with a
  time-out after which a dead holder's lease is broken) around the check and the removal of the commit marker,
  exactly where LocalStorage holds its flock; ``purge`` deletes the tree's objects, then its claim.

The ``.claim``, ``.commit`` and ``.lease`` areas are never listed. Credentials come from boto3's usual chain
(``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, an instance role) and are never logged;
the endpoint from ``XYLEN_S3_ENDPOINT_URL`` (MinIO, Ceph, moto), else AWS.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import logging
import os
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from xylen.core.errors import ConfigError, XylenError
from xylen.core.storage import Conflict, LocalStorage, Missing, Versioned, check_key

CLAIM = ".claim"
COMMIT = ".commit"
LEASE = ".lease"
_INTERNAL = (CLAIM, COMMIT, LEASE)
LEASE_TTL_S = 30.0  # a lease older than this (by the server's clock) belongs to a dead holder and is broken
LEASE_WAIT_S = 120.0
# an uncommitted claim whose tree saw no write for this long (by the server's clock) belongs to a killed publisher:
# a live one writes an object at least once per file it uploads, and no bundle file takes a day to upload
CLAIM_GRACE_S = 86_400.0
# the error codes of a conditional request the caller interprets (every other one is a ConfigError, see _call)
_FAILED = ("PreconditionFailed", "412")  # the condition is false: the key exists (If-None-Match) or changed (If-Match)
_ABSENT = ("NoSuchKey", "404")
_IN_FLIGHT = ("ConditionalRequestConflict", "409")  # a concurrent conditional write to the key is in progress
_CONDITIONAL = _FAILED + _ABSENT + _IN_FLIGHT
# put_new retries a 409 this many times, sleeping 0.05 s doubling to 1 s between tries (about 6 s in all)
IN_FLIGHT_RETRIES = 8
log = logging.getLogger("xylen.registry")


def is_s3_url(location: object) -> bool:
    return isinstance(location, str) and location.startswith("s3://")


def parse_s3_url(url: str) -> tuple[str, str]:
    """(bucket, prefix without slashes) of ``s3://bucket/prefix``; ConfigError naming the URL otherwise."""
    parsed = urlparse(url)
    bucket, prefix = parsed.netloc, parsed.path.strip("/")
    if parsed.scheme != "s3" or not bucket or parsed.query or parsed.fragment or "//" in parsed.path.lstrip("/"):
        raise ConfigError(
            f"{url[:200]!r} is not an S3 location.", hint="write it as s3://BUCKET/PREFIX, e.g. s3://my-bucket/xylen/models."
        )
    if prefix and any(p in (".", "..") for p in prefix.split("/")):
        raise ConfigError(f"{url[:200]!r} has '.' or '..' in its prefix.", hint="write it as s3://BUCKET/PREFIX.")
    return bucket, prefix


class S3Storage:
    """``Storage`` on ``s3://bucket/prefix``; ``scratch`` is a local folder for staging trees and downloads."""

    def __init__(self, url: str, *, scratch: str | Path, endpoint_url: str | None = None,
                 client: Any = None, setting: str = "XYLEN_MODELS_URL") -> None:
        self.url = url.rstrip("/")
        self.setting = setting  # the setting that names this location, for messages
        self.bucket, self.prefix = parse_s3_url(url)
        self.endpoint_url = endpoint_url or None
        self.scratch = LocalStorage(scratch)
        self._client = client

    # -- plumbing --------------------------------------------------------------------------------------------
    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3
            from botocore.config import Config

            region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
            self._client = boto3.session.Session().client(
                "s3", endpoint_url=self.endpoint_url, region_name=region,
                config=Config(retries={"max_attempts": 4, "mode": "standard"}, connect_timeout=5, read_timeout=30),
            )
        return self._client

    def _k(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _call(self, op: str, key: str, **kw: Any) -> Any:
        """One S3 request; transport and permission failures become a ConfigError naming the location (never the
        credentials). ClientErrors the caller interprets (412, 404, 409: _CONDITIONAL) are re-raised as they are."""
        with self._errors(op, key):
            return getattr(self.client, op)(Bucket=self.bucket, **kw)

    @contextlib.contextmanager
    def _errors(self, op: str, key: str) -> Iterator[None]:
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        try:
            yield
        except ClientError as exc:
            code = _code(exc)
            if code in _CONDITIONAL:
                raise
            if code == "NoSuchBucket":
                raise ConfigError(f"The S3 bucket {self.bucket!r} of {self.url!r} does not exist.",
                                  hint=f"create it, or fix {self.setting}.") from None
            if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403"):
                raise ConfigError(f"S3 refused access to {self.url + '/' + key!r} ({code}).",
                                  hint="check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) and the "
                                  "bucket's policy.") from None
            raise ConfigError(f"S3 request {op} on {self.url + '/' + key!r} failed: {code}.",
                              hint="check XYLEN_S3_ENDPOINT_URL and the bucket.") from None
        except NoCredentialsError:
            raise ConfigError(f"No S3 credentials to reach {self.url!r}.",
                              hint="set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE).") from None
        except BotoCoreError as exc:
            where = self.endpoint_url or "AWS S3"
            raise ConfigError(f"Cannot reach S3 at {where!r} for {self.url!r}: {type(exc).__name__}.",
                              hint="check XYLEN_S3_ENDPOINT_URL and the network.") from None

    # -- reading -------------------------------------------------------------------------------------------
    def local_path(self, key: str) -> Path | None:
        return None

    def read(self, key: str) -> bytes:
        got = self.read_versioned(key)
        if got is None:
            raise Missing(key)
        return got.data

    def read_versioned(self, key: str) -> Versioned | None:
        from botocore.exceptions import ClientError

        try:
            r = self._call("get_object", key, Key=self._k(check_key(key)))
        except ClientError as exc:
            if _code(exc) in _ABSENT:
                return None
            raise
        return Versioned(r["Body"].read(), r["ETag"])

    def token(self, key: str) -> str | None:
        """The key's ETag by one HEAD request (None: absent): what a replica compares every poll."""
        from botocore.exceptions import ClientError

        try:
            return str(self._call("head_object", key, Key=self._k(check_key(key)))["ETag"])
        except ClientError as exc:
            if _code(exc) in _ABSENT:
                return None
            raise

    def _pages(self, prefix: str, delimiter: str | None = None
               ) -> Iterator[tuple[builtins.list[dict[str, Any]], builtins.list[str], datetime | None]]:
        """The pages of the listing of the full key ``prefix`` (boto3's paginator), each as (objects: their Key
        relative to this storage's prefix, common prefixes: relative too, the server's time of the answer: its Date
        header, None if it sent none). Errors are mapped like ``_call``'s."""
        from email.utils import parsedate_to_datetime

        base = len(self._k(""))
        kw: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
        if delimiter:
            kw["Delimiter"] = delimiter
        with self._errors("list_objects_v2", prefix):
            pages = iter(self.client.get_paginator("list_objects_v2").paginate(**kw))
        while True:
            with self._errors("list_objects_v2", prefix):
                r = next(pages, None)
            if r is None:
                return
            date = r.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
            yield ([o | {"Key": o["Key"][base:]} for o in r.get("Contents", ())],
                   [p["Prefix"][base:] for p in r.get("CommonPrefixes", ())],
                   parsedate_to_datetime(date) if date else None)

    def _list_raw(self, prefix: str, delimiter: str | None = None) -> tuple[list[str], list[str]]:
        """(keys, common prefixes) under the full key ``prefix``, relative to this storage's prefix."""
        keys: builtins.list[str] = []
        dirs: builtins.list[str] = []
        for objects, prefixes, _ in self._pages(prefix, delimiter):
            keys += [o["Key"] for o in objects]
            dirs += prefixes
        return keys, dirs

    def list(self, prefix: str = "") -> list[str]:
        """Keys under ``prefix`` (a folder, or the one key it names), sorted; internal objects never listed."""
        if not prefix:
            keys, _ = self._list_raw(self._k(""))
            return sorted(k for k in keys if k.split("/", 1)[0] not in _INTERNAL)
        check_key(prefix)
        keys, _ = self._list_raw(self._k(prefix))
        return sorted(k for k in keys if k == prefix or k.startswith(prefix + "/"))

    def list_tokens(self, prefix: str) -> dict[str, str]:
        """Keys under the folder ``prefix`` with their ETags (the tokens ``swap`` compares), from one listing:
        what the candle store uses to know, without a GET, whether a month file it cached is still current."""
        check_key(prefix)
        return {o["Key"]: str(o["ETag"]) for objects, _, _ in self._pages(self._k(prefix) + "/") for o in objects}

    def folders(self, prefix: str = "") -> builtins.list[str]:
        """Names of the "folders" directly under ``prefix`` (one delimited listing); internal areas excluded."""
        _, dirs = self._list_raw(self._k(f"{check_key(prefix)}/" if prefix else ""), "/")
        names = [d.rstrip("/").rsplit("/", 1)[-1] for d in dirs]
        return sorted(n for n in names if n not in _INTERNAL)

    def trees(self, prefix: str) -> builtins.list[str]:
        """Names of the published trees directly under ``prefix``: those with a commit marker (one listing)."""
        keys, _ = self._list_raw(self._k(f"{COMMIT}/{check_key(prefix)}/"), "/")
        return sorted(k.rsplit("/", 1)[-1] for k in keys)

    def has_tree(self, prefix: str) -> bool:
        return self.token(f"{COMMIT}/{check_key(prefix)}") is not None

    def download_tree(self, prefix: str, dest: Path) -> builtins.list[str]:
        """Copy every object of the published tree ``prefix`` into the local folder ``dest``; Missing if the tree
        is not (or no longer) published. Returns the relative keys."""
        if not self.has_tree(prefix):
            raise Missing(prefix)
        rels = [k[len(prefix) + 1:] for k in self.list(prefix) if k != prefix]
        for rel in rels:
            target = dest / check_key(rel)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(self.read(f"{prefix}/{rel}"))
        return rels

    # -- writing -------------------------------------------------------------------------------------------
    def put_new(self, key: str, data: bytes, *, sync_folder: bool = True) -> bool:
        """Create ``key`` unless it exists (then False): PutObject If-None-Match: * (S3 stores it whole or not).

        A 409 (ConditionalRequestConflict: another conditional write of ``key`` is in flight) says neither: the
        other write may still fail. It is retried, with a short backoff, until S3 answers 200 (True) or 412 (False:
        it really exists); XylenError if it never settles (IN_FLIGHT_RETRIES)."""
        from botocore.exceptions import ClientError

        check_key(key)
        delay = 0.05
        for attempt in range(IN_FLIGHT_RETRIES + 1):
            try:
                self._call("put_object", key, Key=self._k(key), Body=data, IfNoneMatch="*")
            except ClientError as exc:
                code = _code(exc)
                if code in _FAILED:
                    return False
                if code not in _IN_FLIGHT:
                    raise
                if attempt < IN_FLIGHT_RETRIES:
                    time.sleep(delay)
                    delay = min(delay * 2, 1.0)
                continue
            return True
        raise XylenError(f"S3 kept answering 409 ConditionalRequestConflict to {IN_FLIGHT_RETRIES + 1} writes of "
                         f"{self.url + '/' + key!r}: another write of it stayed in flight; nothing was stored.",
                         hint="retry; if it persists, check what else writes to this bucket.")

    def swap(self, key: str, data: bytes, expect: str | None, *, require: Sequence[str] = ()) -> str:
        """Replace ``key`` only if its ETag is still ``expect`` (None: only if absent); Conflict otherwise.
        ``require``: trees that must still be published, checked under ``key``'s lease (see ``retire``)."""
        from botocore.exceptions import ClientError

        check_key(key)
        with self.lease([key]) if require else contextlib.nullcontext():
            for prefix in require:
                if not self.has_tree(prefix):
                    raise Missing(prefix)
            cond = {"IfMatch": expect} if expect is not None else {"IfNoneMatch": "*"}
            try:
                r = self._call("put_object", key, Key=self._k(key), Body=data, **cond)
            except ClientError as exc:
                if _code(exc) in _CONDITIONAL:
                    raise Conflict(key, expect, self.token(key)) from None
                raise
        return str(r["ETag"])

    def delete(self, key: str) -> None:
        self._call("delete_object", key, Key=self._k(check_key(key)))

    def delete_many(self, keys: Sequence[str]) -> None:
        """Delete ``keys`` (absent ones too) with one DeleteObjects request per 1000; ConfigError if any fails."""
        keys = [check_key(k) for k in keys]
        for i in range(0, len(keys), 1000):
            part = keys[i : i + 1000]
            r = self._call("delete_objects", part[0], Delete={"Objects": [{"Key": self._k(k)} for k in part],
                                                               "Quiet": True})
            if r.get("Errors"):
                e = r["Errors"][0]
                raise ConfigError(f"S3 did not delete {self.url + '/' + str(e.get('Key', ''))!r} ({e.get('Code')}).",
                                  hint=f"check the bucket's policy (delete permission) for {self.setting}.")

    def publish_tree(self, folder: Path, prefix: str) -> bool:
        """Upload ``folder`` under ``prefix`` and make it visible by its commit marker, created last; False if
        another writer claimed ``prefix`` first (its claim decides, before any file is uploaded).

        The claim is sealed (rewritten If-Match on its ETag) before the marker: a cleanup that judged this upload
        abandoned (``clean_abandoned``) rewrote the claim first, so the seal fails and nothing is published."""
        check_key(prefix)
        claim, owner = f"{CLAIM}/{prefix}", uuid.uuid4().hex
        if self.has_tree(prefix):
            return False
        etag = self._put_if(claim, _claim_body(owner, "uploading"), IfNoneMatch="*")
        if etag is None:
            return False
        files = sorted(f for f in folder.rglob("*") if f.is_file())
        for f in files:
            rel = check_key(f.relative_to(folder).as_posix())
            if self._put_if(f"{prefix}/{rel}", f.read_bytes(), IfNoneMatch="*") is None:  # never overwrite
                raise XylenError(f"{self.url}/{prefix}/{rel} exists already: an abandoned upload left it, or another "
                                 "writer ignores claims; nothing was published.",
                                 hint="run `xylen models prune` once the abandoned upload is past its grace period "
                                 f"({CLAIM_GRACE_S / 3600:.0f} h), then publish again.")
        sealed = self._put_if(claim, _claim_body(owner, "committing"), IfMatch=etag)
        if sealed is None:
            raise self._taken_over(prefix)
        body = "\n".join(f.relative_to(folder).as_posix() for f in files).encode()
        if not self.put_new(f"{COMMIT}/{prefix}", body):  # only the claimant gets here
            raise XylenError(f"{self.url}/{prefix}: a commit marker appeared under our claim.",
                             hint="another writer ignores claims; check what else writes to this bucket.")
        if self.token(claim) != sealed:  # fenced between the seal and the marker: its files may be going
            with contextlib.suppress(XylenError):
                self.delete(f"{COMMIT}/{prefix}")
            raise self._taken_over(prefix)
        return True

    def _taken_over(self, prefix: str) -> XylenError:
        return XylenError(f"{self.url}/{prefix}: this upload stalled for longer than {CLAIM_GRACE_S / 3600:.0f} h and "
                          "a cleanup of abandoned uploads took its claim over; nothing was published.",
                          hint="publish again (it takes the next free version).")

    def _put_if(self, key: str, data: bytes, **cond: str) -> str | None:
        """PutObject with a condition (IfNoneMatch / IfMatch): the new ETag, or None when the condition failed."""
        from botocore.exceptions import ClientError

        try:
            return str(self._call("put_object", key, Key=self._k(check_key(key)), Body=data, **cond)["ETag"])
        except ClientError as exc:
            if _code(exc) in _CONDITIONAL:
                return None
            raise

    def _objects(self, prefix: str) -> tuple[builtins.list[dict[str, Any]], datetime | None]:
        """The objects under the full key ``prefix`` (Key relative to this storage's prefix, LastModified, ETag) and
        the server's time of the first answer (its Date header; None if it sent none)."""
        out: builtins.list[dict[str, Any]] = []
        now: datetime | None = None
        for i, (objects, _, date) in enumerate(self._pages(prefix)):
            out += objects
            now = date if i == 0 else now
        return out, now

    def clean_abandoned(self, prefix: str, *, grace_s: float | None = None, dry_run: bool = False
                        ) -> builtins.list[str]:
        """Remove the uploads that killed publishers left directly under ``prefix`` (a model name): a claim with no
        commit marker whose tree saw no write for ``grace_s`` (default CLAIM_GRACE_S) by the server's clock. Returns
        the trees removed (``dry_run``: those that would be; nothing changes), like ``m/v0003``."""
        grace = CLAIM_GRACE_S if grace_s is None else grace_s
        claims, now = self._objects(self._k(f"{CLAIM}/{check_key(prefix)}/"))
        if now is None:
            return []  # no server time to judge ages by: never guess with this host's clock
        committed = set(self.trees(prefix))
        out: builtins.list[str] = []
        for claim in claims:
            tree = claim["Key"][len(CLAIM) + 1:]
            name = tree[len(prefix) + 1:]
            if "/" in name or name in committed:
                continue
            files, _ = self._objects(self._k(f"{tree}/"))
            last = max([claim["LastModified"], *(f["LastModified"] for f in files)])
            if (now - last).total_seconds() <= grace:
                continue  # a publisher may still be uploading: left alone
            if dry_run:
                out.append(tree)
                continue
            judged = self.read_versioned(claim["Key"])  # its body, to restore should the tree turn out committed
            if judged is None or judged.token != claim["ETag"]:
                continue  # written (sealed) or removed since the listing: not abandoned
            fence = self._put_if(claim["Key"], _claim_body(uuid.uuid4().hex, "abandoned"), IfMatch=judged.token)
            if fence is None:
                continue  # its publisher sealed it meanwhile, or another cleanup took it: not ours
            if self.has_tree(tree):
                # committed meanwhile (our fence came after its publisher's last check of the claim): the version
                # is live-able and its claim must say who published it, not "abandoned"
                self._put_if(claim["Key"], judged.data, IfMatch=fence)
                continue
            for f in files:
                self.delete(f["Key"])
            for key in self.list(tree):  # anything written since the listing
                self.delete(key)
            self._drop_fence(claim["Key"], fence)
            out.append(tree)
        return out

    def _drop_fence(self, claim: str, fence: str) -> None:
        """Delete the claim ``claim`` only if it is still our fence (a claim someone wrote since stays). A server
        that refuses the conditional delete (no If-Match on DeleteObject, AccessDenied) leaves the fenced claim:
        logged, and the version number stays taken, never a claim deleted unconditionally."""
        from botocore.exceptions import ClientError

        try:
            self._call("delete_object", claim, Key=self._k(claim), IfMatch=fence)
        except ClientError:
            return  # 412/404: no longer our fence
        except XylenError as exc:
            log.warning("%s/%s: its abandoned upload was removed but its claim stays (%s); the version number stays "
                        "taken", self.url, claim[len(CLAIM) + 1:], exc.message)

    def retire(self, prefix: str, *, guards: Sequence[str], allowed: Callable[[], bool]) -> Path | None:
        """Take the tree out of sight (delete its commit marker) under the leases of ``guards``, if ``allowed()``
        still says so. Returns a handle for ``purge`` (the prefix as a relative path), None if nothing was done."""
        check_key(prefix)
        with self.lease(guards):
            if not self.has_tree(prefix) or not allowed():
                return None
            self.delete(f"{COMMIT}/{prefix}")
        return Path(prefix)

    def purge(self, retired: Path) -> None:
        """Delete the objects of a retired tree, then its claim (the version number is free again only then)."""
        prefix = check_key(retired.as_posix())
        for key in self.list(prefix):
            self.delete(key)
        self.delete(f"{CLAIM}/{prefix}")

    @contextlib.contextmanager
    def lease(self, keys: Sequence[str]) -> Iterator[None]:
        """Hold ``.lease/<key>`` for each key (sorted: one order for every holder), created If-None-Match.
        A lease older than LEASE_TTL_S by the server's clock is a dead holder's: it is broken (a conditional
        delete on its ETag, so two breakers cannot both win)."""
        held: list[str] = []
        try:
            for key in sorted(set(keys)):
                lk = f"{LEASE}/{check_key(key)}"
                deadline = time.monotonic() + LEASE_WAIT_S
                delay = 0.02
                while not self.put_new(lk, f"{os.getpid()}-{uuid.uuid4().hex}".encode()):
                    self._break_if_stale(lk)
                    if time.monotonic() > deadline:
                        raise XylenError(f"{self.url}/{key} stayed locked for {LEASE_WAIT_S:.0f} s.",
                                         hint="another writer holds it; retry later.")
                    time.sleep(delay)
                    delay = min(delay * 2, 0.5)
                held.append(lk)
            yield
        finally:
            for lk in reversed(held):
                with contextlib.suppress(XylenError):
                    self.delete(lk)

    def _break_if_stale(self, lk: str) -> None:
        from email.utils import parsedate_to_datetime

        from botocore.exceptions import ClientError

        try:
            r = self._call("head_object", lk, Key=self._k(lk))
        except ClientError:
            return
        server_now = r.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
        if not server_now:
            return
        age = (parsedate_to_datetime(server_now) - r["LastModified"]).total_seconds()
        if age > LEASE_TTL_S:
            with contextlib.suppress(ClientError):
                self._call("delete_object", lk, Key=self._k(lk), IfMatch=r["ETag"])

    # -- local scratch (staging a tree before publish_tree) ----------------------------------------------------
    def temp_dir(self) -> Path:
        return self.scratch.temp_dir()

    def clean_temp(self) -> int:
        return self.scratch.clean_temp()

    def discard_local(self, folder: Path) -> None:
        shutil.rmtree(folder, ignore_errors=True)


def _claim_body(owner: str, state: str) -> bytes:
    """What a claim says: who wrote it (a random id, the host, the pid), when (this host's clock: for people; ages are
    judged by the server's LastModified), and the publication's state (uploading, committing, abandoned)."""
    return json.dumps({"owner": owner, "host": socket.gethostname(), "pid": os.getpid(), "state": state,
                       "at": datetime.now(timezone.utc).isoformat(timespec="seconds")}).encode()


def _code(exc: Any) -> str:
    err = getattr(exc, "response", {}).get("Error", {})
    return str(err.get("Code") or getattr(exc, "response", {}).get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
