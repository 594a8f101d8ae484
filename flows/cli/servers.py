"""``staged servers up|down|status|env [--dir DIR] [--<name>-port PORT]`` (deploy/local/servers.py does the work)."""

from __future__ import annotations

import sys

from deploy.local.servers import BUCKET, DEFAULT_PORTS, ServerError, Servers, down, pid_alive, up


def add_server_commands(sub) -> None:
    servers = sub.add_parser("servers", help="local Postgres + S3 + Prefect server/worker + MLflow server on 127.0.0.1")
    servers.add_argument("action", choices=["up", "down", "status", "env"])
    servers.add_argument("--dir", default=".staged/servers", help="state, logs and data (default: %(default)s)")
    for name, port in DEFAULT_PORTS.items():
        servers.add_argument(f"--{name}-port", type=int, default=port, metavar="PORT")
    servers.set_defaults(func=cmd_servers)


def cmd_servers(args) -> int:
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
        stopped = down(args.dir)
        print(f"stopped: {', '.join(stopped)}" if stopped else "nothing running")
    elif (servers := Servers.load(args.dir)) is None or not servers.pids:
        print(f"staged: error: no servers running from {args.dir!r} (start them: staged servers up)", file=sys.stderr)
        return 1
    elif args.action == "status":
        _print_status(servers)
    else:
        print("\n".join(f"export {k}={v}" for k, v in servers.client_env().items()))
    return 0


def _print_status(servers: Servers) -> None:
    for name, pid in servers.pids.items():
        print(f"{name:8} pid {pid:<7} {'up' if pid_alive(pid) else 'DOWN':4}  logs/{name}.log")
    print(
        f"Prefect UI  {servers.urls['prefect']}\nMLflow UI   {servers.urls['mlflow']}\nS3 endpoint {servers.urls['s3']}"
        f"  (bucket {BUCKET})\nPostgreSQL  {servers.urls['postgres']}  (data {servers.pgdata})"
    )
