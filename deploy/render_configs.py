"""Render deploy/systemd/config.toml and deploy/container/config.toml from config.toml.

The deploy configs are the repository's config.toml with absolute paths (code under
/opt/dqm, state under /var/lib/dqm), JSON logs, and, in the container, HTTP on 0.0.0.0.
Run after changing config.toml:  python deploy/render_configs.py   (tests check it).
The [alerting] rules stay as they are, so the Prometheus rules generated from
config.toml (`monitor rules --out alerts/rules/dqm.rules.yml`) fit these configs too.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

HEADERS = {
    "systemd": (
        "# dqm configuration for a systemd host install: /etc/dqm/config.toml\n"
        "# (deploy/systemd/dqm.service; code and virtualenv under /opt/dqm).\n"
        "# Secrets are never in this file: [alerting] sinks name environment variables, set\n"
        "# in /etc/dqm/secrets.env (root-only, read by systemd).\n"
        "# Generated from the repository's config.toml by deploy/render_configs.py.\n"
        "# The service may only write under /var/lib/dqm; a landing zone elsewhere needs\n"
        "# ReadWritePaths= in a drop-in (deploy/README.md).\n"
    ),
    "container": (
        "# dqm configuration baked into the container image as /etc/dqm/config.toml\n"
        "# (deploy/container/Dockerfile; compose.yaml mounts this file over it).\n"
        "# Secrets are never in this file: [alerting] sinks name environment variables\n"
        "# (compose: deploy/container/secrets.env).\n"
        "# Generated from the repository's config.toml by deploy/render_configs.py.\n"
        "# HTTP binds 0.0.0.0 so the published port and Prometheus on the compose network\n"
        "# reach it; compose.yaml publishes it on the host's loopback only.\n"
    ),
}


def render(target: str) -> str:
    body = re.sub(r"\A(#[^\n]*\n)+", "", (REPO / "config.toml").read_text())
    body = body.replace('"sqlite:///data/', '"sqlite:////var/lib/dqm/')
    body = body.replace('"data/', '"/var/lib/dqm/')
    body = body.replace('"pipeline"', '"/opt/dqm/pipeline"')
    body = body.replace('"expectations"', '"/opt/dqm/expectations"')
    body = re.sub(r'(?m)^format = "text".*$', 'format = "json"', body)
    if target == "container":
        body = re.sub(r'(?m)^host = "127\.0\.0\.1".*$', 'host = "0.0.0.0"', body)
    return HEADERS[target] + body


def paths() -> dict[str, Path]:
    return {t: REPO / "deploy" / t / "config.toml" for t in HEADERS}


def main() -> int:
    for target, path in paths().items():
        path.write_text(render(target))
        print(f"wrote {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
