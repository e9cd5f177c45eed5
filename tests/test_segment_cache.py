"""The segment cache's budget, across restarts."""

from __future__ import annotations

import os

from carn_stream.server.vod.cache import Key, SegmentCache


def _publish(cache: SegmentCache, key: Key, size: int, at: float) -> None:
    path = cache.path(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(size))
    os.utime(path, (at, at))
    cache.add(key, size)


def test_a_lowered_budget_is_kept_from_the_start(tmp_path):
    """Before, a restart with a lower budget kept every cached byte until the next segment
    was made (3.37 MB held under a 400 KB budget)."""
    root = tmp_path / "videos"
    roomy = SegmentCache(root, budget=10_000)
    keys = [Key("a" * 32, "x2", i) for i in range(5)]
    for age, key in enumerate(keys):
        _publish(roomy, key, 1_000, at=1_000_000 + age)  # keys[0] least recently used
    assert roomy.bytes == 5_000
    tight = SegmentCache(root, budget=2_500)
    assert tight.bytes == 2_000 and [k in tight for k in keys] == [False] * 3 + [True] * 2
    assert sorted(p.name for p in (root / keys[0].video / "x2").iterdir()) == [
        "segment_00003.ts", "segment_00004.ts"]  # fmt: skip
    nothing = SegmentCache(root, budget=0)  # at start even the newest may go
    assert nothing.bytes == 0 and not any((root / keys[0].video / "x2").iterdir())


def test_the_newest_segment_is_kept_even_over_the_budget(tmp_path):
    cache = SegmentCache(tmp_path, budget=500)
    key = Key("b" * 32, "x2", 0)
    _publish(cache, key, 1_000, at=1_000_000)
    assert key in cache and cache.bytes == 1_000  # a player is about to read it


def test_room_is_made_on_the_disk_from_the_least_recently_used(tmp_path):
    cache = SegmentCache(tmp_path, budget=10_000)
    keys = [Key("c" * 32, "x2", i) for i in range(4)]
    for age, key in enumerate(keys):
        _publish(cache, key, 1_000, at=1_000_000 + age)
    assert cache.make_room(1_500) == keys[:2]  # whole segments, oldest first
    assert cache.bytes == 2_000 and not cache.path(keys[0]).exists()
    # A new segment below the floor evicts for it too, never itself.
    new = Key("c" * 32, "x2", 9)
    assert cache.add(new, 1_000, shortfall=5_000) == keys[2:]
    assert new in cache and cache.bytes == 1_000
    assert cache.make_room(5_000) == [new] and cache.bytes == 0


def test_segments_made_with_another_deinterlace_setting_go_at_start(tmp_path):
    """A restart with CARN_STREAM_DEINTERLACE changed served the segments made before (combed,
    or not) beside new ones (the other way) in one playlist. Upscaled segments made with other
    settings go at start; those of the original rendition, copied as they are, stay."""
    root = tmp_path / "videos"
    first = SegmentCache(root, budget=10_000)
    assert first.keep_made_with({"deinterlace": True}, {"original"}) == 0  # nothing recorded yet
    keys = [Key("c" * 32, rendition, 0) for rendition in ("x2", "x4", "original")]
    for key in keys:
        _publish(first, key, 100, at=1_000_000)
    same = SegmentCache(root, budget=10_000)
    assert same.keep_made_with({"deinterlace": True}, {"original"}) == 0
    assert all(key in same for key in keys)
    other = SegmentCache(root, budget=10_000)
    assert other.keep_made_with({"deinterlace": False}, {"original"}) == 2
    assert [key in other for key in keys] == [False, False, True] and other.bytes == 100
    assert not other.path(keys[0]).exists() and other.path(keys[2]).exists()
    again = SegmentCache(root, budget=10_000)
    assert again.keep_made_with({"deinterlace": False}, {"original"}) == 0  # recorded


def test_a_setting_change_keeps_the_segments_of_videos_with_their_own_choice(tmp_path):
    """Every video's upscaled segments went when CARN_STREAM_DEINTERLACE changed, those of
    videos that record their own choice too (they do not change with it): only the segments
    of videos that follow the setting go."""
    root = tmp_path / "videos"
    first = SegmentCache(root, budget=10_000)
    first.keep_made_with({"deinterlace": True}, {"original"})
    follows, own = "d" * 32, "e" * 32
    keys = {video: Key(video, "x2", 0) for video in (follows, own)}
    for key in keys.values():
        _publish(first, key, 100, at=1_000_000)
    other = SegmentCache(root, budget=10_000)
    assert other.keep_made_with({"deinterlace": False}, {"original"},
                                lambda video: video == follows) == 1  # fmt: skip
    assert keys[follows] not in other and keys[own] in other
    assert other.path(keys[own]).exists() and other.bytes == 100


def test_a_record_that_cannot_be_written_does_not_stop_the_start(tmp_path, caplog):
    """The record is written at every start with new settings: a data folder where it cannot
    be (here a folder stands in its place) failed the service's start."""
    from carn_stream.server.vod.cache import MADE_WITH_NAME

    root = tmp_path / "videos"
    cache = SegmentCache(root, budget=10_000)
    (root / MADE_WITH_NAME).mkdir()
    assert cache.keep_made_with({"deinterlace": True}, {"original"}) == 0
    assert "could not record" in caplog.text


def test_fragmented_mp4_segments_are_counted_across_a_restart_and_evicted(tmp_path):
    """An HEVC original's segments are .m4s files beside its init.mp4: found again at start
    (the cache counted .ts files only, so they were never evicted), evicted like any other;
    init.mp4 stays."""
    root = tmp_path / "videos"
    cache = SegmentCache(root, budget=10_000)
    keys = [Key("c" * 32, "original", i) for i in range(3)]
    for age, key in enumerate(keys):
        path = cache.path(key, fragment=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(bytes(1_000))
        os.utime(path, (1_000_000 + age, 1_000_000 + age))
        cache.add(key, 1_000, fragment=True)
    folder = root / keys[0].video / "original"
    (folder / "init.mp4").write_bytes(bytes(700))
    assert cache.path(keys[0]).name == "segment_00000.m4s"
    again = SegmentCache(root, budget=2_000)
    assert again.bytes == 2_000 and [k in again for k in keys] == [False, True, True]
    assert again.path(keys[1]) == folder / "segment_00001.m4s"
    assert sorted(p.name for p in folder.iterdir()) == [
        "init.mp4", "segment_00001.m4s", "segment_00002.m4s"]  # fmt: skip
    assert again.drop(keys[0].video, "original") == 2
    assert sorted(p.name for p in folder.iterdir()) == ["init.mp4"]
