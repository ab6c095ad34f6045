"""``headwater gateway``: serve the ingest gateway with uvicorn.

Wire it in with ``ingest_gateway.cli.add_parser(subparsers)``; the parsed namespace carries ``func``.
"""
from __future__ import annotations

import argparse
import os
import ssl
import sys
from pathlib import Path

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``gateway --host H --port P --workers N`` on an argparse sub-parser collection."""
    parser = subparsers.add_parser(
        "gateway", help="serve the ingest gateway (POST /analytics/collect, /readyz, /metrics, ...)",
        description="Serve the ingest gateway with uvicorn. Settings come from HEADWATER_* variables or "
                    "--config; HTTPS is served when given a certificate and its key (--ssl-certfile and "
                    "--ssl-keyfile, or the settings tls_cert_file and tls_key_file).")
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    parser.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080)")
    parser.add_argument("--workers", type=int, default=1,
                        help="worker processes (default 1); each has its own producer and spool slot")
    parser.add_argument("--ssl-certfile", type=Path, default=None, metavar="PEM",
                        help="serve HTTPS with this certificate (chain) file; overrides tls_cert_file")
    parser.add_argument("--ssl-keyfile", type=Path, default=None, metavar="PEM",
                        help="the certificate's private key; overrides tls_key_file")
    # SUPPRESS: when not given here, a --config given to the main command stays in effect.
    parser.add_argument("--config", default=argparse.SUPPRESS, help="TOML settings file (or HEADWATER_CONFIG)")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from headwater.allocator import active_allocator, restart_under
    from headwater.settings import SettingsError, load_settings

    import uvicorn

    if args.workers < 1:
        print("gateway: --workers must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    config = getattr(args, "config", None)
    if config:
        os.environ["HEADWATER_CONFIG"] = str(config)  # the workers load the settings themselves
    try:
        settings = load_settings()  # fail here, once, with every problem listed
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        return EXIT_USAGE
    # Under jemalloc when installed (see headwater.allocator): this process starts again here, once.
    restart_under(settings.gateway_allocator)
    print(f"gateway: memory allocator {active_allocator()}", file=sys.stderr)
    try:
        tls = tls_options(getattr(args, "ssl_certfile", None) or settings.tls_cert_file,
                          getattr(args, "ssl_keyfile", None) or settings.tls_key_file)
    except ValueError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return EXIT_USAGE
    uvicorn.run("ingest_gateway.app:app_from_environment", factory=True, host=args.host, port=args.port,
                workers=args.workers, log_level=settings.log_level.lower(), access_log=False,
                proxy_headers=False, server_header=False, timeout_graceful_shutdown=30, **tls)
    return EXIT_OK


def tls_options(certfile: Path | None, keyfile: Path | None) -> dict[str, str]:
    """uvicorn's TLS arguments for a certificate and its key (none without a certificate).

    :raises ValueError: when only one of the two is given, or a file cannot be read, or the key does not
        belong to the certificate
    """
    if certfile is None and keyfile is None:
        return {}
    if certfile is None or keyfile is None:
        raise ValueError("a TLS certificate and its key must be given together "
                         "(--ssl-certfile and --ssl-keyfile, or tls_cert_file and tls_key_file)")
    for name, path in (("certificate", certfile), ("key", keyfile)):
        if not os.access(path, os.R_OK) or not Path(path).is_file():
            raise ValueError(f"TLS {name} file {str(path)!r} does not exist or cannot be read")
    try:  # refuse now, with the reason, rather than in every worker at start-up
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(str(certfile), str(keyfile))
    except ssl.SSLError as exc:
        raise ValueError(f"cannot use the TLS certificate {str(certfile)!r} with key {str(keyfile)!r}: "
                         f"{exc.reason or exc}") from None
    return {"ssl_certfile": str(certfile), "ssl_keyfile": str(keyfile)}


def main(argv: list[str] | None = None) -> int:
    """Run the gateway command on its own: ``python -m ingest_gateway.cli --port 8080``."""
    parser = argparse.ArgumentParser(prog="headwater")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    args = parser.parse_args(["gateway", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
