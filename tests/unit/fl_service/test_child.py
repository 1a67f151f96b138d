"""A child's /status says why it cannot join its parent (parent_error, parent_error_age_s),
and forgets it once joined: placement tells a parent still starting from an unreachable one."""

from fl_service.config import LA
from fl_service.metrics import ServiceState
from fl_service.roles.child import ParentSide
from fl_service.transport import LinkCounters


def side(parent_address):
    cfg = {"name": "la1", "role": LA, "pipeline": "p", "parent": parent_address,
           "global_rounds": 1, "tls_ca": "", "config_path": ""}
    links = LinkCounters()
    state = ServiceState(cfg, links)
    return ParentSide(cfg, state, links), state


def test_a_failed_join_shows_in_status_until_a_join_succeeds(serve, closed_port):
    # A parent that takes the join and has no task yet.
    parent = f"127.0.0.1:{serve({'POST': (200, {'name': 'ga'}), 'GET': (204, None)})}"
    child, state = side(f"127.0.0.1:{closed_port}")
    assert state.status()["parent_error"] is None
    assert child.next_task("") is None
    status = state.status()
    assert "refused" in status["parent_error"].lower()
    assert 0 <= status["parent_error_age_s"] < 5
    assert status["parent_name"] is None

    # Moved to a parent that answers: the error is gone with the switch, and stays gone.
    child.switch(parent)
    assert state.status()["parent_error"] is None
    assert child.next_task("") is None  # joined; the poll answered 204
    status = state.status()
    assert status["parent_name"] == "ga"
    assert status["parent_error"] is None and status["parent_error_age_s"] is None


def test_an_unresolvable_parent_is_named_in_status():
    child, state = side("no-such-host.invalid:8080")
    assert child.next_task("") is None
    assert state.status()["parent_error"].startswith("no-such-host.invalid:8080: ")


def test_a_reply_that_does_not_parse_is_an_unavailable_parent_not_a_crash(serve):
    # What a connection broken mid-reply (a parent switch aborting it) can leave: the child's
    # loop must go on, and /status says what happened.
    parent = f"127.0.0.1:{serve({'POST': (200, 'garbage'), 'GET': (204, None)})}"
    child, state = side(parent)
    assert child.next_task("") is None
    assert "unreadable reply" in state.status()["parent_error"]
