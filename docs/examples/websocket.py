import json

import trio
from trio_websocket import ConnectionClosed, open_websocket_url

URL = "ws://127.0.0.1:8080/ws"


async def drain(name, ws):
    """Print what arrives until the line is quiet for half a second."""
    while True:
        with trio.move_on_after(0.5):
            try:
                print(f"{name} < {await ws.get_message()}")
            except ConnectionClosed as closed:
                print(f"{name} closed: {closed.reason.code} {closed.reason.reason}")
                return
            continue
        return


async def send(name, ws, message):
    text = json.dumps(message)
    print(f"{name} > {text}")
    await ws.send_message(text)


async def main():
    async with open_websocket_url(
        f"{URL}?userId=bob&deviceId=bob-laptop&deviceType=desktop"
    ) as bob:
        await drain("bob", bob)
        async with open_websocket_url(
            f"{URL}?userId=alice&deviceId=alice-phone&deviceType=mobile"
        ) as alice:
            await drain("alice", alice)
            await drain("bob", bob)
            for message in (
                {"type": "identify", "username": "Alice Martin", "requestId": "1"},
                {
                    "type": "set_status",
                    "status": "busy",
                    "statusMessage": "In a meeting",
                    "requestId": "2",
                },
                {"type": "heartbeat", "requestId": "3"},
            ):
                await send("alice", alice, message)
                await drain("alice", alice)
                await drain("bob", bob)
            for message in (
                {"type": "subscribe", "userIds": ["alice", "carol"], "requestId": "4"},
                {"type": "get_presence", "userIds": ["alice", "carol"], "requestId": "5"},
                {"type": "get_online_count", "requestId": "6"},
                {"type": "check_user_status", "targetUserId": "carol", "requestId": "7"},
                {"type": "set_status", "status": "sleeping", "requestId": "8"},
                {"type": "dance", "requestId": "9"},
            ):
                await send("bob", bob, message)
                await drain("bob", bob)
            await send("alice", alice, {"type": "logout"})
            await drain("alice", alice)
            await drain("bob", bob)
    async with open_websocket_url(f"{URL}?userId=not%20valid") as bad:
        await drain("bad", bad)


trio.run(main)
