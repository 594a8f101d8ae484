"""``staged servers up|down|status|env [--dir DIR] [--purge] [--<name>-port PORT]`` (deploy/local/servers.py
does the work)."""

from __future__ import annotations

import shlex
import sys

from deploy.local.servers import BUCKET, DEFAULT_PORTS, ServerError, Servers, down, up


def add_server_commands(sub) -> None:
    servers = sub.add_parser("servers", help="local Postgres + S3 + Prefect server/worker + MLflow server on 127.0.0.1")
    servers.add_argument("action", choices=["up", "down", "status", "env"])
    servers.add_argument("--dir", default=".staged/servers", help="state, logs and data (default: %(default)s)")
    servers.add_argument(
        "--purge", action="store_true", help="with down: also delete the data (registry, artifacts, credentials)"
    )
    for name, port in DEFAULT_PORTS.items():
        servers.add_argument(f"--{name}-port", type=int, default=port, metavar="PORT")
    servers.set_defaults(func=cmd_servers)


def cmd_servers(args) -> int:
    if args.purge and args.action != "down":
        print("staged: error: --purge goes with `staged servers down`", file=sys.stderr)
        return 2
    if args.action == "up":
        ports = {name: getattr(args, f"{name}_port") for name in DEFAULT_PORTS}
        try:
            servers = up(args.dir, ports)
        except ServerError as e:
            print(f"staged: error: {e}", file=sys.stderr)
            return 1
        _print_status(servers)
        print(f"\nuse them from this shell:  eval $(staged servers env --dir {args.dir})")
    elif args.action == "down":
        stopped = down(args.dir, purge=args.purge)
        print(f"stopped: {', '.join(stopped)}" if stopped else "nothing running")
        print("data deleted" if args.purge else f"data kept in {args.dir} (delete it: staged servers down --purge)")
    elif (servers := Servers.load(args.dir)) is None or not servers.pids:
        print(f"staged: error: no servers running from {args.dir!r} (start them: staged servers up)", file=sys.stderr)
        return 1
    elif args.action == "status":
        _print_status(servers)
    else:  # what a shell needs, credentials included: for `eval $(staged servers env)`
        print("\n".join(f"export {k}={shlex.quote(v)}" for k, v in servers.client_env().items()))
    return 0


def _print_status(servers: Servers) -> None:
    for name, pid in servers.pids.items():
        print(f"{name:8} pid {pid:<7} {'up' if servers.running(name) else 'DOWN':4}  logs/{name}.log")
    print(
        f"Prefect UI  {servers.urls['prefect']}  (auth string: PREFECT_API_AUTH_STRING in `staged servers env`)\n"
        f"MLflow UI   {servers.urls['mlflow']}  (user admin, password: MLFLOW_TRACKING_PASSWORD)\n"
        f"S3 endpoint {servers.urls['s3']}  (bucket {BUCKET})\n"
        f"PostgreSQL  {servers.urls['postgres']}  (data {servers.pgdata})"
    )
