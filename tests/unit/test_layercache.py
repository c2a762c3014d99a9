"""Layer cache: atomic insert, verification on reuse, locking, eviction."""
from __future__ import annotations

import os
import threading
import time

import pytest

from gateway.layercache import STALE_TMP_SECONDS, LayerCache


def put(cache: LayerCache, key: str, data: bytes) -> None:
    cache.insert(key, lambda out: out.write(data)).close()


def test_insert_then_open_gives_the_content(tmp_path):
    cache = LayerCache(str(tmp_path))
    entry = cache.insert("abc.zstd3", lambda out: out.write(b"pack data"))
    assert entry.file.read(entry.size) == b"pack data"       # the inserter reads it directly
    entry.close()
    with cache.open("abc.zstd3") as again:
        assert again.size == 9 and again.file.read(again.size) == b"pack data"
    assert cache.open("other") is None


@pytest.mark.parametrize("damage", ["flip", "truncate", "append"])
def test_damaged_entries_count_as_missing_and_are_removed(tmp_path, damage):
    cache = LayerCache(str(tmp_path))
    put(cache, "k", b"x" * 1000)
    path = cache.path("k")
    with open(path, "r+b") as f:
        if damage == "flip":
            f.seek(10)
            f.write(b"y")
        elif damage == "truncate":
            f.truncate(500)
        else:
            f.seek(0, os.SEEK_END)
            f.write(b"more")
    assert cache.open("k") is None
    assert not os.path.exists(path)


def test_failed_insert_leaves_nothing(tmp_path):
    cache = LayerCache(str(tmp_path))

    def produce(out):
        out.write(b"half")
        raise RuntimeError("download broke")

    with pytest.raises(RuntimeError):
        cache.insert("k", produce)
    assert cache.open("k") is None
    assert os.listdir(tmp_path / "tmp") == []


def test_keys_cannot_name_other_paths(tmp_path):
    cache = LayerCache(str(tmp_path))
    for key in ("../x", "a/b", "", "UPPER", ".hidden"):
        with pytest.raises(ValueError):
            cache.path(key)


def test_lock_makes_the_second_puller_reuse_the_first_ones_entry(tmp_path):
    cache = LayerCache(str(tmp_path))
    produced = []
    barrier = threading.Barrier(4)

    def pull():
        barrier.wait()
        with cache.lock("layer"):
            entry = cache.open("layer")
            if entry is None:
                produced.append(1)
                time.sleep(0.05)
                entry = cache.insert("layer", lambda out: out.write(b"content"))
            with entry:
                assert entry.file.read(entry.size) == b"content"

    threads = [threading.Thread(target=pull) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert produced == [1]


def test_eviction_removes_least_recently_used_above_the_limit(tmp_path):
    cache = LayerCache(str(tmp_path), size_limit=2500)
    now = time.time()
    for age, key in enumerate(["newest", "middle", "oldest", "kept"]):
        put(cache, key, b"x" * 1000)
        os.utime(cache.path(key), (now - 100 * age, now - 100 * age))
        with cache.lock(key):
            pass
    removed = cache.evict(keep={"kept"})
    assert sorted(removed) == ["middle", "oldest"]
    assert sorted(os.listdir(tmp_path / "entries")) == ["kept", "newest"]
    assert "oldest" not in os.listdir(tmp_path / "locks")


def test_reuse_refreshes_the_entry_so_it_is_evicted_last(tmp_path):
    cache = LayerCache(str(tmp_path), size_limit=1500)
    put(cache, "a", b"x" * 1000)
    put(cache, "b", b"x" * 1000)
    old = time.time() - 1000
    os.utime(cache.path("a"), (old, old))
    os.utime(cache.path("b"), (old + 1, old + 1))
    cache.open("a").close()                  # a used now, b not
    assert cache.evict() == ["b"]


def test_stale_temporary_files_are_cleaned(tmp_path):
    cache = LayerCache(str(tmp_path))
    stale, fresh = tmp_path / "tmp" / "k.stale", tmp_path / "tmp" / "k.fresh"
    stale.write_bytes(b"left by a crashed worker")
    fresh.write_bytes(b"being written")
    old = time.time() - STALE_TMP_SECONDS - 10
    os.utime(stale, (old, old))
    cache.evict()
    assert not stale.exists() and fresh.exists()
