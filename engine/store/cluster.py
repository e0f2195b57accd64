"""Redis Cluster: the `redis+cluster://` URL, start-up checks, and sharded notifications.

A deployment that outgrows one Redis names its cluster nodes in one URL,
`redis+cluster://[user:password@]host:port[,host:port...]` (`rediss+cluster://` for TLS);
any reachable node is enough, the others are seeds in case it is down. The store then talks
through redis-py's asyncio `RedisCluster`, which routes each command to the master of its
slot and follows MOVED, ASK, TRYAGAIN and CLUSTERDOWN the way redis-py intends; a pipeline
goes out as one pipeline per node.

Notifications use sharded pub/sub (Redis 7): each partition has its own channels, carrying
its hash tag, published with SPUBLISH from inside the commit script. A plain PUBLISH in a
cluster is broadcast over the cluster bus to every node, so every event would cost every
master; a shard channel lives on the master of its slot only. Each orchestrator subscribes
to every partition's channels, with one connection per master.

The opposite mistake, a plain `redis://` URL that names one node of a cluster, is refused at
start-up (`refuse_cluster_node`) instead of failing later on the first MOVED answer.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.cluster import ClusterNode, RedisCluster

from engine.store.errors import StoreConfigError

SCHEMES = ("redis+cluster", "rediss+cluster")
MAX_CONNECTIONS_PER_NODE = 32  # redis-py raises (not waits) past this: keep it roomy
ALL_SLOTS = 16384


def is_cluster_url(url: str) -> bool:
    return urlsplit(url).scheme in SCHEMES


@dataclass(frozen=True, slots=True)
class ClusterUrl:
    seeds: tuple[tuple[str, int], ...]
    username: str | None
    password: str | None
    tls: bool

    @classmethod
    def parse(cls, url: str) -> ClusterUrl:
        scheme, rest = url.split("://", 1)
        hosts = rest.split("/", 1)[0]
        username = password = None
        if "@" in hosts:
            userinfo, hosts = hosts.rsplit("@", 1)
            user, _, secret = userinfo.partition(":")
            username, password = unquote(user) or None, unquote(secret) or None
        seeds = []
        for seed in hosts.split(","):
            host, _, port = seed.strip().rpartition(":")
            if not host or not port.isdigit():
                raise StoreConfigError(
                    f"REDIS_URL: {seed!r} is not host:port; write "
                    "redis+cluster://host:port[,host:port...]"
                )
            seeds.append((host.strip("[]"), int(port)))
        return cls(tuple(seeds), username, password, scheme.startswith("rediss"))

    def client_kwargs(self) -> dict[str, Any]:
        return {
            "username": self.username,
            "password": self.password,
            "ssl": self.tls,
            "decode_responses": True,
            "socket_keepalive": True,
        }


def cluster_client(url: str) -> RedisCluster:
    parsed = ClusterUrl.parse(url)
    return RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in parsed.seeds],
        max_connections=MAX_CONNECTIONS_PER_NODE,
        require_full_coverage=True,
        # By default redis-py drops every connection and reloads the slot map on each 5th
        # MOVED answer, which breaks the commands in flight on those connections; while
        # slots migrate that is often. Follow each MOVED by moving that slot instead.
        reinitialize_steps=0,
        **parsed.client_kwargs(),
    )


async def check_cluster(client: RedisCluster, shown_url: str) -> None:
    """Refuse a cluster that cannot serve every slot: some jobs would fail at random."""
    try:
        await client.initialize()
        answers = [
            dict(await client.cluster_info(target_nodes=node)) for node in client.get_primaries()
        ]
    except redis.exceptions.RedisClusterException as exc:
        raise StoreConfigError(
            f"the Redis Cluster at {shown_url} does not cover all {ALL_SLOTS} hash slots "
            f"({exc}); assign every slot to a master (redis-cli --cluster fix HOST:PORT)"
        ) from exc
    for answer in answers:
        state = answer.get("cluster_state")
        slots = int(answer.get("cluster_slots_ok", ALL_SLOTS))
        if state != "ok" or slots != ALL_SLOTS:
            raise StoreConfigError(
                f"the Redis Cluster at {shown_url} is not ok (cluster_state:{state}, "
                f"{slots} of {ALL_SLOTS} slots ok); assign every slot to a live master "
                "(redis-cli --cluster check / fix HOST:PORT) before starting Interlock"
            )


async def refuse_cluster_node(client: aioredis.Redis, shown_url: str) -> None:
    """A plain URL must not name a cluster node: most keys would answer MOVED."""
    try:
        info = await client.info("cluster")
    except redis.exceptions.ResponseError:
        return  # INFO disabled or renamed (some managed services): nothing to learn
    if str(info.get("cluster_enabled", "0")) == "1":
        parts = urlsplit(shown_url)
        raise StoreConfigError(
            f"{shown_url} is one node of a Redis Cluster; set REDIS_URL to "
            f"redis+cluster://{parts.hostname}:{parts.port or 6379} (list several nodes, "
            "comma-separated, so that start-up survives one being down)"
        )


class ShardedSubscription:
    """Sharded pub/sub on every partition's channels, one connection per master.

    Channels are grouped by the master that serves their slot now. When a slot moves (a
    failover or a reshard), the server ends the subscription with an SUNSUBSCRIBE (or the
    connection drops): `messages()` then raises, and the caller resubscribes and looks again
    at everything notifications cover, as it does after any lost subscription."""

    def __init__(self, client: RedisCluster, url: str, channels: Sequence[str]) -> None:
        self._client = client
        self._kwargs = ClusterUrl.parse(url).client_kwargs()
        self._channels = channels
        self._queue: asyncio.Queue[tuple[str, str] | Exception] = asyncio.Queue()
        self._readers: list[asyncio.Task[None]] = []
        self._connections: list[aioredis.Redis] = []

    async def open(self) -> None:
        by_node: dict[tuple[str, int], list[str]] = {}
        for channel in self._channels:
            node = self._client.get_node_from_key(channel)  # its slot's master
            if node is None:
                raise redis.exceptions.ConnectionError(f"no node serves {channel} now")
            by_node.setdefault((str(node.host), int(node.port)), []).append(channel)
        for (host, port), channels in by_node.items():
            connection = aioredis.Redis(host=host, port=port, **self._kwargs)
            self._connections.append(connection)
            pubsub = connection.pubsub()
            for channel in channels:  # one SSUBSCRIBE per slot: several would be CROSSSLOT
                await pubsub.ssubscribe(channel)
            self._readers.append(asyncio.create_task(self._read(pubsub)))

    async def _read(self, pubsub: Any) -> None:
        try:
            while True:
                message = await pubsub.get_message(timeout=None)
                if message is None:
                    continue
                kind = message["type"]
                if kind == "smessage":
                    await self._queue.put((str(message["channel"]), str(message["data"])))
                elif kind == "sunsubscribe":
                    raise redis.exceptions.ConnectionError(
                        f"shard channel {message['channel']} moved to another node"
                    )
        except Exception as exc:  # the consumer resubscribes; cancellation passes through
            await self._queue.put(exc)
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    async def messages(self, idle_s: float) -> AsyncIterator[tuple[str, str] | None]:
        """(channel, data), or None after each `idle_s` without one."""
        while True:
            try:
                async with asyncio.timeout(idle_s):
                    item = await self._queue.get()
            except TimeoutError:
                yield None
                continue
            if isinstance(item, Exception):
                raise item
            yield item

    async def close(self) -> None:
        for reader in self._readers:
            reader.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)
        for connection in self._connections:
            with contextlib.suppress(Exception):
                await connection.aclose()
