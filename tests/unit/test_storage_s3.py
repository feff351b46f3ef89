"""The storage seam's contract, on a local disk and on S3 (moto's server on loopback): the same tests for both.

S3 specifics: conditional writes (If-None-Match / If-Match) refuse a stale writer; a tree is visible only once
its commit marker exists; leases order a retire against a swap that requires the tree."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from tests import s3moto
from xylen.core.errors import ConfigError
from xylen.core.storage import Conflict, LocalStorage, Missing
from xylen.core.storage_s3 import S3Storage, parse_s3_url

boto3, make_bucket = s3moto.boto3, s3moto.make_bucket
moto_endpoint, s3_env = s3moto.moto_endpoint, s3moto.s3_env  # fixtures


@pytest.fixture(params=["local", "s3"])
def st(request: pytest.FixtureRequest, tmp_path: Path) -> LocalStorage | S3Storage:
    if request.param == "local":
        return LocalStorage(tmp_path / "root")
    endpoint = request.getfixturevalue("s3_env")
    return S3Storage(f"s3://{make_bucket(endpoint)}/pre/fix", scratch=tmp_path / "scratch", endpoint_url=endpoint)


def _tree(st: LocalStorage | S3Storage, files: dict[str, bytes]) -> Path:
    src = st.temp_dir()
    for rel, data in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    return src


def test_put_new_creates_once_and_never_overwrites(st) -> None:
    assert st.put_new("a/b/obj.bin", b"one")
    assert not st.put_new("a/b/obj.bin", b"two")
    assert st.read("a/b/obj.bin") == b"one"
    assert st.list() == ["a/b/obj.bin"]


def test_swap_is_a_compare_and_swap(st) -> None:
    t1 = st.swap("p.json", b"1", None)
    with pytest.raises(Conflict):
        st.swap("p.json", b"x", None)  # expected absent, but it exists
    got = st.read_versioned("p.json")
    assert got is not None and got.token == t1 and got.data == b"1" and st.token("p.json") == t1
    t2 = st.swap("p.json", b"2", t1)
    with pytest.raises(Conflict):
        st.swap("p.json", b"stale", t1)  # a writer that read version 1 must not overwrite version 2
    assert st.read("p.json") == b"2" and st.token("p.json") == t2
    with pytest.raises(Conflict):
        st.swap("gone.json", b"x", t2)  # expects a version of a key that does not exist


def test_read_missing_and_delete(st) -> None:
    with pytest.raises(Missing):
        st.read("nope")
    assert st.read_versioned("nope") is None and st.token("nope") is None
    st.put_new("x/y", b"1")
    st.delete("x/y")
    st.delete("x/y")  # deleting what is gone is no error
    assert st.read_versioned("x/y") is None and st.list() == []


@pytest.mark.parametrize("key", ["../x", "/etc/passwd", "a/../../b", "a//b", "", ".tmp/x", "a\\b", "./a"])
def test_keys_cannot_escape(st, key: str) -> None:
    with pytest.raises(ConfigError):
        st.put_new(key, b"x")


def test_list_is_by_folder_not_by_string_prefix(st) -> None:
    for k in ("m/v1/a", "m/v10/a", "m/v1x", "n/b"):
        st.put_new(k, b"x")
    assert st.list("m/v1") == ["m/v1/a"]
    assert st.list("m") == ["m/v1/a", "m/v10/a", "m/v1x"]
    assert st.folders() == ["m", "n"] and st.folders("m") == ["v1", "v10"]


def test_concurrent_swaps_lose_no_update(st) -> None:
    def bump(n: int) -> None:
        done = 0
        while done < n:
            got = st.read_versioned("counter")
            try:
                st.swap("counter", str((int(got.data) if got else 0) + 1).encode(), got.token if got else None)
                done += 1
            except Conflict:
                continue

    threads = [threading.Thread(target=bump, args=(10,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert st.read("counter") == b"40"


def test_publish_tree_is_all_or_nothing(st) -> None:
    src = _tree(st, {"a.txt": b"a", "sub/b.txt": b"b"})
    assert st.publish_tree(src, "m/v0001")
    assert st.list("m") == ["m/v0001/a.txt", "m/v0001/sub/b.txt"]
    assert st.trees("m") == ["v0001"] and st.has_tree("m/v0001") and not st.has_tree("m/v0002")
    other = _tree(st, {"a.txt": b"other"})
    assert not st.publish_tree(other, "m/v0001")  # taken: nothing replaced
    assert st.read("m/v0001/a.txt") == b"a" and other.is_dir()


def test_retire_then_purge_removes_a_tree_unless_no_longer_allowed(st) -> None:
    st.publish_tree(_tree(st, {"a.txt": b"a"}), "m/v0001")
    st.publish_tree(_tree(st, {"a.txt": b"b"}), "m/v0002")
    assert st.retire("m/v0001", guards=["m/CURRENT.json"], allowed=lambda: False) is None
    assert st.has_tree("m/v0001")
    handle = st.retire("m/v0001", guards=["m/CURRENT.json", "m/PINS.json"], allowed=lambda: True)
    assert handle is not None and not st.has_tree("m/v0001") and st.trees("m") == ["v0002"]
    with pytest.raises(Missing):  # a pointer can never come to name a retired tree
        st.swap("m/CURRENT.json", b"v0001", None, require=["m/v0001"])
    st.purge(handle)
    assert st.list("m/v0001") == [] and st.list("m") == ["m/v0002/a.txt"]
    assert st.swap("m/CURRENT.json", b"v0002", None, require=["m/v0002"])


# -- S3 only -------------------------------------------------------------------------------------------------
def _s3(tmp_path: Path, endpoint: str) -> S3Storage:
    return S3Storage(f"s3://{make_bucket(endpoint)}/reg", scratch=tmp_path / "scratch", endpoint_url=endpoint)


def test_moto_enforces_the_conditional_writes_the_seam_relies_on(s3_env: str) -> None:
    """The stand-in must refuse what S3 refuses, or every other test here proves nothing."""
    from botocore.exceptions import ClientError

    bucket = make_bucket(s3_env)
    c = boto3.client("s3", endpoint_url=s3_env, region_name="us-east-1")
    first = c.put_object(Bucket=bucket, Key="k", Body=b"1", IfNoneMatch="*")
    for cond in ({"IfNoneMatch": "*"}, {"IfMatch": '"0123456789abcdef0123456789abcdef"'}):
        with pytest.raises(ClientError) as err:
            c.put_object(Bucket=bucket, Key="k", Body=b"2", **cond)
        assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    c.put_object(Bucket=bucket, Key="k", Body=b"2", IfMatch=first["ETag"])
    assert c.get_object(Bucket=bucket, Key="k")["Body"].read() == b"2"


def test_two_writers_a_stale_pointer_write_is_refused(tmp_path: Path, s3_env: str) -> None:
    a = _s3(tmp_path, s3_env)
    b = S3Storage(a.url, scratch=tmp_path / "b", endpoint_url=s3_env)  # another process, same bucket
    t0 = a.swap("m/CURRENT.json", b'{"version": "v0001"}', None)
    seen_by_a = a.read_versioned("m/CURRENT.json")
    seen_by_b = b.read_versioned("m/CURRENT.json")
    assert seen_by_a and seen_by_b and seen_by_a.token == seen_by_b.token == t0
    b.swap("m/CURRENT.json", b'{"version": "v0002"}', seen_by_b.token)
    with pytest.raises(Conflict) as err:
        a.swap("m/CURRENT.json", b'{"version": "v0003"}', seen_by_a.token)
    assert err.value.expected == t0 and err.value.found != t0
    assert a.read("m/CURRENT.json") == b'{"version": "v0002"}'  # b's write survived


def test_a_tree_without_commit_marker_is_invisible(tmp_path: Path, s3_env: str) -> None:
    st = _s3(tmp_path, s3_env)
    c = st.client
    # a crafted or half-uploaded tree: files under the prefix, no marker
    c.put_object(Bucket=st.bucket, Key="reg/m/v0001/manifest.json", Body=b"{}")
    assert st.trees("m") == [] and not st.has_tree("m/v0001")
    with pytest.raises(Missing):
        st.download_tree("m/v0001", tmp_path / "dl")
    st.publish_tree(_tree(st, {"manifest.json": b'{"ok": 1}'}), "m/v0002")
    assert st.trees("m") == ["v0002"]
    assert st.download_tree("m/v0002", tmp_path / "dl") == ["manifest.json"]
    assert (tmp_path / "dl" / "manifest.json").read_bytes() == b'{"ok": 1}'
    # a writer that claimed a prefix and died never lets another writer mix files into it
    c.put_object(Bucket=st.bucket, Key="reg/.claim/m/v0003", Body=b"dead")
    assert not st.publish_tree(_tree(st, {"a": b"x"}), "m/v0003") and st.list("m/v0003") == []
    assert ".claim" not in st.folders() and all(not k.startswith(".") for k in st.list())


def test_a_dead_holders_lease_is_broken_after_its_ttl(tmp_path: Path, s3_env: str, monkeypatch) -> None:
    from xylen.core import storage_s3

    st = _s3(tmp_path, s3_env)
    st.put_new(".lease/m/CURRENT.json", b"a killed writer")
    monkeypatch.setattr(storage_s3, "LEASE_TTL_S", -1.0)  # its age is past any TTL
    st.publish_tree(_tree(st, {"a": b"x"}), "m/v0001")
    assert st.swap("m/CURRENT.json", b"1", None, require=["m/v0001"])
    assert st.token(".lease/m/CURRENT.json") is None  # released after the swap


@pytest.mark.parametrize("url", ["s3://", "s3:///x", "http://b/x", "s3://b/x/../y", "s3://b/x?versionId=1"])
def test_bad_s3_urls_are_refused_with_the_form(url: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_s3_url(url)
    assert repr(url[:200]) in err.value.message and "s3://" in (err.value.message + (err.value.hint or ""))


def test_unreachable_endpoint_is_a_clear_error(tmp_path: Path, monkeypatch) -> None:
    from tests.conftest import free_port

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    url = f"http://127.0.0.1:{free_port()}"
    st = S3Storage("s3://bkt/x", scratch=tmp_path, endpoint_url=url)
    st._client = None
    with pytest.raises(ConfigError) as err:
        st.read_versioned("m/CURRENT.json")
    assert url in err.value.message and "XYLEN_S3_ENDPOINT_URL" in (err.value.hint or "")
    assert "s\n" not in err.value.message and "'s'" not in err.value.message


# -- abandoned claims (a publisher killed between its claim and its commit marker) ----------------------------------
def _killed_publisher(st: S3Storage, tree: str) -> None:
    """What a publisher killed mid-upload leaves: its claim and part of its files, no commit marker."""
    from xylen.core.storage_s3 import _claim_body

    assert st.put_new(f".claim/{tree}", _claim_body("dead", "uploading"))
    st.client.put_object(Bucket=st.bucket, Key=f"{st.prefix}/{tree}/manifest.json", Body=b'{"half": 1}')


def test_an_abandoned_upload_is_cleaned_after_its_grace_and_the_number_is_free_again(tmp_path: Path,
                                                                                    s3_env: str) -> None:
    import json

    st = _s3(tmp_path, s3_env)
    assert st.publish_tree(_tree(st, {"manifest.json": b'{"v": 1}', "model.txt": b"one"}), "m/v0001")
    claim = json.loads(st.read(".claim/m/v0001"))
    assert claim["owner"] and claim["host"] and claim["pid"] and claim["at"] and claim["state"] == "committing"
    _killed_publisher(st, "m/v0002")
    assert not st.publish_tree(_tree(st, {"a": b"x"}), "m/v0002")  # the number stays taken while it is claimed
    assert st.clean_abandoned("m") == []  # fresh (within CLAIM_GRACE_S): a publisher may still be uploading
    assert st.list("m/v0002") == ["m/v0002/manifest.json"] and st.token(".claim/m/v0002") is not None
    assert st.clean_abandoned("m", grace_s=-1, dry_run=True) == ["m/v0002"]
    assert st.list("m/v0002") == ["m/v0002/manifest.json"]  # a dry run changes nothing
    assert st.clean_abandoned("m", grace_s=-1) == ["m/v0002"]  # every age is past a grace of -1 s
    assert st.list("m/v0002") == [] and st.token(".claim/m/v0002") is None
    # a committed tree is never touched, however old
    assert st.list("m/v0001") == ["m/v0001/manifest.json", "m/v0001/model.txt"] and st.has_tree("m/v0001")
    assert st.token(".claim/m/v0001") is not None and st.clean_abandoned("m", grace_s=-1) == []
    assert st.publish_tree(_tree(st, {"manifest.json": b'{"v": 2}'}), "m/v0002")  # the next publish works
    assert st.trees("m") == ["v0001", "v0002"] and st.read("m/v0002/manifest.json") == b'{"v": 2}'


def test_a_stalled_publisher_that_a_cleanup_fenced_publishes_nothing(tmp_path: Path, s3_env: str) -> None:
    from xylen.core.errors import XylenError

    st = _s3(tmp_path, s3_env)
    cleaner = S3Storage(st.url, scratch=tmp_path / "c", endpoint_url=s3_env)  # another host
    real = st._put_if

    def stalls_after_first_file(key: str, data: bytes, **cond: str) -> str | None:
        got = real(key, data, **cond)
        if key == "m/v0001/a":  # stalled past the grace here: a cleanup judges the upload abandoned
            assert cleaner.clean_abandoned("m", grace_s=-1) == ["m/v0001"]
        return got

    st._put_if = stalls_after_first_file  # type: ignore[method-assign]
    with pytest.raises(XylenError, match="took its claim over"):
        st.publish_tree(_tree(st, {"a": b"1"}), "m/v0001")
    assert st.trees("m") == [] and not st.has_tree("m/v0001") and st.list("m/v0001") == []


def test_a_publisher_fenced_between_its_seal_and_its_marker_withdraws_the_marker(tmp_path: Path,
                                                                                 s3_env: str) -> None:
    from xylen.core.errors import XylenError

    st = _s3(tmp_path, s3_env)
    cleaner = S3Storage(st.url, scratch=tmp_path / "c", endpoint_url=s3_env)
    real = st.put_new

    def stalls_before_the_marker(key: str, data: bytes, *, sync_folder: bool = True) -> bool:
        if key.startswith(".commit/"):  # sealed, then stalled past the grace: the cleanup fences the sealed claim
            assert cleaner.clean_abandoned("m", grace_s=-1) == ["m/v0001"]
        return real(key, data, sync_folder=sync_folder)

    st.put_new = stalls_before_the_marker  # type: ignore[method-assign]
    with pytest.raises(XylenError, match="took its claim over"):
        st.publish_tree(_tree(st, {"a": b"1", "b": b"2"}), "m/v0001")
    assert st.trees("m") == [] and not st.has_tree("m/v0001") and st.list("m/v0001") == []


def test_a_cleanup_never_takes_a_claim_its_publisher_sealed_meanwhile(tmp_path: Path, s3_env: str) -> None:
    st = _s3(tmp_path, s3_env)
    cleaner = S3Storage(st.url, scratch=tmp_path / "c", endpoint_url=s3_env)
    real_seal, real_list = st._put_if, cleaner._objects
    seen: dict[str, object] = {}

    def lists_before_the_seal(prefix: str):  # type: ignore[no-untyped-def]
        return seen.pop(prefix) if prefix in seen else real_list(prefix)

    def seals(key: str, data: bytes, **cond: str) -> str | None:
        if "IfMatch" in cond:  # the cleanup listed the claim (and judged it old) just before this seal
            for p in (cleaner._k(".claim/m/"), cleaner._k("m/v0001/")):
                seen[p] = real_list(p)
        return real_seal(key, data, **cond)

    st._put_if = seals  # type: ignore[method-assign]
    cleaner._objects = lists_before_the_seal  # type: ignore[method-assign]
    real_marker = st.put_new

    def cleanup_then_marker(key: str, data: bytes, *, sync_folder: bool = True) -> bool:
        if key.startswith(".commit/"):
            assert cleaner.clean_abandoned("m", grace_s=-1) == []  # its fence fails: the ETag it judged is gone
        return real_marker(key, data, sync_folder=sync_folder)

    st.put_new = cleanup_then_marker  # type: ignore[method-assign]
    assert st.publish_tree(_tree(st, {"a": b"1"}), "m/v0001")
    assert st.trees("m") == ["v0001"] and st.read("m/v0001/a") == b"1"


def test_a_refused_conditional_delete_of_the_claim_leaves_the_fenced_claim(
    tmp_path: Path, s3_env: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An S3-compatible server without conditional deletes (NotImplemented), or a policy denying them: the abandoned
    upload's objects are removed, its fenced claim stays (logged), and nothing escapes to stop the prune."""
    import json
    import logging

    from botocore.exceptions import ClientError

    st = _s3(tmp_path, s3_env)
    _killed_publisher(st, "m/v0001")
    real = st.client.delete_object

    def refuses_conditional_deletes(**kw: object) -> object:
        if "IfMatch" in kw:
            raise ClientError({"Error": {"Code": "NotImplemented", "Message": "no If-Match"}}, "DeleteObject")
        return real(**kw)

    monkeypatch.setattr(st.client, "delete_object", refuses_conditional_deletes)
    with caplog.at_level(logging.WARNING, logger="xylen.registry"):
        assert st.clean_abandoned("m", grace_s=-1) == ["m/v0001"]
    assert st.list("m/v0001") == [] and json.loads(st.read(".claim/m/v0001"))["state"] == "abandoned"
    assert "m/v0001: its abandoned upload was removed but its claim stays" in caplog.text
    assert "NotImplemented" in caplog.text
    assert not st.publish_tree(_tree(st, {"a": b"x"}), "m/v0001")  # the number stays taken, never unconditionally


