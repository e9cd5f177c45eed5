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
    heads.move(("v", "original", "a"), 9)  # another rendition
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
