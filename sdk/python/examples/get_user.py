"""Calls Jisu from Python with the SDK: mTLS from a certificates directory, a token,
default deadlines, and a typed error.

    JISU_TOKEN=$(jisu token issue --sub alice --scope users:read) \
      PYTHONPATH=sdk/python/src python sdk/python/examples/get_user.py localhost:50051 certs USER0001
"""
import os
import sys

from jisu_sdk import JisuError, connect

target, certs, user_id = (sys.argv[1:] + ["localhost:50051", "certs", "USER0001"][len(sys.argv) - 1 :])[:3]
with connect(target, certs, os.environ["JISU_TOKEN"]) as jisu:
    try:
        user = jisu.get_user(user_id)
        print(user.id, user.name, user.email)
    except JisuError as error:
        print(f"{error.code.name} {error.reason}: {error.message} (trace {error.trace_id})", file=sys.stderr)
        sys.exit(1)
