"""The table of the ACLs a worker needs in docs/security-kafka.md, read as data (so tests grant
what it says)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from aiokafka.protocol.admin import CreateAclsRequest

from streamer.app import load_configured_funnels
from streamer.kafka_io import make_client
from streamer.pipeline.units import user_funnels
from streamer.settings import Settings

ACL_PAGE = Path(__file__).resolve().parents[2] / "docs" / "security-kafka.md"
_TABLE_START = "**The ACLs a worker needs**"

# Kafka's wire codes (org.apache.kafka.common.acl / resource).
_RESOURCE = {"topic": 2, "group": 3}
_PATTERN = {"literal": 3, "prefixed": 4}
_OPERATION = {"Read": 3, "Write": 4, "Create": 5, "Describe": 8}
_ALLOW = 3


@dataclass(frozen=True)
class Acl:
    resource: str  # topic | group
    pattern: str  # literal | prefixed
    name: str
    operation: str  # Read | Write | Create


def readme_worker_acls(settings: Settings) -> list[Acl]:
    """The rows of the table in docs/security-kafka.md with the settings' names filled in; a
    row marked "the re-key path only" counts only when the settings take that path, one marked
    "user funnels only" only when the settings' funnels have one."""
    text = ACL_PAGE.read_text()
    rows = []
    for line in text[text.index(_TABLE_START) :].splitlines()[1:]:
        if rows and not line.startswith("|"):
            break
        if line.startswith(("| topic", "| group")):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    values = settings.model_dump()
    acls = []
    for resource, pattern, names, operations, why in rows:
        if "re-key path only" in why and settings.source_keyed_by_session:
            continue
        if "user funnels only" in why and not user_funnels(load_configured_funnels(settings)):
            continue
        for token in re.findall(r"`([^`]+)`", names):
            name = token.format(**values) if "{" in token else str(values[token])
            for operation in operations.split(","):
                acls.append(Acl(resource, pattern, name, operation.strip()))
    assert acls, f"no ACL table after {_TABLE_START!r} in {ACL_PAGE}"
    return acls


async def grant(admin: Settings, user: str, acls: list[Acl]) -> None:
    """Allow ``User:user`` each ACL (from any host), as the super user ``admin``."""
    client = make_client(admin)
    await client.bootstrap()
    try:
        for acl in acls:
            request = CreateAclsRequest(
                _RESOURCE[acl.resource],
                acl.name,
                _PATTERN[acl.pattern],
                f"User:{user}",
                "*",
                _OPERATION[acl.operation],
                _ALLOW,
            )
            response = await client.send(client.get_random_node(), request)
            errors = [entry for entry in response.creation_responses if entry[0] != 0]
            assert not errors, f"creating {acl} failed: {errors}"
    finally:
        await client.close()
