"""``noria_server route``'s mirror flags reach the router's settings.

Given ``python -m noria_server route``'s parser and ``main``, when ``--mirror-when`` / ``--mirror-delay``
or their variables (``NORIA_ROUTER_MIRROR_WHEN``, ``NORIA_ROUTER_MIRROR_DELAY_SECONDS``) are given or
not, then the router runs with those settings (flags win over variables; unset: the router's own
defaults), and a timing that is not ``sent``/``answered`` or a negative delay is refused with exit 2
before anything starts.
"""

from __future__ import annotations

from typing import Any

import pytest
from noria_server import __main__ as cli
from noria_server import route
from noria_server.route import MIRROR_ANSWERED, MIRROR_DELAY_SECONDS, MIRROR_SENT, MIRROR_WHEN, RouterSettings


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[RouterSettings]:
    """The settings ``main`` starts the router with (``route.run`` recorded, not run)."""
    for var in ("NORIA_ROUTER_MIRROR_WHEN", "NORIA_ROUTER_MIRROR_DELAY_SECONDS"):
        monkeypatch.delenv(var, raising=False)
    seen: list[RouterSettings] = []

    async def run(settings: RouterSettings) -> int:
        seen.append(settings)
        return 0

    monkeypatch.setattr(route, "run", run)
    return seen


def _main(*flags: str) -> int:
    return cli.main(["route", "--config", "router.json", *flags])


def test_unset_the_router_defaults(started: list[RouterSettings]) -> None:
    assert _main() == 0
    assert (started[0].mirror_when, started[0].mirror_delay) == (MIRROR_WHEN, MIRROR_DELAY_SECONDS)
    assert RouterSettings().mirror_when == MIRROR_WHEN


@pytest.mark.parametrize("when", [MIRROR_SENT, MIRROR_ANSWERED])
def test_flags(started: list[RouterSettings], when: str) -> None:
    assert _main("--mirror-when", when, "--mirror-delay", "0.002") == 0
    assert (started[0].mirror_when, started[0].mirror_delay) == (when, 0.002)


def test_variables_and_flags_win(started: list[RouterSettings], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NORIA_ROUTER_MIRROR_WHEN", MIRROR_ANSWERED)
    monkeypatch.setenv("NORIA_ROUTER_MIRROR_DELAY_SECONDS", "0.001")
    assert _main() == 0
    assert (started[0].mirror_when, started[0].mirror_delay) == (MIRROR_ANSWERED, 0.001)
    assert _main("--mirror-when", MIRROR_SENT, "--mirror-delay", "0") == 0
    assert (started[1].mirror_when, started[1].mirror_delay) == (MIRROR_SENT, 0.0)


def test_a_bad_flag_is_refused(started: list[RouterSettings], capsys: Any) -> None:
    with pytest.raises(SystemExit) as exited:
        _main("--mirror-when", "later")
    assert exited.value.code == 2
    assert _main("--mirror-delay", "-1") == 2
    assert "mirror_delay" in capsys.readouterr().err
    assert not started


def test_a_bad_variable_is_refused(started: list[RouterSettings], monkeypatch: pytest.MonkeyPatch,
                                   capsys: Any) -> None:
    monkeypatch.setenv("NORIA_ROUTER_MIRROR_WHEN", "later")
    assert _main() == 2
    assert "mirror_when" in capsys.readouterr().err
    assert not started
