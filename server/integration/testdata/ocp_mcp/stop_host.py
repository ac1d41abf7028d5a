"""Drive OceanBase's OCPClient (ocp_client.py beside this file, unmodified)
against agentplane: stop one host's OCP Agent and poll the task to its end.

Imports the single file, not the ocp_mcp package, so that it needs only the
client's own imports (httpx and the standard library).

Environment: OCP_BASE_URL (e.g. http://127.0.0.1:8080), OCP_ACCESS_KEY_ID,
OCP_ACCESS_KEY_SECRET, OCP_HOST_ID; OCP_TIMEOUT seconds to wait for the task
(default 120). Prints one JSON line per step; exits non-zero on any failure,
with the server's answer.
"""

import json
import os
import sys
import time

import httpx

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ocp_client import OCPClient  # noqa: E402


def step(name, **fields):
    print(json.dumps({"step": name, **fields}), flush=True)


def main():
    client = OCPClient(
        host=os.environ["OCP_BASE_URL"],
        access_key_id=os.environ["OCP_ACCESS_KEY_ID"],
        access_key_secret=os.environ["OCP_ACCESS_KEY_SECRET"],
    )
    host_id = int(os.environ["OCP_HOST_ID"])
    deadline = time.monotonic() + float(os.environ.get("OCP_TIMEOUT", "120"))
    try:
        # Query parameters whose raw and encoded names sort differently
        # ("a." before "a/", but "a%2F" before "a."), and a value to encode.
        hosts = client.get(
            "/api/v2/compute/hosts",
            params={"size": "100", "a/": "slash", "a.": "dot", "sort": "id,asc"},
        )
        ids = [h["id"] for h in hosts["data"]["contents"]]
        step("list", successful=hosts["successful"], hostIds=ids)

        # A header named as the caller writes it, beside the client's own
        # lowercase x-ocp-origin: signed as written, sorted as written.
        stopped = client.post(
            f"/api/v2/compute/hosts/{host_id}/agent/stop",
            headers={"X-OCP-Trace": "ocpclient-it"},
        )
        task = stopped["data"]
        step("stop", successful=stopped["successful"], taskId=task["id"], status=task["status"])

        while True:
            got = client.get(f"/api/v2/tasks/instances/{task['id']}")["data"]
            if got["status"] in ("SUCCESSFUL", "FAILED"):
                step("task", taskId=got["id"], status=got["status"], creator=got.get("creator"))
                return 0 if got["status"] == "SUCCESSFUL" else 1
            if time.monotonic() > deadline:
                step("timeout", taskId=got["id"], status=got["status"])
                return 1
            time.sleep(0.2)
    except httpx.HTTPStatusError as e:
        step("error", status=e.response.status_code, body=e.response.text)
        return 1
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main())
