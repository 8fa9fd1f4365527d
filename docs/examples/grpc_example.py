import threading
import time

import grpc
from presence.v1 import presence_pb2 as pb
from presence.v1 import presence_pb2_grpc as rpc

channel = grpc.insecure_channel("127.0.0.1:8080")
presence = rpc.PresenceServiceStub(channel)

reply = presence.SetUserStatus(pb.SetUserStatusRequest(user_id="dave", status=pb.BUSY))
print(reply.message, "|", pb.UserStatus.Name(reply.data.status))
print(presence.SendHeartbeat(pb.SendHeartbeatRequest(user_id="dave")).next_heartbeat_in_seconds)
many = presence.GetMultipleUserStatus(pb.GetMultipleUserStatusRequest(user_ids=["alice", "dave"]))
for user in many.data:
    print(user.user_id, pb.UserStatus.Name(user.status), user.last_seen, repr(user.status_message))


def later():
    time.sleep(0.5)
    presence.SetUserStatus(pb.SetUserStatusRequest(user_id="dave", status=pb.OFFLINE))


threading.Thread(target=later).start()
stream = presence.SubscribeStatusUpdates(
    pb.SubscribeStatusUpdatesRequest(user_id="erin", watch_user_ids=["alice", "dave"]), timeout=2
)
try:
    for event in stream:
        print("event:", event.user_id, pb.UserStatus.Name(event.status), event.timestamp)
except grpc.RpcError as error:
    print("stream ended:", error.code())
