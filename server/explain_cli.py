"""`interlock explain JOB_ID`: ask a running server why a job is where it is.

A thin client of `GET /api/v1/jobs/{id}/explain` (stdlib HTTP only): prints the sentence,
or with `--json` the whole answer. The server is INTERLOCK_URL (default
http://127.0.0.1:8080) and the token CLIENT_TOKEN, or the flags. Exit status: 0 answered,
1 the server refused (unknown job, bad token: its error message is printed), 2 the server
could not be reached.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request

DEFAULT_URL = "http://127.0.0.1:8080"
TIMEOUT_S = 30.0


def run(args: argparse.Namespace) -> int:
    base = (args.url or os.environ.get("INTERLOCK_URL") or DEFAULT_URL).rstrip("/")
    token = args.token or os.environ.get("CLIENT_TOKEN") or ""
    job = urllib.parse.quote(args.job_id, safe="")
    request = urllib.request.Request(
        f"{base}/api/v1/jobs/{job}/explain", headers={"X-Client-Token": token}
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            answer = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read())["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = f"HTTP {exc.code}"
        print(f"interlock explain: {message}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"interlock explain: cannot reach {base}: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(answer, indent=2))
    else:
        print(f"{answer['job_id']}: {answer['sentence']}")
    return 0
