"""Players' playheads: starts and seeks told from playing on, players told apart by their id,
idle players no longer counted, and a bounded memory."""

from __future__ import annotations

from carn_stream.server.vod.playheads import Playheads


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_start_and_a_seek_are_told_from_playing_on():
    heads = Playheads(idle_seconds=60, clock=Clock())
    head = ("v", "x2", "a")
    assert heads.move(head, 0)  # the start
    assert not heads.move(head, 1) and not heads.move(head, 1)  # the next one, asked again
    assert heads.move(head, 5)  # a seek forward
    assert heads.move(head, 2)  # and back


def test_players_of_one_rendition_are_told_apart_and_idle_ones_drop_out():
    clock = Clock()
    heads = Playheads(idle_seconds=60, clock=clock)
    heads.move(("v", "x2", "a"), 0)
    clock.now += 30
    heads.move(("v", "x2", "b"), 3)
    heads.move(("v", "x2", ""), 7)  # requests without an id: one anonymous player
    heads.move(("v", "original", "c"), 9)  # another rendition
    heads.move(("w", "x2", "a"), 4)  # another video
    assert sorted(heads.positions("v", "x2")) == [0, 3, 7]
    clock.now += 31  # "a" on x2 has asked for nothing for 61 s
    assert sorted(heads.positions("v", "x2")) == [3, 7]
    heads.forget("v", "x2", "b")
    assert heads.positions("v", "x2") == [7]
    heads.forget("v")
    assert heads.positions("v", "x2") == [] and heads.positions("v", "original") == []
    assert heads.positions("w", "x2") == [4]


def test_the_longest_unseen_player_is_forgotten_beyond_the_limit():
    clock = Clock()
    heads = Playheads(idle_seconds=60, limit=3, clock=clock)
    for k, viewer in enumerate("abcd"):
        clock.now += 1
        heads.move(("v", "x2", viewer), k)
    assert sorted(heads.positions("v", "x2")) == [1, 2, 3]
    heads.move(("v", "x2", "b"), 5)  # b is seen again, so c goes next
    heads.move(("v", "x2", "e"), 6)
    assert sorted(heads.positions("v", "x2")) == [3, 5, 6]


def test_a_player_waiting_for_a_segment_stays_live_however_long_it_waits():
    clock = Clock()
    heads = Playheads(idle_seconds=60, clock=clock)
    head = ("v", "x2", "a")
    heads.move(head, 4)
    with heads.waiting(head):
        clock.now += 300  # a segment made slower than the idle time
        assert heads.positions("v", "x2") == [4]
    clock.now += 59  # seen when its request ended
    assert heads.positions("v", "x2") == [4]
    clock.now += 2
    assert heads.positions("v", "x2") == []
    assert heads.positions("v", "x2", exclude=head) == []


def test_a_named_player_switching_rendition_leaves_the_one_it_played():
    heads = Playheads(idle_seconds=60, clock=Clock())
    heads.move(("v", "x2", "a"), 3)
    heads.move(("v", "x2", ""), 5)
    heads.move(("v", "x2", "b"), 8)
    heads.move(("v", "original", "a"), 4)  # "a" switched down
    assert sorted(heads.positions("v", "x2")) == [5, 8]
    assert heads.at(("v", "original", "a")) == 4 and heads.at(("v", "x2", "a")) is None
    heads.move(("v", "original", ""), 6)  # the anonymous player is one per rendition
    assert sorted(heads.positions("v", "x2")) == [5, 8]
    assert sorted(heads.positions("v", "x2", exclude=("v", "x2", "b"))) == [5]


def test_players_waiting_for_a_segment_are_forgotten_last():
    clock = Clock()
    heads = Playheads(idle_seconds=60, limit=2, clock=clock)
    heads.move(("v", "x2", "a"), 0)
    with heads.waiting(("v", "x2", "a")):
        heads.move(("v", "x2", "b"), 1)
        heads.move(("v", "x2", "c"), 2)  # b goes, not a (the longest unseen, but waiting)
        assert sorted(heads.positions("v", "x2")) == [0, 2]
