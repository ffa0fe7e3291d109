"""Where ``vidq serve --engine ray``'s ingress sends a request (:func:`affinity_key`, :func:`choose`) and how it
merges the replicas' metrics (:func:`merge_metrics`); plain functions, no Ray. The rules are in :mod:`.ray_engine`'s
docstring and docs/SERVING.md."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from typing import Any


def affinity_key(body: Any) -> str:
    """The routing key of a chat-completion body (decoded JSON): SHA-256 hex of its video URL, or of its image_url
    frames' URLs joined by newlines; of ``""`` when it has none (the replica then answers its 400)."""
    urls: list[str] = []
    messages = body.get("messages") if isinstance(body, dict) else None
    for message in messages if isinstance(messages, list) else []:
        content = message.get("content") if isinstance(message, dict) else None
        for part in content if isinstance(content, list) else []:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind in {"video_url", "image_url"} and isinstance(part.get(kind), dict):
                urls.append(str(part[kind].get("url", "")))
        if urls:
            break  # the video is in the first message that has one; later turns resend it
    return hashlib.sha256("\n".join(urls).encode()).hexdigest()


def choose(key: str, live: Sequence[int], load: Mapping[int, int], capacity: int) -> int | None:
    """The replica for ``key``: the highest rendezvous hash (SHA-256 of ``key`` and the replica index) among
    ``live``; if it already holds ``capacity`` requests, the least loaded of ``live`` with room (ties: hash order);
    None when every live replica is full or none is live."""
    ranked = sorted(live, key=lambda i: hashlib.sha256(f"{key}/{i}".encode()).digest(), reverse=True)
    room = [i for i in ranked if load.get(i, 0) < capacity]
    if not room:
        return None
    return ranked[0] if ranked[0] in room else min(room, key=lambda i: load.get(i, 0))


def merge_metrics(texts: Mapping[str, str]) -> str:
    """Prometheus texts by replica id as one text: each family's HELP/TYPE once, its samples from every replica
    with a ``replica`` label added."""
    families: dict[str, tuple[list[str], list[str]]] = {}
    for replica, text in texts.items():
        family = ""
        for line in text.splitlines():
            if match := re.match(r"# (HELP|TYPE) (\S+)", line):
                family = match.group(2)
                head, _ = families.setdefault(family, ([], []))
                if line not in head:
                    head.append(line)
            elif line and not line.startswith("#"):
                name, rest = re.match(r"([^{\s]+)(.*)", line).groups()
                label = f'replica="{replica}"'
                rest = "{" + label + ("," + rest[1:] if rest.startswith("{") else "}" + rest)
                families.setdefault(family, ([], []))[1].append(name + rest)
    return "".join("\n".join(head + samples) + "\n" for head, samples in families.values())