def test_a_cleanup_that_fences_a_claim_just_committed_gives_the_claim_back(tmp_path: Path, s3_env: str) -> None:
    """The fence lands after the publisher's last check of its claim (the tree is committed): the cleanup sees the
    commit marker, restores the claim's body (If-Match on its fence) and removes nothing."""
    st = _s3(tmp_path, s3_env)
    cleaner = S3Storage(st.url, scratch=tmp_path / "c", endpoint_url=s3_env)
    assert st.publish_tree(_tree(st, {"a": b"1"}), "m/v0001")
    claim = st.read_versioned(".claim/m/v0001")
    assert claim is not None
    cleaner.trees = lambda prefix: []  # type: ignore[method-assign]  # its listing of markers came just before ours
    assert cleaner.clean_abandoned("m", grace_s=-1) == []
    got = st.read_versioned(".claim/m/v0001")
    assert got is not None and got.data == claim.data  # says "committing" and who published, not "abandoned"
    assert st.trees("m") == ["v0001"] and st.read("m/v0001/a") == b"1"


class _PutObject:
    """A client whose PutObject answers each code of ``answers`` in turn (200: success)."""

    def __init__(self, *answers: int) -> None:
        self.answers, self.calls = list(answers), 0

    def put_object(self, **kw: object) -> dict[str, str]:
        from botocore.exceptions import ClientError

        self.calls += 1
        code = self.answers.pop(0)
        if code == 200:
            return {"ETag": '"e"'}
        name = {409: "ConditionalRequestConflict", 412: "PreconditionFailed"}[code]
        raise ClientError({"Error": {"Code": name, "Message": "x"}, "ResponseMetadata": {"HTTPStatusCode": code}},
                          "PutObject")


