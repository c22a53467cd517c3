"""The REDIS driver sharded over two redis-servers (``pubsub.redis.shards``): two real instances (daphne and
uvicorn) lose nothing, each channel's state and layer group live on its home shard, and both shards carry
their share; the configuration refuses a mistaken shard list with a message naming the fix."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
import websockets
from channels_redis.utils import _consistent_hash

from channels_app.config import parse_config
from channels_app.configreader import ConfigError
from channels_app.naming import channel_group
from channels_app.state.shards import RedisShards, layer_group_key, shard_of
from tests.support.auth import API_KEY, AUTH
from tests.support.clients import connections, recv_json
from tests.support.configs import memory_config
from tests.support.redisserver import RedisServer
from tests.support.waiting import wait_until

pytestmark = pytest.mark.redis

PREFIX = "rt"
CHANNELS_PER_SHARD = 6
MESSAGES_PER_CHANNEL = 12
LIMIT = 3


def homed_ids(stem: str, *, layer: str, per_shard: int, shards: int = 2) -> list[list[str]]:
    """``per_shard`` channel ids ``<stem>-<n>`` homed on each shard, found by walking n upwards."""
    homes: list[list[str]] = [[] for _ in range(shards)]
    for number in range(10_000):
        channel_id = f"{stem}-{number}"
        home = homes[shard_of(layer_group_key(channel_id, layer=layer, prefix=PREFIX), shards)]
        if len(home) < per_shard:
            home.append(channel_id)
        if all(len(found) == per_shard for found in homes):
            return homes
    raise AssertionError(f"no {per_shard} ids per shard among {stem}-0 to {stem}-9999")


def sharded_config(urls: list[str], channel_ids: list[str], *, layer: str) -> str:
    """A REDIS configuration on ``urls`` as shards, with a WS channel (limit ``LIMIT``) per id."""
    channels = "".join(
        f'\n  {channel_id}: {{id: "{channel_id}", type: "WS", max_of_channel_connections: {LIMIT}}}'
        for channel_id in channel_ids
    )
    redis = (
        'driver: "REDIS"\n  redis:\n    shards: ['
        + ", ".join(f'"{url}"' for url in urls)
        + f']\n    prefix: "{PREFIX}"\n    layer: "{layer}"'
    )
    return memory_config(allow_push_server_messages=True).replace('driver: "MEMORY"', redis) + channels + "\n"


class Deployment:
    """Two instances of one deployment on two Redis shards, and which channels each shard homes."""

    def __init__(self, layer, shards, instances, homes):
        self.layer = layer
        self.shards = shards
        self.instances = instances
        self.homes = homes

    @property
    def channel_ids(self) -> list[str]:
        return [channel_id for home in self.homes for channel_id in home]


@pytest.fixture(scope="module", params=["pubsub", "core"])
def deployment(request, start_module_server, tmp_path_factory):
    """Two redis-servers as shards; a daphne and a uvicorn instance on them (one database), per layer kind."""
    layer = request.param
    shards = [RedisServer.start(tmp_path_factory.mktemp("shard")) for _ in range(2)]
    homes = homed_ids("sh", layer=layer, per_shard=CHANNELS_PER_SHARD)
    config = sharded_config([shard.url for shard in shards], [cid for home in homes for cid in home], layer=layer)
    env = {"REALTIME_API_KEYS": API_KEY, "REALTIME_PRESENCE_LEASE_SECONDS": "3"}
    first = start_module_server(config, env=env, server="daphne")
    second = start_module_server(config, env=env, server="uvicorn", database_path=first.database_path, sync=False)
    try:
        yield Deployment(layer, shards, (first, second), homes)
    finally:
        for instance in (first, second):
            instance.stop()
        for shard in shards:
            shard.stop()


async def read_messages(ws, count: int, within: float = 15) -> list[dict]:
    """The next ``count`` message frames of ``ws`` (control frames fail the test)."""
    messages = []
    while len(messages) < count:
        frame = await recv_json(ws, within)
        assert "control" not in frame, frame
        messages.append(frame)
    return messages


async def publish_in_turn(client: httpx.AsyncClient, deployment: Deployment, channel_id: str, count: int) -> list:
    """Push ``count`` messages to ``channel_id``, alternating instances, each after the last was answered."""
    answers = []
    for number in range(count):
        instance = deployment.instances[number % 2]
        response = await client.post(
            f"{instance.http}/api/v1/channels/{channel_id}/messages", json={"payload": f"{channel_id}#{number}"}
        )
        assert response.status_code == 201, response.text
        answers.append(response.json())
    return answers


def test_every_subscriber_on_both_instances_gets_every_message_of_every_channel_in_order(deployment):
    async def scenario():
        async with httpx.AsyncClient(headers=AUTH, timeout=10) as client:
            sockets = {
                (channel_id, index): await websockets.connect(
                    instance.channel_url(channel_id, clientId=f"reader-{index}")
                )
                for channel_id in deployment.channel_ids
                for index, instance in enumerate(deployment.instances)
            }
            try:
                for channel_id in deployment.channel_ids:
                    await wait_until(
                        lambda channel_id=channel_id: connections(deployment.instances[0], channel_id) == 2
                    )
                await asyncio.gather(
                    *(
                        publish_in_turn(client, deployment, channel_id, MESSAGES_PER_CHANNEL)
                        for channel_id in deployment.channel_ids
                    )
                )
                received = {key: await read_messages(ws, MESSAGES_PER_CHANNEL) for key, ws in sockets.items()}
            finally:
                for ws in sockets.values():
                    await ws.close()
        return received

    received = asyncio.run(scenario())
    assert len(received) == 2 * 2 * CHANNELS_PER_SHARD
    for (channel_id, _), messages in received.items():
        assert [message["payload"] for message in messages] == [
            f"{channel_id}#{number}" for number in range(MESSAGES_PER_CHANNEL)
        ]
        assert [message["offset"] for message in messages] == list(range(1, MESSAGES_PER_CHANNEL + 1))
        assert len({message["epoch"] for message in messages}) == 1


def test_each_channel_keeps_its_state_and_its_group_on_its_home_shard_only(deployment):
    async def scenario():
        channel_ids = [home[0] for home in deployment.homes]
        async with httpx.AsyncClient(headers=AUTH, timeout=10) as client:
            sockets = [
                await websockets.connect(deployment.instances[1].channel_url(channel_id, clientId="watcher"))
                for channel_id in channel_ids
            ]
            for channel_id in channel_ids:
                await wait_until(lambda channel_id=channel_id: connections(deployment.instances[0], channel_id) == 1)
                await publish_in_turn(client, deployment, channel_id, 1)
            snapshots = [layer_snapshot(shard, deployment.layer) for shard in deployment.shards]
            keys = [[key.decode() for key in shard.client().keys(f"{PREFIX}:*")] for shard in deployment.shards]
            for ws in sockets:
                await ws.close()
        return channel_ids, snapshots, keys

    channel_ids, snapshots, keys = asyncio.run(scenario())
    for home, channel_id in enumerate(channel_ids):
        away = 1 - home
        held_here = {key for key in keys[home] if f"{{{channel_id}}}" in key}
        # History (epoch, seq, log, incarnation) and the connection slots, all on the home shard.
        assert {f"{PREFIX}:h:{{{channel_id}}}:{part}" for part in ("epoch", "seq", "log", "inc")} <= held_here
        assert f"{PREFIX}:s:{{{channel_id}}}" in held_here
        assert not [key for key in keys[away] if f"{{{channel_id}}}" in key]
        group = channel_group(channel_id)
        assert group in snapshots[home], (deployment.layer, home, snapshots)
        assert group not in snapshots[away]


def layer_snapshot(shard: RedisServer, layer: str) -> set[str]:
    """The channel groups the layer keeps on ``shard``: subscribed Pub/Sub channels (``pubsub``), or group
    member sets (``core``)."""
    client = shard.client()
    if layer == "pubsub":
        marker = f"{PREFIX}__group__"
        return {name.decode().split(marker, 1)[1] for name in client.pubsub_channels(f"{marker}*")}
    marker = f"{PREFIX}:group:"
    return {key.decode().split(marker, 1)[1] for key in client.keys(f"{marker}*")}


def test_resume_from_a_position_works_for_channels_on_either_shard_from_either_instance(deployment):
    async def scenario():
        resumed = {}
        async with httpx.AsyncClient(headers=AUTH, timeout=10) as client:
            for home in deployment.homes:
                channel_id = home[1]
                answers = await publish_in_turn(client, deployment, channel_id, 5)
                position = f"{answers[1]['epoch']}-{answers[1]['offset']}"
                for index, instance in enumerate(deployment.instances):
                    url = instance.channel_url(channel_id, clientId=f"resumer-{index}", since=position)
                    async with websockets.connect(url) as ws:
                        resumed[(channel_id, index)] = (answers, await read_messages(ws, 3))
        return resumed

    for (channel_id, _), (answers, messages) in asyncio.run(scenario()).items():
        assert [message["payload"] for message in messages] == [f"{channel_id}#{number}" for number in (2, 3, 4)]
        assert [message["id"] for message in messages] == [answer["id"] for answer in answers[2:]]


def test_connection_limits_and_idempotency_keys_hold_across_instances_on_either_shard(deployment):
    async def scenario():
        outcomes = {}
        async with httpx.AsyncClient(headers=AUTH, timeout=10) as client:
            for home in deployment.homes:
                channel_id = home[2]
                opened = [
                    await websockets.connect(
                        deployment.instances[index % 2].channel_url(channel_id, clientId=f"l{index}")
                    )
                    for index in range(LIMIT)
                ]
                await wait_until(
                    lambda channel_id=channel_id: connections(deployment.instances[1], channel_id) == LIMIT
                )
                async with websockets.connect(
                    deployment.instances[1].channel_url(channel_id, clientId="extra")
                ) as extra:
                    refused = await recv_json(extra)
                for ws in opened:
                    await ws.close()
                headers = {"Idempotency-Key": f"order-{channel_id}"}
                pushes = [
                    await client.post(
                        f"{instance.http}/api/v1/channels/{channel_id}/messages",
                        json={"payload": "once"},
                        headers=headers,
                    )
                    for instance in deployment.instances
                ]
                history = await client.get(f"{deployment.instances[0].http}/api/v1/channels/{channel_id}/messages")
                outcomes[channel_id] = refused, pushes, history.json()["messages"]
        return outcomes

    for refused, pushes, history in asyncio.run(scenario()).values():
        assert refused["code"] == 4422
        assert [push.status_code for push in pushes] == [201, 201]
        assert pushes[1].json()["id"] == pushes[0].json()["id"]
        assert pushes[1].headers["idempotent-replayed"] == "true"
        assert [message["payload"] for message in history if message["payload"] == "once"] == ["once"]
        assert history[-1]["id"] == pushes[0].json()["id"]


def test_a_shard_outage_fails_readiness_and_spares_the_channels_homed_on_the_other(deployment):
    """Last in the module: it stops and restarts the second shard. Under ``layer: core`` each hub's own
    channel lives on one shard too, so only publishing (history) is spared there, not every delivery."""
    first, second = deployment.instances
    healthy, broken = deployment.homes[0][3], deployment.homes[1][3]

    async def scenario():
        async with (
            httpx.AsyncClient(headers=AUTH, timeout=10) as client,
            websockets.connect(second.channel_url(healthy, clientId="survivor")) as survivor,
        ):
            await wait_until(lambda: connections(first, healthy) == 1)
            deployment.shards[1].stop()
            ready = await client.get(f"{first.http}/readyz")
            spared = await client.post(f"{first.http}/api/v1/channels/{healthy}/messages", json={"payload": "still"})
            delivered = await recv_json(survivor) if deployment.layer == "pubsub" else None
            refused = await client.post(f"{first.http}/api/v1/channels/{broken}/messages", json={"payload": "lost"})
            held = await client.get(f"{second.http}/api/v1/channels/{healthy}/messages")
            deployment.shards[1].run()
            await wait_until(lambda: httpx.get(f"{first.http}/readyz").status_code == 200)
            return ready, spared, delivered, refused, held

    ready, spared, delivered, refused, held = asyncio.run(scenario())
    assert ready.status_code == 503 and ready.json()["checks"]["redis"].startswith("failing")
    assert refused.status_code == 503 and refused.json()["error"] == "redis_unavailable"
    assert spared.status_code in (201, 202)
    assert held.json()["messages"][-1]["payload"] == "still"
    if deployment.layer == "pubsub":
        assert delivered["payload"] == "still"


# --- the shard a channel is homed on ---


@pytest.mark.parametrize("count", [2, 3, 4, 7])
def test_shard_of_agrees_with_where_channels_redis_puts_a_name(count):
    names = [f"rt__group__realtime.ch.c-{number}" for number in range(2000)]
    assert [shard_of(name, count) for name in names] == [_consistent_hash(name, count) for name in names]
    assert set(shard_of(name, count) for name in names) == set(range(count))


def test_a_channel_is_homed_where_its_layer_group_lives_and_the_home_is_stable():
    shards = RedisShards([object(), object(), object()], layer="pubsub", prefix="rt")  # type: ignore[list-item]
    core = RedisShards([object(), object(), object()], layer="core", prefix="rt")  # type: ignore[list-item]
    for number in range(200):
        channel_id = f"user-{number}"
        group = channel_group(channel_id)
        assert shards.home(channel_id) == _consistent_hash(f"rt__group__{group}", 3)
        assert core.home(channel_id) == _consistent_hash(group, 3)
        assert shards.for_channel(channel_id) is shards.clients[shards.home(channel_id)]
    assert RedisShards([object()]).home("anything") == 0  # type: ignore[list-item]


# --- the configuration ---


def redis_section(body: str) -> str:
    return f'pubsub:\n  driver: "REDIS"\n  redis:\n{body}'


def test_shards_are_read_as_a_list_or_from_one_comma_separated_variable():
    listed = parse_config(redis_section('    shards: ["redis://a:6379/0", "redis://b:6379/0"]\n'))
    from_env = parse_config(
        redis_section('    shards: "${REDIS_SHARDS}"\n'), environ={"REDIS_SHARDS": "redis://a:6379/0, redis://b:6379/0"}
    )
    assert listed.pubsub.redis.shards == from_env.pubsub.redis.shards == ("redis://a:6379/0", "redis://b:6379/0")
    assert listed.pubsub.redis.url == ""


@pytest.mark.parametrize(
    ("body", "key", "fix"),
    [
        ('    shards: ["redis://a:6379/0"]\n', "pubsub.redis.shards", 'write it as  url: "redis://a:6379/0"'),
        ('    shards: ["redis://a:6379/0", "redis://a:6379/0"]\n', "pubsub.redis.shards", "remove the repeat"),
        ('    shards: ["redis://a:6379/0", "http://b"]\n', "pubsub.redis.shards", "write redis://"),
        ('    shards: ["redis://a:6379/0", "redis://b:port/0"]\n', "pubsub.redis.shards", "a number such as 6379"),
        ('    shards: "redis://a:6379/0"\n', "pubsub.redis.shards", 'such as  ["a", "b"]'),
        (
            '    url: "redis://a:6379/0"\n    shards: ["redis://b:6379/0", "redis://c:6379/0"]\n',
            "pubsub.redis.shards",
            "cannot be combined with url: keep one of them",
        ),
        (
            '    shards: ["redis://b:6379/0", "redis://c:6379/0"]\n    sentinels: ["s:26379"]\n    master_name: m\n',
            "pubsub.redis.shards",
            "cannot be combined with sentinels: keep one of them",
        ),
    ],
)
def test_a_mistaken_shard_list_is_refused_naming_the_file_the_key_and_the_fix(body, key, fix):
    with pytest.raises(ConfigError) as refused:
        parse_config(redis_section(body), path="/etc/realtime/config.yaml")
    message = str(refused.value)
    assert message.startswith("/etc/realtime/config.yaml: ")
    assert any(where == key and fix in problem for where, problem in refused.value.problems), message


def test_the_channel_layer_gets_every_shard_as_a_host_for_either_layer_kind():
    from realtime_project.settings import _channel_layers

    urls = ["redis://127.0.0.1:7001/0", "redis://127.0.0.1:7002/0"]
    for layer, backend in (
        ("pubsub", "channels_app.state.layers.RedisPubSubChannelLayer"),
        ("core", "channels_redis.core.RedisChannelLayer"),
    ):
        config = parse_config(redis_section(f'    shards: {json.dumps(urls)}\n    layer: "{layer}"\n'))
        built = _channel_layers(config)["default"]
        assert built["BACKEND"] == backend
        assert [host["address"] for host in built["CONFIG"]["hosts"]] == urls
