"""Interop check of a running MR-Enclave node with python3-websockets (10.4).

usage: interop.py BASE_URL MAX_MESSAGE_BYTES SERVER_PID

The server must run with HEARTBEAT_INTERVAL=1s. The last step sends SIGTERM
to SERVER_PID and expects every connection to be closed with 1001.
Prints INTEROP OK at the end; any failed check raises and exits non-zero.
"""

import asyncio
import datetime
import json
import os
import signal
import sys
import urllib.error
import urllib.request
import uuid

import websockets

BASE = sys.argv[1]
MAX = int(sys.argv[2])
SERVER_PID = int(sys.argv[3])
WS = "ws" + BASE[len("http"):] + "/ws"
TIMEOUT = 5


def check(cond, what):
    if not cond:
        raise AssertionError(what)
    print("ok -", what)


def rest(method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(BASE + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def check_ts(frame):
    ts = frame["ts"]
    if not (isinstance(ts, str) and ts.endswith("Z")):
        raise AssertionError(f"ts {ts!r} is not RFC 3339 UTC")
    parsed = datetime.datetime.fromisoformat(ts.replace("Z", "+00:00"))
    if parsed.utcoffset() != datetime.timedelta(0):
        raise AssertionError(f"ts {ts!r} is not UTC")
    return parsed


async def recv(ws, timeout=TIMEOUT, heartbeats=False):
    """Next frame as a dict; heartbeat info frames are skipped unless asked for."""
    while True:
        raw = await asyncio.wait_for(ws.recv(), timeout)
        if not isinstance(raw, str):
            raise AssertionError(f"binary frame {raw!r}")
        frame = json.loads(raw)
        if not isinstance(frame, dict):
            raise AssertionError(f"frame is not an object: {raw}")
        if not heartbeats and frame.get("type") == "info" and frame.get("msg") == "ping":
            continue
        return frame


async def expect_nothing(ws, seconds):
    try:
        frame = await recv(ws, timeout=seconds)
    except asyncio.TimeoutError:
        return
    raise AssertionError(f"unexpected frame {frame}")


async def send(ws, obj):
    await ws.send(obj if isinstance(obj, str) else json.dumps(obj))


async def expect_ack(ws, request_id, topic):
    f = await recv(ws)
    want = {"type", "status", "topic", "ts"} | ({"request_id"} if request_id else set())
    check(f.get("type") == "ack" and set(f) == want and f["status"] == "ok" and f["topic"] == topic
          and f.get("request_id") == request_id, f"ack {request_id} {topic}: {f}")
    check_ts(f)
    return f


async def expect_error(ws, code, request_id):
    f = await recv(ws)
    want = {"type", "error", "ts"} | ({"request_id"} if request_id else set())
    check(f.get("type") == "error" and set(f) == want and set(f["error"]) == {"code", "message"}
          and f["error"]["code"] == code and isinstance(f["error"]["message"], str)
          and f.get("request_id") == request_id, f"error {code} {request_id}: {f}")
    check_ts(f)
    return f


async def expect_event(ws, topic, seq, message):
    f = await recv(ws)
    check(f.get("type") == "event" and set(f) == {"type", "topic", "message", "seq", "ts"}
          and f["topic"] == topic and f["seq"] == seq and f["message"] == message,
          f"event {topic} seq {seq}: {f}")
    check_ts(f)
    return f


def publish(topic, message, request_id=None):
    frame = {"type": "publish", "topic": topic, "message": message}
    if request_id:
        frame["request_id"] = request_id
    return frame


def new_message(payload):
    return {"id": str(uuid.uuid4()), "payload": payload}


async def main():
    # REST: the spec's five endpoints with exactly the spec's keys.
    status, body = rest("POST", "/topics", {"name": "orders"})
    check(status == 201 and body == {"status": "created", "topic": "orders"}, f"create topic: {status} {body}")
    status, body = rest("POST", "/topics", {"name": "orders"})
    check(status == 409 and body["error"]["code"] == "TOPIC_EXISTS", f"create twice: {status} {body}")
    status, body = rest("POST", "/topics", {"name": "no spaces"})
    check(status == 400 and body["error"]["code"] == "BAD_REQUEST", f"bad name: {status} {body}")
    status, body = rest("GET", "/topics")
    check(status == 200 and {"name": "orders", "subscribers": 0} in body["topics"], f"list topics: {body}")
    status, body = rest("GET", "/health")
    check(status == 200 and set(body) == {"uptime_sec", "topics", "subscribers"}, f"health: {body}")

    async with websockets.connect(WS) as pub, websockets.connect(WS) as sub:
        # ping / pong, with and without request_id
        await send(pub, {"type": "ping", "request_id": "p-1"})
        f = await recv(pub)
        check(f.get("type") == "pong" and set(f) == {"type", "request_id", "ts"} and f["request_id"] == "p-1",
              f"pong echoes request_id: {f}")
        check_ts(f)
        await send(pub, {"type": "ping"})
        f = await recv(pub)
        check(f.get("type") == "pong" and set(f) == {"type", "ts"}, f"pong without request_id: {f}")

        # errors keep the connection open
        await send(pub, "{not json")
        await expect_error(pub, "BAD_REQUEST", None)
        await send(pub, {"type": "bogus", "request_id": "e-1"})
        await expect_error(pub, "BAD_REQUEST", "e-1")
        await send(pub, {"type": "subscribe", "topic": "nope", "client_id": "c", "request_id": "e-2"})
        f = await expect_error(pub, "TOPIC_NOT_FOUND", "e-2")
        check(f["error"]["message"] == "topic 'nope' does not exist", f"TOPIC_NOT_FOUND message: {f}")
        await send(pub, publish("orders", {"id": "not-a-uuid", "payload": 1}, "e-3"))
        await expect_error(pub, "BAD_REQUEST", "e-3")
        await send(pub, {"type": "subscribe", "topic": "orders", "request_id": "e-4"})
        await expect_error(pub, "BAD_REQUEST", "e-4")

        # three publishes before anyone subscribes, each acked in order
        sent = [new_message({"order_id": i, "note": "ünïcode ✓", "list": [1, 2.5, None, True]}) for i in (1, 2, 3)]
        for i, m in enumerate(sent):
            await send(pub, publish("orders", m, f"pub-{i + 1}"))
        for i in range(3):
            await expect_ack(pub, f"pub-{i + 1}", "orders")

        # subscribe with last_n=2: ack, then seq 2 and 3 (oldest first), then live
        await send(sub, {"type": "subscribe", "topic": "orders", "client_id": "py", "last_n": 2, "request_id": "s-1"})
        await expect_ack(sub, "s-1", "orders")
        await expect_event(sub, "orders", 2, sent[1])
        await expect_event(sub, "orders", 3, sent[2])
        live = new_message("a string payload")
        await send(pub, publish("orders", live, "pub-4"))
        await expect_ack(pub, "pub-4", "orders")
        e4 = await expect_event(sub, "orders", 4, live)

        # subscribing again with the same client_id is idempotent: acked, no replay
        await send(sub, {"type": "subscribe", "topic": "orders", "client_id": "py", "last_n": 5, "request_id": "s-2"})
        await expect_ack(sub, "s-2", "orders")
        await expect_nothing(sub, 0.3)
        status, body = rest("GET", "/stats")
        check(status == 200 and set(body) == {"topics"}
              and body["topics"]["orders"] == {"messages": 4, "subscribers": 1}, f"stats: {body}")

        # a replay carries the original ts
        async with websockets.connect(WS) as late:
            await send(late, {"type": "subscribe", "topic": "orders", "client_id": "late", "last_n": 1})
            await expect_ack(late, None, "orders")
            f = await expect_event(late, "orders", 4, live)
            check(f["ts"] == e4["ts"], "replayed event keeps its ts")

        # size limit: over MAX_MESSAGE_BYTES is BAD_REQUEST and the connection stays open
        big = json.dumps({"request_id": "big-1", "type": "publish", "topic": "orders",
                          "message": {"id": str(uuid.uuid4()), "payload": "x" * (MAX + 10)}})
        await send(pub, big)
        f = await expect_error(pub, "BAD_REQUEST", "big-1")
        check("too large" in f["error"]["message"], f"too large message: {f}")
        await send(pub, {"type": "ping", "request_id": "after-big"})
        f = await recv(pub)
        check(f.get("type") == "pong" and f.get("request_id") == "after-big", "connection open after an oversized frame")

        # unsubscribe: ack, then nothing more
        await send(sub, {"type": "unsubscribe", "topic": "orders", "client_id": "py", "request_id": "u-1"})
        await expect_ack(sub, "u-1", "orders")
        await send(pub, publish("orders", new_message(5), "pub-5"))
        await expect_ack(pub, "pub-5", "orders")
        await expect_nothing(sub, 0.5)

        # heartbeat: an idle connection gets info ping (and a WebSocket ping,
        # which websockets answers), and is not closed while it answers
        f = await recv(sub, timeout=3, heartbeats=True)
        check(f.get("type") == "info" and f.get("msg") == "ping" and set(f) == {"type", "msg", "ts"},
              f"heartbeat info ping: {f}")
        await asyncio.sleep(3.5)  # more than three intervals, answering only WebSocket pings
        await send(sub, {"type": "ping", "request_id": "alive"})
        f = await recv(sub)
        check(f.get("type") == "pong" and f.get("request_id") == "alive", "answered heartbeats keep the connection")

        # deleting a topic ends its subscriptions with info topic_deleted
        await send(sub, {"type": "subscribe", "topic": "orders", "client_id": "py2", "request_id": "s-3"})
        await expect_ack(sub, "s-3", "orders")
        status, body = rest("DELETE", "/topics/orders")
        check(status == 200 and body == {"status": "deleted", "topic": "orders"}, f"delete: {status} {body}")
        f = await recv(sub)
        check(f.get("type") == "info" and f.get("topic") == "orders" and f.get("msg") == "topic_deleted",
              f"topic_deleted: {f}")
        status, body = rest("DELETE", "/topics/orders")
        check(status == 404 and body["error"]["code"] == "TOPIC_NOT_FOUND", f"delete again: {status} {body}")
        await send(pub, publish("orders", new_message(6), "pub-6"))
        await expect_error(pub, "TOPIC_NOT_FOUND", "pub-6")

    # a frame far beyond the limit (over 4 x MAX_MESSAGE_BYTES + 64 KiB) closes with 1009
    async with websockets.connect(WS) as ws:
        await ws.send("x" * (4 * MAX + (64 << 10) + 1024))
        try:
            f = await recv(ws)
            raise AssertionError(f"expected a close, got {f}")
        except websockets.ConnectionClosed:
            pass
        check(ws.close_code == 1009, f"far oversized frame closed with 1009 (got {ws.close_code})")

    # SIGTERM: connections get close 1001 and the server exits
    async with websockets.connect(WS) as ws:
        await send(ws, {"type": "ping", "request_id": "before-term"})
        await recv(ws)
        os.kill(SERVER_PID, signal.SIGTERM)
        try:
            while True:
                await recv(ws, timeout=10)
        except websockets.ConnectionClosed:
            pass
        check(ws.close_code == 1001, f"shutdown closes with 1001 (got {ws.close_code} {ws.close_reason!r})")

    print("INTEROP OK")


asyncio.run(main())
