"""The `mtor-cds` command: serve the service (more subcommands are added beside `serve`)."""

from __future__ import annotations

import argparse
import sys

from cds_service.settings import SettingsError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mtor-cds", description="CDS Hooks service for patients on mTOR inhibitors")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="start the service (settings from CDS_* environment variables)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080)")
    serve.add_argument("--production", action="store_true", help="serve with gunicorn (deploy/gunicorn.conf.py settings)")
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except SettingsError as exc:
        print(f"mtor-cds: invalid settings: {exc}", file=sys.stderr)
        return 2


def _serve(args: argparse.Namespace) -> int:
    from cds_service import create_app

    if args.production:
        from cds_service.production import run_gunicorn

        return run_gunicorn(args.host, args.port)
    app = create_app()
    print(f"mtor-cds listening on http://{args.host}:{args.port}/cds-services", file=sys.stderr)
    app.run(host=args.host, port=args.port, threaded=True, debug=False, use_reloader=False)
    return 0


COMMANDS = {"serve": _serve}

if __name__ == "__main__":
    sys.exit(main())
