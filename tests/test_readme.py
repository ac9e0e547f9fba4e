"""What the README tells a new user to run, read as the user reads it."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Where `card server` listens unless given --port: Metaflow's default (plugins/cards/card_cli.py).
CARD_SERVER_DEFAULT_PORT = 8324


def fenced_lines(markdown: str) -> list[str]:
    """The lines inside the ``` blocks of a Markdown text."""
    lines, inside = [], False
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            inside = not inside
        elif inside:
            lines.append(line)
    return lines


def card_servers(markdown: str) -> dict[str, int]:
    """Each `card server` command of the text's code blocks -> the port it listens on."""
    servers = {}
    for line in fenced_lines(markdown):
        command = line.split("#", 1)[0]
        if " card server" in command:
            port = re.search(r"--port[= ](\d+)", command)
            servers[command.strip()] = int(port[1]) if port else CARD_SERVER_DEFAULT_PORT
    return servers


def test_the_readme_s_card_servers_can_run_side_by_side():
    servers = card_servers((ROOT / "README.md").read_text())
    assert len(servers) >= 2, servers  # the analytics card and the benchmark card
    assert len(set(servers.values())) == len(servers), servers


def test_a_second_server_on_the_default_port_is_caught():
    twice = "```bash\npython a.py card server\npython b.py card server   # also 8324\n```\n"
    servers = card_servers(twice)
    assert len(set(servers.values())) < len(servers)
