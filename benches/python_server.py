"""The origin document's language: a Python grpcio (asyncio) server of the same proto with
the same in-memory semantics for GetUser/ListUsers (100 demo users, NOT_FOUND for unknown
ids). Plaintext and without token checks: the benchmark gives Python every advantage.

    python benches/python_server.py --port 0 --proto proto   # prints "serving on HOST:PORT"
"""
import argparse
import asyncio
import os
import subprocess
import sys
import tempfile


def load_stubs(proto_dir: str):
    out = tempfile.mkdtemp()
    protos = [os.path.join(proto_dir, "jisucloud", "v1", f) for f in ("users.proto",)]
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{proto_dir}",
         f"--python_out={out}", f"--grpc_python_out={out}", *protos],
        check=True,
    )
    sys.path.insert(0, out)
    from jisucloud.v1 import users_pb2, users_pb2_grpc
    return users_pb2, users_pb2_grpc


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--proto", required=True)
    args = ap.parse_args()
    import grpc
    users_pb2, users_pb2_grpc = load_stubs(args.proto)

    users = {}
    for i in range(1, 101):
        uid = f"USER{i:04d}"
        users[uid] = users_pb2.User(
            id=uid, name=f"用户{i}", email=f"user{i}@jisu.com", phone=f"138{i:08d}",
            status="ACTIVE", created_at=1700000000, updated_at=1700000000,
        )

    class UserService(users_pb2_grpc.UserServiceServicer):
        async def GetUser(self, request, context):
            if not request.user_id:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "user_id is required")
            user = users.get(request.user_id)
            if user is None:
                await context.abort(grpc.StatusCode.NOT_FOUND, f"user {request.user_id!r} not found")
            return user

        async def ListUsers(self, request, context):
            size = request.page_size or 10
            for uid in sorted(users)[:size]:
                yield users[uid]

    server = grpc.aio.server()
    users_pb2_grpc.add_UserServiceServicer_to_server(UserService(), server)
    port = server.add_insecure_port(f"127.0.0.1:{args.port}")
    await server.start()
    print(f"serving on 127.0.0.1:{port}", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(main())