def test_put_new_retries_a_409_until_s3_says_stored_or_exists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                                ) -> None:
    """409 (another conditional write in flight) is neither "stored" nor "exists": the other write may fail."""
    from xylen.core import storage_s3
    from xylen.core.errors import XylenError

    slept: list[float] = []
    monkeypatch.setattr(storage_s3.time, "sleep", slept.append)

    def put(*answers: int) -> tuple[bool, int]:
        client = _PutObject(*answers)
        st = S3Storage("s3://b/p", scratch=tmp_path / "s", client=client)
        return st.put_new("m/2024-01.parquet", b"candles"), client.calls

    assert put(409, 200) == (True, 2)
    assert put(409, 409, 412) == (False, 3)
    assert put(412) == (False, 1) and put(200) == (True, 1)
    slept.clear()
    client = _PutObject(*[409] * (storage_s3.IN_FLIGHT_RETRIES + 1))
    with pytest.raises(XylenError, match="kept answering 409") as err:
        S3Storage("s3://b/p", scratch=tmp_path / "s", client=client).put_new("m/2024-01.parquet", b"candles")
    assert "s3://b/p/m/2024-01.parquet" in err.value.message and err.value.hint
    assert client.calls == storage_s3.IN_FLIGHT_RETRIES + 1 and len(slept) == storage_s3.IN_FLIGHT_RETRIES
    assert slept == sorted(slept) and max(slept) <= 1.0  # a short, bounded backoff


def test_listings_follow_every_page(tmp_path: Path, s3_env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """One paginator behind every listing: keys, tokens and the abandoned-upload scan read all the pages."""
    st = _s3(tmp_path, s3_env)
    for k in ("m/a", "m/b", "m/c"):
        assert st.put_new(k, b"x")
    real = st.client.get_paginator

    class OneKeyPages:
        def __init__(self, op: str) -> None:
            self.paginator = real(op)

        def paginate(self, **kw: object) -> object:
            return self.paginator.paginate(**kw, PaginationConfig={"PageSize": 1})

    monkeypatch.setattr(st.client, "get_paginator", OneKeyPages)
    assert len(list(st._pages(st._k("m/")))) == 3
    assert st.list("m") == ["m/a", "m/b", "m/c"] and set(st.list_tokens("m")) == {"m/a", "m/b", "m/c"}
    objects, now = st._objects(st._k("m/"))
    assert [o["Key"] for o in objects] == ["m/a", "m/b", "m/c"] and now is not None
