import trio

from presence_actors.client import open_presence_client
from presence_actors.model import Status
from presence_actors.protocol import SetStatus, Subscribe, UserStatusChange


async def main():
    async with open_presence_client(
        "http://127.0.0.1:8080", "frank", device_type="desktop"
    ) as client:
        print("welcome:", client.welcome.session_id, client.device_id)
        state = await client.request(Subscribe(user_ids=("alice", "dave")))
        for view in state.users:
            print("now:", view.user_id, view.status.value, view.status_message)
        reply = await client.request(SetStatus(status=Status.BUSY, status_message="Deploying"))
        print("me:", reply.status.value, reply.effective_status.value)
        with trio.move_on_after(5):
            async for event in client.events():
                if isinstance(event, UserStatusChange):
                    print("push:", event.view.user_id, event.view.status.value)


trio.run(main)
